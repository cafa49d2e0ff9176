"""Data-plane behaviour of each built-in toxic, one coroutine per type.

A link (one direction of one proxied connection) pushes every chunk through its chain of toxics;
each handler receives the chunk and a ``forward`` continuation for the rest of the chain.  The
semantics follow Toxiproxy 2.12's toxics (the real binary is the oracle, see
``faults/README.md``): latency is pipelined against the chunk's read time, bandwidth counts KB
as 1000 bytes (and holds the data at rate 0), slicer delays are in microseconds, timeout drops
data, reset_peer closes with RST, limit_data truncates.  Durations are computed as Go computes
them (``go_seconds``), overflow included.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from .model import Toxic

__all__ = ["HANDLERS", "MS", "US", "Chunk", "Forward", "LinkContext", "go_seconds", "slice_sizes"]

#: Go's ``time.Millisecond`` and ``time.Microsecond``, in nanoseconds.
MS: Final = 1_000_000
US: Final = 1_000


def _int64(value: int) -> int:
    """``value`` as Go's int64 arithmetic leaves it: wrapped on overflow."""
    return (value + 2**63) % 2**64 - 2**63


def go_seconds(value: int, unit: int) -> float:
    """``time.Duration(value) * unit`` in seconds, as Go computes it: int64 nanoseconds that
    wrap on overflow, so a huge attribute can come out negative, which Go's timers take as
    "now" (a latency of 2**63-1 ms passes data at once; one of 10**18 ms holds it)."""
    return _int64(value * unit) / 1e9


@dataclass
class Chunk:
    """A piece of the byte stream and the time it was read (drives latency pipelining)."""

    data: bytes
    ts: float


Forward = Callable[[Chunk], Awaitable[None]]


class LinkContext(Protocol):
    """What a toxic may use from the link it runs on."""

    #: Per-link state of stateful toxics, keyed by ``Toxic.ident`` (survives chain changes).
    state: dict[int, float]
    rng: random.Random

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets of the connection (with RST when ``reset`` and linger is set)."""


async def _sleep_until(deadline: float, toxic: Toxic) -> None:
    """Sleep until ``deadline`` unless the toxic is updated or removed first (then return)."""
    if deadline <= trio.current_time():
        return
    with trio.move_on_at(deadline):
        await toxic.interrupt.wait()


async def noop(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """Pass the chunk through."""
    await forward(chunk)


async def latency(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """Delay each chunk to ``read time + latency ± jitter``; chained latencies add up."""
    delay_ms = toxic.attributes["latency"]
    jitter = toxic.attributes["jitter"]
    span = _int64(2 * jitter)
    if jitter > 0 and span > 0:  # (Go's rand.Int63n panics, and its server dies, at span <= 0)
        delay_ms = _int64(delay_ms + link.rng.randrange(span) - jitter)
    delay = go_seconds(delay_ms, MS)
    if delay > 0:
        target = chunk.ts + delay
        await _sleep_until(target, toxic)
        # Advance the stamp so that a second latency toxic adds its delay on top of this one.
        chunk.ts = target
    await forward(chunk)


async def bandwidth(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """Limit to ``rate`` KB/s (KB = 1000 bytes); the schedule carries over between chunks.

    At rate 0 nothing passes until the toxic is updated or removed, then the held chunk does:
    Go's loop sends empty pieces for ever.  (A negative rate crashes Go's server within
    100 ms; here it holds the data as 0 does.)
    """
    rate = toxic.attributes["rate"]
    if rate <= 0:
        await toxic.interrupt.wait()
        await forward(chunk)
        return
    piece = rate * 100  # Go sends over-large chunks as rate*100-byte pieces every 100 ms.
    data = chunk.data
    for start in range(0, len(data), piece):
        part = data[start : start + piece]
        begin = max(trio.current_time(), link.state.get(toxic.ident, 0.0))
        end = begin + len(part) / (rate * 1000)
        await _sleep_until(end, toxic)
        link.state[toxic.ident] = end
        await forward(Chunk(part, chunk.ts))


async def drop(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """timeout: swallow the data; the link's idle timer does the closing."""


async def reset_peer(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """On the first chunk, wait ``timeout`` ms, then reset the connection; data is dropped."""
    await trio.sleep(max(go_seconds(toxic.attributes["timeout"], MS), 0))
    link.close(reset=True)
    await trio.lowlevel.checkpoint()  # close() cancelled us: raise Cancelled here.


def slice_sizes(length: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Split ``length`` by recursive halving (random midpoint offset) into slicer piece sizes.

    Guards the two crashes of the Go implementation: ``average <= 0`` (endless recursion) gives
    one piece, and ``variation`` is clamped below ``average`` so no offset runs out of range.
    """
    if average <= 0:
        return [length]
    variation = max(0, min(variation, average - 1))
    out: list[int] = []
    stack = [length]
    while stack:
        n = stack.pop()
        if n <= average + variation or n < 2:
            out.append(n)
            continue
        mid = n // 2
        if variation > 0:
            mid += rng.randrange(-variation, variation)
        mid = min(max(mid, 1), n - 1)
        stack.append(n - mid)  # popped second: keeps pieces in order
        stack.append(mid)
    return out


async def slicer(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """Cut each chunk into pieces of about ``average_size`` bytes, ``delay`` µs apart."""
    attrs = toxic.attributes
    sizes = slice_sizes(len(chunk.data), attrs["average_size"], attrs["size_variation"], link.rng)
    delay = max(go_seconds(attrs["delay"], US), 0)
    view = memoryview(chunk.data)
    pos = 0
    interrupted = False
    for i, size in enumerate(sizes):
        await forward(Chunk(bytes(view[pos : pos + size]), chunk.ts))
        pos += size
        if delay and not interrupted and i + 1 < len(sizes):
            event = toxic.interrupt
            await _sleep_until(trio.current_time() + delay, toxic)
            interrupted = event.is_set()  # on an interrupt the remainder is flushed at once


async def limit_data(link: LinkContext, toxic: Toxic, chunk: Chunk, forward: Forward) -> None:
    """Forward at most ``bytes`` bytes on this link, then close the connection."""
    limit = toxic.attributes["bytes"]
    sent = int(link.state.get(toxic.ident, 0))
    allowed = limit - sent
    if allowed > 0:
        part = chunk.data[:allowed]
        await forward(Chunk(part, chunk.ts))
        sent += len(part)
        link.state[toxic.ident] = sent
    if sent >= limit:
        link.close()
        await trio.lowlevel.checkpoint()


Handler = Callable[[LinkContext, Toxic, Chunk, Forward], Awaitable[None]]

#: The handler for each toxic type (slow_close only acts on close, so data passes through).
HANDLERS: dict[str, Handler] = {
    "noop": noop,
    "latency": latency,
    "bandwidth": bandwidth,
    "slow_close": noop,
    "timeout": drop,
    "reset_peer": reset_peer,
    "slicer": slicer,
    "limit_data": limit_data,
}
