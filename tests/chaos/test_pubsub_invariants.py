"""The pub/sub checkers fail on synthetic records that break each invariant, and pass on
clean ones; the pub/sub runner turns redis-py-shaped messages into what they check."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trio_cluster.chaos.invariants import (
    GAP_SLACK,
    Bounds,
    check_all,
    check_pubsub,
    check_pubsub_connections,
    in_flight,
    pubsub_tally,
)
from trio_cluster.chaos.pubsubload import QUIET, PubSubLoad, PubSubRunner
from trio_cluster.chaos.records import (
    Delivery,
    Op,
    Publish,
    PubSubEvent,
    PubSubRecord,
    RunRecord,
    Window,
    decode_message,
    encode_message,
)

A, B, S = "ch:a", "ch:b", "ch:s"
FAULT = [Window("node-down", 5.0, 7.0)]
RECOVERY = 4.0


class Book:
    """Builds a pub/sub record: two subscribers, classic channels a and b, shard channel s."""

    def __init__(self) -> None:
        self.record = PubSubRecord(
            subscriptions={0: (A, S), 1: (A, B)},
            sharded=frozenset({S}),
            open_after_close=0,
            stats={"max_connections": 8, "limit_rejections": 0},
            peak_connections=4,
        )
        self.pos = [0, 0]
        for subscriber, channels in self.record.subscriptions.items():
            for channel in channels:
                kind = "ssubscribe" if channel == S else "subscribe"
                self.event(subscriber, 0.5, kind, (channel,))

    def _next(self, subscriber: int) -> int:
        self.pos[subscriber] += 1
        return self.pos[subscriber]

    def event(self, subscriber: int, at: float, kind: str, channels: tuple[str, ...]) -> None:
        self.record.events.append(PubSubEvent(subscriber, self._next(subscriber), at, kind,
                                              channels))  # fmt: skip

    def publish(self, channel: str, publisher: int, seq: int, at: float, ok: bool = True) -> None:
        self.record.publishes.append(Publish(publisher, seq, channel, at, at + 0.001, ok))

    def deliver(
        self,
        subscriber: int,
        channel: str,
        publisher: int,
        seq: int,
        at: float,
        *,
        named: str | None = "",
        kind: str = "",
    ) -> None:
        self.record.deliveries.append(
            Delivery(subscriber, self._next(subscriber), at,
                     kind or ("smessage" if channel == S else "message"), channel,
                     channel if named == "" else named, publisher, seq)
        )  # fmt: skip

    def clean(self, start: float = 1.0, count: int = 4) -> None:
        """Publisher 7 sends ``count`` messages to every channel; everyone gets them all."""
        for i in range(count):
            t = start + i * 0.1
            for channel in (A, B, S):
                self.publish(channel, 7, 3 * i + (A, B, S).index(channel) + 1, t)
        for p in list(self.record.publishes):
            for subscriber, channels in self.record.subscriptions.items():
                if p.channel in channels and p.start >= start:
                    self.deliver(subscriber, p.channel, p.publisher, p.seq, p.end + 0.002)

    def names(self, faults: list[Window] | None = None) -> set[str]:
        return {v.invariant for v in check_pubsub(self.record, faults or [], RECOVERY)}


def test_payloads_name_channel_publisher_and_seq() -> None:
    assert decode_message(encode_message("a#b", 3, 42).encode()) == ("a#b", 3, 42)
    assert decode_message(b"hello") is None
    assert decode_message(None) is None


def test_clean_record_passes_and_is_tallied() -> None:
    book = Book()
    book.clean()
    assert book.names() == set()
    tally = pubsub_tally(book.record)
    assert (tally.published, tally.expected, tally.received, tally.received_due) == (12, 16, 16, 16)
    assert not tally.lost and not tally.duplicates and not tally.misdelivered
    # Failed publishes are neither due nor forbidden: delivered or not, nothing is wrong.
    book.publish(A, 8, 1, 2.0, ok=False)
    book.deliver(1, A, 8, 1, 2.01)
    assert book.names() == set()
    tally = pubsub_tally(book.record)
    assert (tally.failed_publishes, tally.received, tally.received_due) == (1, 17, 16)


@pytest.mark.parametrize(
    ("channel", "named", "kind", "publisher_seq"),
    [
        (A, B, "", (7, 1)),  # delivered on a but the payload is b's: another channel's message
        (B, "", "", (7, 2)),  # subscriber 0 never subscribed to b
        (A, None, "", (7, 1)),  # not a payload any publisher sent
        (S, "", "message", (7, 3)),  # a shard channel's message as a classic one
        (A, "", "", (7, 99)),  # never published
    ],
)
def test_misdelivery_detected(
    channel: str, named: str | None, kind: str, publisher_seq: tuple[int, int]
) -> None:
    book = Book()
    book.clean()
    book.deliver(0, channel, *publisher_seq, 3.0, named=named, kind=kind)
    assert book.names() == {"pubsub-no-misdelivery"}


def test_duplicate_detected_even_across_a_gap() -> None:
    book = Book()
    book.clean()
    book.deliver(1, A, 7, 1, 2.0)
    assert book.names() == {"pubsub-no-duplicate"}
    book = Book()
    book.clean(start=5.5, count=2)
    book.event(1, 5.2, "gap", (A, B))
    book.event(1, 5.4, "subscribe", (A,))
    book.event(1, 5.4, "subscribe", (B,))
    book.deliver(1, A, 7, 1, 6.0)  # the replacement subscription delivers it again
    assert book.names(FAULT) == {"pubsub-no-duplicate"}


def test_reordering_detected_within_a_subscription_only() -> None:
    book = Book()
    book.publish(A, 7, 1, 1.0)
    book.publish(A, 7, 2, 1.1)
    book.deliver(0, A, 7, 2, 1.2)
    book.deliver(0, A, 7, 1, 1.3)
    book.deliver(1, A, 7, 1, 1.2)
    book.deliver(1, A, 7, 2, 1.3)
    assert book.names() == {"pubsub-order"}
    # There is no order across a gap: the same arrival order after one is no violation.
    book = Book()
    book.publish(A, 7, 1, 5.0)
    book.publish(A, 7, 2, 5.1)
    book.deliver(1, A, 7, 1, 5.2)
    book.deliver(1, A, 7, 2, 5.2)
    book.deliver(0, A, 7, 2, 5.2)
    book.event(0, 5.3, "gap", (A,))
    book.event(0, 5.4, "subscribe", (A,))
    book.deliver(0, A, 7, 1, 5.5)
    assert "pubsub-order" not in book.names(FAULT)


def test_any_loss_without_a_fault_fails() -> None:
    book = Book()
    book.clean()
    book.publish(B, 7, 50, 2.0)  # subscriber 1 never gets it
    assert book.names() >= {"pubsub-no-loss", "pubsub-gap-for-loss"}


def _failover(book: Book, *, gap_at: float = 5.5, back_at: float = 6.5) -> None:
    """Subscriber 1's classic connection drops at ``gap_at`` and is back at ``back_at``."""
    book.event(1, gap_at, "gap", (A, B))
    book.event(1, back_at, "subscribe", (A,))
    book.event(1, back_at, "subscribe", (B,))


def test_loss_while_down_after_a_gap_is_allowed() -> None:
    book = Book()
    book.clean()
    _failover(book)
    book.publish(B, 7, 50, 5.5 - GAP_SLACK / 2)  # lost a little before the gap was seen
    book.publish(B, 7, 51, 6.0)  # lost while resubscribing
    book.publish(B, 7, 52, 6.6)  # after the resubscription: received
    book.deliver(1, B, 7, 52, 6.61)
    assert book.names(FAULT) == set()
    tally = pubsub_tally(book.record)
    assert len(tally.lost) == len(tally.lost_in_gap) == 2


def test_loss_without_a_gap_event_fails() -> None:
    book = Book()
    book.clean()
    _failover(book)
    book.publish(S, 7, 60, 6.0)  # subscriber 0's shard channel: it had no gap
    names = book.names(FAULT)
    assert names == {"pubsub-gap-for-loss"}


def test_loss_after_the_resubscription_fails() -> None:
    book = Book()
    book.clean()
    _failover(book)
    book.publish(A, 7, 70, 6.8)
    book.deliver(0, A, 7, 70, 6.81)  # subscriber 0 got it, subscriber 1 did not
    assert book.names(FAULT) == {"pubsub-after-resubscribe"}


def test_loss_outside_the_fault_window_fails() -> None:
    book = Book()
    book.clean()
    _failover(book, gap_at=1.6, back_at=1.9)  # a gap, but long before the fault
    book.publish(A, 7, 80, 1.7)
    book.deliver(0, A, 7, 80, 1.71)
    assert book.names(FAULT) == {"pubsub-loss-in-window", "pubsub-unexpected-gap"}


def test_gaps_must_come_with_a_fault_and_be_followed_by_a_resubscription() -> None:
    book = Book()
    book.clean()
    _failover(book)
    assert book.names() == {"pubsub-unexpected-gap"}  # the same gap with no fault
    assert Book().names(FAULT) >= {"pubsub-gap-seen"}  # a fault that broke nothing
    book = Book()
    book.clean()
    book.event(1, 5.5, "gap", (A, B))
    book.event(1, 6.0, "subscribe", (A,))  # b is never subscribed again
    assert book.names(FAULT) == {"pubsub-resubscribed"}


def test_subscriptions_confirmed_streams_clean_and_activity() -> None:
    book = Book()
    book.clean()
    book.record.events = [e for e in book.record.events if e.channels != (B,)]
    assert book.names() == {"pubsub-subscribed"}
    book = Book()
    book.clean()
    book.event(0, 2.0, "error", ())
    assert book.names() == {"pubsub-stream-error"}
    assert Book().names() == {"pubsub-activity"}  # nothing published
    book = Book()
    book.clean()
    book.record.deliveries = [d for d in book.record.deliveries if d.channel == S]
    book.record.publishes = [p for p in book.record.publishes if p.channel == S]
    assert book.names() == {"pubsub-activity"}  # subscriber 1 heard nothing (nothing was due)


def test_connections_closed_and_bounded() -> None:
    book = Book()
    assert check_pubsub_connections(book.record) == []
    book.record.open_after_close = 1
    assert {v.invariant for v in check_pubsub_connections(book.record)} == {
        "pubsub-connections-closed"
    }
    book.record.open_after_close = None  # never measured: not proven closed
    assert check_pubsub_connections(book.record)
    book = Book()
    book.record.peak_connections = 9
    assert {v.invariant for v in check_pubsub_connections(book.record)} == {
        "pubsub-connection-bound"
    }
    book = Book()
    book.record.stats["limit_rejections"] = 2
    assert check_pubsub_connections(book.record)


def test_check_all_runs_the_pubsub_checkers_and_counts_pubsub_clients() -> None:
    bounds = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=RECOVERY)
    ops = [Op(0, "set", 0.01 * i, 0.01 * i + 0.001, True) for i in range(500)]
    book = Book()
    book.clean()
    record = RunRecord(start=0.0, end=10.0, ops=ops, pubsub=book.record)
    record.baseline_pubsub_clients = {7000: 0}
    record.final_pubsub_clients = {7000: 0}
    assert check_all(record, bounds).violations == []
    record.final_pubsub_clients = {7000: 2}  # subscribed connections left on the server
    book.deliver(1, A, 7, 1, 2.0)
    found = check_all(record, bounds).violations
    assert {v.invariant for v in found} == {"server-clients-baseline", "pubsub-no-duplicate"}
    assert "pub/sub clients" in found[0].message or "pub/sub clients" in found[1].message


def test_runner_records_redis_py_shaped_messages() -> None:
    record = RunRecord()
    runner = PubSubRunner(PubSubLoad(subscribers=1, channels_per_subscriber=2, channels=2,
                                     sharded=1, publishers=1), "p", 1, record,
                          lambda: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    runner.data.subscriptions = {0: ("c1", "c2")}
    runner.data.sharded = frozenset({"c2"})
    runner._pending = {0: {"c1", "c2"}}
    messages: list[dict[str, Any]] = [
        {"type": "subscribe", "pattern": None, "channel": b"c1", "data": 1},
        {"type": "ssubscribe", "pattern": None, "channel": b"c2", "data": 1},
        {"type": "message", "pattern": None, "channel": b"c1", "data": b"c1#0#1"},
        {"type": "gap", "pattern": None, "channel": None, "data": "connection lost: x",
         "node": "127.0.0.1:1", "channels": [b"c1"], "patterns": [], "shard_channels": [b"c2"]},
        {"type": "smessage", "pattern": None, "channel": b"c2", "data": b"junk"},
    ]  # fmt: skip

    async def feed() -> None:
        for message in messages:
            runner._handle(0, message)

    trio.run(feed)
    assert runner.ready.is_set()
    data = record.pubsub
    assert data is runner.data
    assert [(e.kind, e.channels) for e in data.events] == [
        ("subscribe", ("c1",)),
        ("ssubscribe", ("c2",)),
        ("gap", ("c1", "c2")),
    ]
    assert "127.0.0.1:1" in data.events[2].detail
    first, second = data.deliveries
    assert (first.kind, first.channel, first.named, first.publisher, first.seq) == (
        "message", "c1", "c1", 0, 1,
    )  # fmt: skip
    assert second.named is None and second.kind == "smessage"
    positions = sorted([e.pos for e in data.events] + [d.pos for d in data.deliveries])
    assert positions == [1, 2, 3, 4, 5]  # one stream order for deliveries and events


def test_pubsub_load_is_validated() -> None:
    with pytest.raises(ValueError, match="channels_per_subscriber"):
        PubSubLoad(channels=5, channels_per_subscriber=6)
    with pytest.raises(ValueError, match="sharded"):
        PubSubLoad(channels=5, channels_per_subscriber=5, sharded=6)
    assert PubSubLoad(subscribers=10, channels=20).stride == 2


def _lagging(book: Book) -> None:
    """Subscriber 0 keeps up (200 messages on s before the fault, 2 ms each: the run's
    in-flight time stays small); subscriber 1's consumer lags 3.6 s behind on b: it takes the
    messages published at 4.0 and 4.5 at 8.0 and 8.1, and the gap of the connection the
    fault cut at 5.0 only at 8.5 (the server's output buffer was lost with it)."""
    for seq in range(200):
        book.publish(S, 9, seq, 2.0 + seq / 100)
        book.deliver(0, S, 9, seq, 2.002 + seq / 100)
    book.publish(B, 8, 1, 4.0)
    book.publish(B, 8, 2, 4.5)
    book.deliver(1, B, 8, 1, 8.0)
    book.deliver(1, B, 8, 2, 8.1)
    book.event(1, 8.5, "gap", (A, B))
    book.event(1, 9.0, "subscribe", (A,))
    book.event(1, 9.0, "subscribe", (B,))


def test_a_gap_taken_late_explains_what_the_server_held_since_the_last_delivery() -> None:
    """A loss counts from the last message the subscription delivered before its gap (the
    stream's order), not from when a lagging consumer took the gap event."""
    book = Book()
    book.clean()
    _lagging(book)
    book.publish(B, 8, 3, 4.6)  # held by the server when the connection was cut
    book.publish(B, 8, 4, 5.5)  # published while the subscription was down
    assert in_flight(book.record, FAULT[0].start) < 0.01
    assert book.names(FAULT) == set()
    tally = pubsub_tally(book.record)
    assert len(tally.lost) == len(tally.lost_in_gap) == 2
    assert tally.down[(1, B)] == [(4.5 - GAP_SLACK, 9.0)]


def test_a_loss_older_than_the_last_delivery_before_the_gap_fails() -> None:
    """One connection delivers in the server's order: a message published more than
    GAP_SLACK before one the subscription delivered was not lost with it."""
    book = Book()
    book.clean()
    _lagging(book)
    book.publish(B, 8, 5, 4.5 - GAP_SLACK - 0.2)
    assert book.names(FAULT) == {"pubsub-gap-for-loss"}


def _lost_twice(delivered_at: float | None) -> Book:
    """Subscriber 1 is down at 5.5, back at 6.5, down again at 9.0 (back at 9.5), and misses
    a message on b published at 7.0; if ``delivered_at``, it got one published then on b
    before the second gap."""
    book = Book()
    book.clean()
    _failover(book)
    if delivered_at is not None:
        book.publish(B, 7, 91, delivered_at)
        book.deliver(1, B, 7, 91, delivered_at + 0.01)
    book.event(1, 9.0, "gap", (A, B))
    book.event(1, 9.5, "subscribe", (A,))
    book.event(1, 9.5, "subscribe", (B,))
    book.publish(B, 7, 90, 7.0)
    return book


def test_a_gap_with_no_delivery_since_the_resubscription_counts_from_it() -> None:
    """With no message delivered since its last confirmation, a subscription is known alive
    only as of that confirmation: the next gap's window starts there."""
    assert _lost_twice(None).names(FAULT) == set()
    # Alive as of a message published at 8.5: one published at 7.0 was not lost with it.
    assert _lost_twice(7.0 + GAP_SLACK + 0.5).names(FAULT) == {"pubsub-after-resubscribe"}


async def _drain_while_arriving(spec: PubSubLoad, arrivals: int) -> tuple[PubSubRunner, float]:
    """Publishing has stopped, 1000 deliveries are due (some were lost) and ``arrivals``
    more arrive, one every 0.1 s (a consumer that lags): the runner after its drain, and how
    long the drain took."""
    runner = PubSubRunner(spec, "p", 1, RunRecord(), lambda: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    runner._due = 1000
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def arrive() -> None:
            for seq in range(arrivals):
                await trio.sleep(0.1)
                runner.data.deliveries.append(Delivery(0, seq, trio.current_time(), "message",
                                                       A, A, 7, seq))  # fmt: skip

        nursery.start_soon(arrive)
        await runner._drain()
        nursery.cancel_scope.cancel()
    return runner, trio.current_time() - start


async def test_drain_waits_for_a_lagging_consumer_to_catch_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages still buffered when the subscribers stop count as lost: the drain lasts as
    long as messages keep arriving (10 s here), and ends QUIET s after the last one."""
    with trio.fail_after(60):
        runner, took = await _drain_while_arriving(PubSubLoad(), 100)
    assert len(runner.data.deliveries) == 100
    assert 10.0 + QUIET <= took < 10.0 + QUIET + 0.2
    assert runner.data.notes == []


async def test_drain_stops_at_its_bound_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        runner, took = await _drain_while_arriving(PubSubLoad(drain=3.0), 100)
    assert took == pytest.approx(3.0, abs=0.1)
    assert len(runner.data.deliveries) < 100
    (note,) = runner.data.notes
    assert "drain stopped after 3 s" in note and "of 1000 due" in note
