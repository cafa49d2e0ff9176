# ruff: noqa: E501 -- the expected answers are recorded verbatim from the Go server
"""HTTP as Go's net/http answers it, and request bodies as Go's encoding/json decodes them.

The expected bodies below were recorded from the real Toxiproxy 2.12.0 server; every test runs
against both servers (TOXIPROXY_SERVER), so a difference from Go fails here.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from typing import Any

import pytest
import trio
from faults_helpers import GO_SERVER, Backend, ServerProcess, deadline, embedded_only, http

from trio_cluster.faults import EmbeddedToxiproxy, Toxiproxy

# (path, body, status, Go's exact answer body); the listen port of the proxy is random.
GO_ANSWERS = [
    ("/proxies", b"", 400, b'{"error":"bad request body: EOF","status":400}\n'),
    ("/proxies", b'{"name":', 400, b'{"error":"bad request body: unexpected EOF","status":400}\n'),
    (
        "/proxies",
        b"NaN",
        400,
        b'{"error":"bad request body: invalid character \'N\' looking for beginning of value","status":400}\n',
    ),
    (
        "/proxies",
        b'{"name":"x","upstream":"y","toxicity":Infinity}',
        400,
        b'{"error":"bad request body: invalid character \'I\' looking for beginning of value","status":400}\n',
    ),
    (
        "/proxies",
        b"-Infinity",
        400,
        b'{"error":"bad request body: invalid character \'I\' in numeric literal","status":400}\n',
    ),
    (
        "/proxies",
        b'{"name":1}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number into Go struct field Proxy.name of type string","status":400}\n',
    ),
    (
        "/proxies",
        b"[]",
        400,
        b'{"error":"bad request body: json: cannot unmarshal array into Go value of type toxiproxy.Proxy","status":400}\n',
    ),
    (
        "/proxies",
        b'"str"',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go value of type toxiproxy.Proxy","status":400}\n',
    ),
    (
        "/proxies",
        b'{"enabled":"yes"}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go struct field Proxy.enabled of type bool","status":400}\n',
    ),
    (
        "/proxies",
        b"\xff",
        400,
        b'{"error":"bad request body: invalid character \'\xc3\xbf\' looking for beginning of value","status":400}\n',
    ),
    (
        "/proxies",
        b"{'a':1}",
        400,
        b'{"error":"bad request body: invalid character \'\\\\\'\' looking for beginning of object key string","status":400}\n',
    ),
    (
        "/proxies",
        b'{"a":1,}',
        400,
        b'{"error":"bad request body: invalid character \'}\' looking for beginning of object key string","status":400}\n',
    ),
    (
        "/proxies",
        b'{"a" 1}',
        400,
        b'{"error":"bad request body: invalid character \'1\' after object key","status":400}\n',
    ),
    (
        "/proxies",
        b"[1 2]",
        400,
        b'{"error":"bad request body: invalid character \'2\' after array element","status":400}\n',
    ),
    ("/proxies", b"tru", 400, b'{"error":"bad request body: unexpected EOF","status":400}\n'),
    (
        "/proxies",
        b"trux",
        400,
        b'{"error":"bad request body: invalid character \'x\' in literal true (expecting \'e\')","status":400}\n',
    ),
    (
        "/proxies",
        b'"\\x"',
        400,
        b'{"error":"bad request body: invalid character \'x\' in string escape code","status":400}\n',
    ),
    (
        "/proxies",
        b"1.x",
        400,
        b'{"error":"bad request body: invalid character \'x\' after decimal point in numeric literal","status":400}\n',
    ),
    (
        "/proxies/a",
        b'{"listen":"bad"}',
        500,
        b'{"error":"address bad: missing port in address","status":500}\n',
    ),
    (
        "/proxies/a",
        b'{"enabled":1}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number into Go struct field Proxy.enabled of type bool","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","toxicity":"1"}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go struct field ToxicWrapper.toxicity of type float32","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","toxicity":1e999}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number 1e999 into Go struct field ToxicWrapper.toxicity of type float32","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","attributes":[]}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal array into Go struct field ToxicWrapper.attributes of type toxics.NoopToxic","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","name":"n2","attributes":{"latency":1.5}}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number 1.5 into Go struct field LatencyToxic.attributes.latency of type int64","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","name":"n3","attributes":{"latency":"5"}}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go struct field LatencyToxic.attributes.latency of type int64","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","name":"n4","attributes":{"latency":1e30}}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number 1e30 into Go struct field LatencyToxic.attributes.latency of type int64","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"slicer","name":"n5","attributes":{"average_size":true}}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal bool into Go struct field SlicerToxic.attributes.average_size of type int","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"bogus"}',
        400,
        b'{"error":"invalid toxic type","status":400}\n',
    ),
    (
        "/proxies/a/toxics",
        b'{"type":"latency","stream":"sideways"}',
        400,
        b'{"error":"stream was invalid, can be either upstream or downstream","status":400}\n',
    ),
    (
        "/proxies/a/toxics/t",
        b'{"toxicity":"x"}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go struct field .toxicity of type float32","status":400}\n',
    ),
    (
        "/proxies/a/toxics/t",
        b"[]",
        400,
        b'{"error":"bad request body: json: cannot unmarshal array into Go value of type struct { Attributes interface {} \\"json:\\\\\\"attributes\\\\\\"\\"; Toxicity float32 \\"json:\\\\\\"toxicity\\\\\\"\\" }","status":400}\n',
    ),
    (
        "/proxies/a/toxics/t",
        b'{"attributes":{"jitter":[]}}',
        400,
        b'{"error":"bad request body: json: cannot unmarshal array into Go struct field LatencyToxic.attributes.jitter of type int64","status":400}\n',
    ),
    (
        "/proxies/a/toxics/t",
        b'{"toxicity":0.1}',
        200,
        b'{"attributes":{"latency":0,"jitter":0},"name":"t","type":"latency","stream":"downstream","toxicity":0.1}',
    ),
    (
        "/populate",
        b"{}",
        400,
        b'{"error":"bad request body: json: cannot unmarshal object into Go value of type []struct { toxiproxy.Proxy; Enabled *bool \\"json:\\\\\\"enabled\\\\\\"\\" }","status":400,"proxies":null}',
    ),
    (
        "/populate",
        b"[1]",
        400,
        b'{"error":"bad request body: json: cannot unmarshal number into Go value of type struct { toxiproxy.Proxy; Enabled *bool \\"json:\\\\\\"enabled\\\\\\"\\" }","status":400,"proxies":null}',
    ),
    (
        "/populate",
        b'[{"name":5}]',
        400,
        b'{"error":"bad request body: json: cannot unmarshal number into Go struct field .name of type string","status":400,"proxies":null}',
    ),
    (
        "/populate",
        b'[{"name":"x","upstream":"y","enabled":"no"}]',
        400,
        b'{"error":"bad request body: json: cannot unmarshal string into Go struct field .enabled of type bool","status":400,"proxies":null}',
    ),
    ("/populate", b"null", 201, b'{"proxies":null}'),
    (
        "/proxies/a/toxics",
        b'{"name":"f1","type":"latency","toxicity":0.000025}',
        200,
        b'{"attributes":{"latency":0,"jitter":0},"name":"f1","type":"latency","stream":"downstream","toxicity":0.000025}',
    ),
    (
        "/proxies/a/toxics",
        b'{"name":"f2","type":"latency","toxicity":1e-7}',
        200,
        b'{"attributes":{"latency":0,"jitter":0},"name":"f2","type":"latency","stream":"downstream","toxicity":1e-7}',
    ),
    (
        "/proxies/a/toxics",
        b'{"name":"f3","type":"latency","toxicity":0.3333333333}',
        200,
        b'{"attributes":{"latency":0,"jitter":0},"name":"f3","type":"latency","stream":"downstream","toxicity":0.33333334}',
    ),
    (
        "/populate",
        b"[null]",
        400,
        b'{"error":"missing required field: name at proxy 1","status":400,"proxies":null}',
    ),
    (
        "/populate",
        b'[{"name":"x"}]',
        400,
        b'{"error":"missing required field: upstream at proxy 1","status":400,"proxies":null}',
    ),
]


async def _setup(toxi: Toxiproxy, backend: Backend) -> None:
    await http(toxi.url, "POST", "/proxies", {"name": "a", "upstream": backend.address})
    await http(toxi.url, "POST", "/proxies/a/toxics", {"name": "t", "type": "latency"})


@pytest.mark.parametrize(("path", "body", "status", "answer"), GO_ANSWERS)
async def test_bodies_decoded_and_rejected_as_go_does(
    toxi: Toxiproxy, backend: Backend, path: str, body: bytes, status: int, answer: bytes
) -> None:
    await _setup(toxi, backend)
    resp = await http(toxi.url, "POST", path, raw=body)
    assert (resp.status, resp.body) == (status, answer)


# Go answers at depth 10,001 and closes at once: a longer upload would be reset before its
# answer is read, so the shared test stops there; the embedded server takes 100,000 too.
@pytest.mark.parametrize(
    ("opener", "depth"),
    [
        (b"[", 10_001),
        (b'{"a":', 10_001),
        pytest.param(b"[", 100_000, marks=embedded_only("Go resets so long an upload")),
        pytest.param(b'{"a":', 100_000, marks=embedded_only("Go resets so long an upload")),
    ],
)
async def test_deep_nesting_is_a_400_not_a_crash(
    toxi: Toxiproxy, opener: bytes, depth: int
) -> None:
    resp = await http(toxi.url, "POST", "/proxies", raw=opener * depth)
    assert resp.status == 400
    char = opener[:1].decode()
    assert (
        resp.json()["error"] == f"bad request body: invalid character '{char}' exceeded max depth"
    )
    assert (await http(toxi.url, "GET", "/version")).status == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_rejected_and_listings_stay_json(
    toxi: Toxiproxy, backend: Backend, literal: str
) -> None:
    await _setup(toxi, backend)
    raw = f'{{"type":"latency","name":"x","toxicity":{literal}}}'.encode()
    assert (await http(toxi.url, "POST", "/proxies/a/toxics", raw=raw)).status == 400
    raw = f'{{"toxicity":{literal}}}'.encode()
    assert (await http(toxi.url, "PATCH", "/proxies/a/toxics/t", raw=raw)).status == 400
    listing = await http(toxi.url, "GET", "/proxies")
    json.loads(listing.body, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("GET", "/version", None, 200, b"OK"),
        ("POST", "/proxies", {"name": "b", "upstream": "127.0.0.1:1"}, 201, b"Created"),
        ("POST", "/reset", None, 204, b"No Content"),
        ("POST", "/proxies", {"name": "a", "upstream": "127.0.0.1:1"}, 409, b"Conflict"),
        ("POST", "/proxies", {"upstream": "127.0.0.1:1"}, 400, b"Bad Request"),
        ("GET", "/proxies/zz", None, 404, b"Not Found"),
    ],
)
async def test_reason_phrase_date_and_request_id(
    toxi: Toxiproxy,
    backend: Backend,
    method: str,
    path: str,
    body: object,
    status: int,
    reason: bytes,
) -> None:
    await _setup(toxi, backend)
    resp = await http(toxi.url, method, path, body)
    assert (resp.status, resp.reason) == (status, reason)
    assert resp.headers["date"].endswith(" GMT")
    assert len(resp.headers["x-toxiproxy-request-id"]) == 20
    assert ("content-length" in resp.headers) == (status != 204)


async def _slow_client(url: str, held: list[trio.SocketStream]) -> None:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")  # never finished
    held.append(stream)


async def test_slow_clients_do_not_lock_the_api_out(toxi: Toxiproxy) -> None:
    held: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(300):
                nursery.start_soon(_slow_client, toxi.url, held)
        # 300 clients hold half-sent requests; the API still answers at once.
        assert (await http(toxi.url, "GET", "/version")).status == 200
        assert await toxi.proxies() == {}
    finally:
        for stream in held:
            await stream.aclose()


@pytest.mark.slow
@deadline(45)
async def test_slow_header_clients_are_cut_at_gos_read_timeout_and_never_lock_the_api_out(
    toxi: Toxiproxy,
) -> None:
    # 200 clients send one more header byte every 0.5 s: never idle, never done.  The API
    # answers throughout, and the server hangs up on each at Go's ReadTimeout (15 s for the
    # whole request), without an answer, as Go does.
    host, port = toxi.url.split("://", 1)[1].rsplit(":", 1)
    started = trio.current_time()
    cut: list[float] = []

    async def trickle() -> None:
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /version HTTP/1.1\r\nHost: x\r\nX: ")
            while True:
                with trio.move_on_after(0.5):
                    assert await _received_or_reset(stream) == b""
                    cut.append(trio.current_time() - started)
                    return
                await stream.send_all(b"a")

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(trickle)
        for _ in range(5):
            with trio.fail_after(5):
                assert (await http(toxi.url, "GET", "/version")).status == 200
            await trio.sleep(1)  # pacing the probes over the first seconds of the trickle
    assert len(cut) == 200
    assert min(cut) >= 14.5  # not before the read timeout (the clock started before dialing)


async def _received_or_reset(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(100)
    except trio.BrokenResourceError:
        return b""


_HEAD_START = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
#: Go reads at most DefaultMaxHeaderBytes (1 MiB) plus 4096 bytes of slack for a head.
GO_MAX_HEAD = (1 << 20) + 4096
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; "
    b"charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large"
)


@pytest.mark.parametrize(
    ("size", "answer"),
    [
        (GO_MAX_HEAD, b"HTTP/1.1 200 OK\r\n"),
        (GO_MAX_HEAD + 1, _431),
        # The answer comes while the client is still sending: Go half-closes and waits
        # 500 ms before it closes, so the client reads it before the close resets it.
        (2 * GO_MAX_HEAD, _431),
    ],
)
async def test_a_request_head_over_gos_limit_gets_431(
    toxi: Toxiproxy, size: int, answer: bytes
) -> None:
    # The head (request line, headers and the blank line) is exactly ``size`` bytes.
    pad = size - len(_HEAD_START) - len(b"X: \r\n\r\n")
    request = _HEAD_START + b"X: " + b"a" * pad + b"\r\n\r\n"
    assert len(request) == size
    host, port = toxi.url.split("://", 1)[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    got = bytearray()
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(request)

        nursery.start_soon(send)
        while data := await stream.receive_some(65536):
            got += data
        nursery.cancel_scope.cancel()
    assert bytes(got).startswith(answer)
    if answer == _431:
        assert bytes(got) == _431


@embedded_only("shortens the server's read timeout to watch it expire")
async def test_a_request_must_arrive_whole_within_the_read_timeout() -> None:
    embedded = EmbeddedToxiproxy()
    embedded.server.read_timeout = 0.2
    async with embedded as toxi:
        held: list[trio.SocketStream] = []
        await _slow_client(toxi.url, held)
        (stream,) = held
        with trio.fail_after(5):  # Go's server hangs up at the deadline, without an answer
            assert await stream.receive_some(100) == b""
        await stream.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "public"),
    [
        (b"GARBAGE\r\n\r\n", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "400 Bad Request"),
        (b"GET /version HTTP/1.1\r\n\r\n", "400 Bad Request: missing required Host header"),
    ],
)
async def test_unparseable_requests_get_gos_raw_answer(
    toxi: Toxiproxy, request_bytes: bytes, public: str
) -> None:
    host, port = toxi.url.split("://", 1)[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request_bytes)
        answer = b""
        while data := await stream.receive_some(65536):
            answer += data
    expected = (
        f"HTTP/1.1 {public}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Connection: close\r\n\r\n{public}"
    )
    assert answer.decode() == expected


_KEYS = ["name", "listen", "upstream", "enabled", "type", "stream", "toxicity", "attributes"]
_KEYS += ["latency", "jitter", "rate", "average_size", "delay", "timeout", "bytes", "TYPE"]
_VALUES: list[Any] = [None, True, False, 0, 1, -3, 2**63, 1.5, 0.25, 1e300, "", "x", "latency"]
_VALUES += ["upstream", "DownStream", "slicer", "limit_data", "noop", "127.0.0.1:1", "timeout"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.2:
        return {rng.choice(_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 2 and roll < 0.3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice(_VALUES)


def _random_doc(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _random_value(rng)
    doc = {rng.choice(_KEYS): _random_value(rng) for _ in range(rng.randint(0, 5))}
    if "listen" in doc:  # never a fixed port: both servers bind
        doc["listen"] = rng.choice(["127.0.0.1:0", "", None, 5])
    return doc


async def _fresh(url: str) -> None:
    for name in (await http(url, "GET", "/proxies")).json():
        await http(url, "DELETE", f"/proxies/{name}")
    doc = {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}
    await http(url, "POST", "/proxies", doc)
    await http(url, "POST", "/proxies/a/toxics", {"name": "t", "type": "latency"})


def _comparable(status: int, body: bytes) -> tuple[int, bytes]:
    return status, re.sub(rb"(127\.0\.0\.1|\[::\]):\d+", b"ADDR", body)


@pytest.mark.slow
@pytest.mark.skipif(GO_SERVER is None, reason="the Go toxiproxy-server binary is not at hand")
async def test_random_bodies_answered_exactly_as_go_answers_them() -> None:
    # Differential: the same 150 seeded random bodies to every decoding route of the Go
    # server and of an embedded one, from the same state; status and body must be equal.
    rng = random.Random(16)
    routes = ["/proxies", "/proxies/a", "/proxies/a/toxics", "/proxies/a/toxics/t", "/populate"]
    async with ServerProcess(binary=GO_SERVER) as go, EmbeddedToxiproxy() as ours:
        for _ in range(150):
            path = rng.choice(routes)
            doc = _random_doc(rng)
            if path == "/populate" and rng.random() < 0.8:
                doc = [_random_doc(rng) for _ in range(rng.randint(0, 2))]
            answers = []
            for url in (go.url, ours.url):
                await _fresh(url)
                resp = await http(url, "POST", path, doc)
                answers.append(_comparable(resp.status, resp.body))
            assert answers[0] == answers[1], (path, doc)
