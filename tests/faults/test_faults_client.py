"""``trio_cluster.faults.Toxiproxy``, the trio client of the API: every call, checked with raw
HTTP against the server under test (embedded or Go), and its one error class for every way a
call fails."""

from __future__ import annotations

import functools

import pytest
import trio
from faults_helpers import Backend, http

from trio_cluster.faults import EmbeddedToxiproxy, Toxiproxy, ToxiproxyError


async def test_every_call_does_what_the_api_shows(toxi: Toxiproxy, backend: Backend) -> None:
    info = await toxi.create_proxy("a b", backend.address)  # a name that must be quoted
    assert info.name == "a b" and info.enabled and info.upstream == backend.address
    shown = (await http(toxi.url, "GET", "/proxies/a%20b")).json()
    assert shown["listen"] == info.listen

    await toxi.set_enabled("a b", False)
    assert (await http(toxi.url, "GET", "/proxies/a%20b")).json()["enabled"] is False
    assert (await toxi.proxies())["a b"].enabled is False
    await toxi.set_enabled("a b", True)
    assert (await http(toxi.url, "GET", "/proxies/a%20b")).json()["enabled"] is True

    name = await toxi.add_toxic("a b", "latency", stream="upstream", attributes={"latency": 7})
    assert name == "latency_upstream"
    toxics = (await http(toxi.url, "GET", "/proxies/a%20b/toxics")).json()
    assert [(t["name"], t["attributes"]["latency"]) for t in toxics] == [(name, 7)]
    assert (await toxi.toxics("a b")) == {
        name: {
            "attributes": {"latency": 7, "jitter": 0},
            "type": "latency",
            "stream": "upstream",
            "toxicity": 1,
        }
    }
    await toxi.remove_toxic("a b", name)
    assert await toxi.toxics("a b") == {}

    await toxi.add_toxic("a b", "timeout", name="t")
    await toxi.set_enabled("a b", False)
    await toxi.reset()  # re-enables and drops the toxics
    shown = (await http(toxi.url, "GET", "/proxies/a%20b")).json()
    assert shown["enabled"] is True and shown["toxics"] == []

    await toxi.create_proxy("other", backend.address)
    await toxi.delete_all(["a b"])
    assert set(await toxi.proxies()) == {"other"}
    await toxi.delete_all()
    assert (await http(toxi.url, "GET", "/proxies")).json() == {}
    assert await toxi.version() == (await http(toxi.url, "GET", "/version")).json()["version"]


async def test_api_errors_carry_the_answers_status_and_text(toxi: Toxiproxy) -> None:
    with pytest.raises(ToxiproxyError) as info:
        await toxi.delete_proxy("nope")
    assert (info.value.status, info.value.message) == (404, "proxy not found")
    assert str(info.value) == "HTTP 404: proxy not found"  # as Go's client writes it


async def test_an_unreachable_server_is_a_toxiproxy_error() -> None:
    with socket_bound() as port:  # bound, not listening: connections are refused
        client = Toxiproxy(f"http://127.0.0.1:{port}")
        with pytest.raises(ToxiproxyError) as info:
            await client.proxies()
    assert info.value.status is None
    assert str(info.value) == (
        f'fail to request: Get "http://127.0.0.1:{port}/proxies": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    )


async def test_a_server_that_never_answers_fails_the_call_in_time(
    nursery: trio.Nursery,
) -> None:
    held: list[trio.SocketStream] = []

    async def mute(stream: trio.SocketStream) -> None:
        held.append(stream)  # accepted, read, never answered
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = Toxiproxy(f"http://127.0.0.1:{port}", timeout=0.2)
    with trio.fail_after(5), pytest.raises(ToxiproxyError) as info:
        await client.reset()
    assert info.value.status is None
    assert "no answer within 0.2 s" in str(info.value)
    assert held  # it did connect: the deadline, not a refusal, ended the call


async def test_an_answer_that_is_not_toxiproxys_is_reported_as_go_reads_it(
    toxi: Toxiproxy,
) -> None:
    # A URL with a path prefix the server does not serve: its router answers a plain-text
    # 404, which Go's client fails to decode as its ApiError.
    client = Toxiproxy(toxi.url + "/elsewhere")
    with pytest.raises(ToxiproxyError) as info:
        await client.proxies()
    assert info.value.status is None
    assert str(info.value) == (
        "json: cannot unmarshal number into Go value of type toxiproxy.ApiError"
    )


async def test_clients_of_two_servers_work_side_by_side(toxi: Toxiproxy, backend: Backend) -> None:
    # No address is shared between clients (toxiproxy-python kept one in class globals).
    async with EmbeddedToxiproxy() as other:

        async def create(client: Toxiproxy, prefix: str) -> None:
            for i in range(5):
                await client.create_proxy(f"{prefix}{i}", backend.address)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, toxi, "here")
            nursery.start_soon(create, other, "there")
        assert sorted(await toxi.proxies()) == [f"here{i}" for i in range(5)]
        assert sorted(await other.proxies()) == [f"there{i}" for i in range(5)]


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        Toxiproxy("ftp://127.0.0.1:8474")
    with pytest.raises(ValueError, match="http://host:port"):
        Toxiproxy("http://127.0.0.1:port")
    assert Toxiproxy("127.0.0.1:8474").url == "http://127.0.0.1:8474"  # as Go's client


async def test_credentials_in_the_url_are_sent_and_never_shown(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    async def answer(stream: trio.SocketStream) -> None:
        seen.append(await stream.receive_some(65536))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = Toxiproxy(f"http://me:s3cret@127.0.0.1:{port}")
    assert await client.proxies() == {}
    head = seen[0].decode()
    assert f"Host: 127.0.0.1:{port}\r\n" in head
    assert "Authorization: Basic bWU6czNjcmV0\r\n" in head  # me:s3cret
    with socket_bound() as closed:
        refused = Toxiproxy(f"http://me:s3cret@127.0.0.1:{closed}")
        with pytest.raises(ToxiproxyError) as info:
            await refused.reset()
    assert "s3cret" not in str(info.value) + repr(refused)
    assert f'"http://me:xxxxx@127.0.0.1:{closed}/reset"' in str(info.value)  # Go's redaction


async def test_https_speaks_tls(toxi: Toxiproxy) -> None:
    # A plain-HTTP server behind an https:// URL: the TLS handshake fails, as an API error.
    client = Toxiproxy(toxi.url.replace("http://", "https://"), timeout=5)
    with pytest.raises(ToxiproxyError) as info:
        await client.proxies()
    assert info.value.status is None and str(info.value).startswith("fail to request: Get")


class socket_bound:
    """A loopback port that refuses connections (bound, never listening) while in use."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
