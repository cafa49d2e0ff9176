"""API conformance: every route, status code and JSON shape (raw HTTP and toxiproxy-python)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import toxiproxy
import toxiproxy.api
import trio
from faults_helpers import Backend, embedded_only, http

from trio_cluster.faults import Toxiproxy, ToxiproxyError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def make(tp: Toxiproxy, name: str = "p", upstream: str = "127.0.0.1:1", **extra: Any) -> Any:
    body = {"name": name, "upstream": upstream, "listen": "127.0.0.1:0", **extra}
    resp = await http(tp.url, "POST", "/proxies", body)
    assert resp.status == 201, resp.body
    return resp.json()


async def test_version_body_and_headers(toxi: Toxiproxy) -> None:
    resp = await http(toxi.url, "GET", "/version")
    assert resp.status == 200
    assert resp.body.startswith(b'{"version": "') and resp.body.endswith(b'"}\n')
    assert resp.headers["content-type"] == "application/json;charset=utf-8"
    assert resp.headers.get("x-toxiproxy-request-id")
    assert await toxi.version() != ""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/reset", 405),
        ("DELETE", "/proxies", 405),
        ("PUT", "/proxies/x", 405),
        ("POST", "/version", 405),
        ("PUT", "/proxies/x/toxics", 405),
        ("GET", "/populate", 405),
        ("GET", "/proxies/missing", 404),
        ("DELETE", "/proxies/missing", 404),
        ("GET", "/proxies/missing/toxics", 404),
        ("GET", "/proxies/missing/toxics/t", 404),
    ],
)
async def test_routing_status(toxi: Toxiproxy, method: str, path: str, status: int) -> None:
    resp = await http(toxi.url, method, path)
    assert resp.status == status
    assert resp.reason == {404: b"Not Found", 405: b"Method Not Allowed"}[status]
    assert resp.headers["date"].endswith(" GMT")
    # As gorilla/mux in Go: only a request that matched a route passes the middleware that
    # adds the request id; the router's own 404 and 405 answers carry none.
    routed = path.startswith("/proxies/missing")
    assert ("x-toxiproxy-request-id" in resp.headers) == routed
    if path == "/nope":
        assert resp.body == b"404 page not found\n"


async def test_browser_gets_403_and_cli_does_not(toxi: Toxiproxy) -> None:
    resp = await http(toxi.url, "GET", "/proxies", headers={"User-Agent": "Mozilla/5.0 (X11)"})
    assert resp.status == 403
    resp = await http(toxi.url, "GET", "/proxies", headers={"User-Agent": "toxiproxy-cli/2.12"})
    assert resp.status == 200 and resp.json() == {}


async def test_create_show_shape_and_defaults(toxi: Toxiproxy) -> None:
    doc = await make(toxi, upstream="localhost:20001", listen="localhost:0")
    assert list(doc)[:4] == ["name", "listen", "upstream", "enabled"]
    assert doc["enabled"] is True and doc["toxics"] == []
    assert doc["upstream"] == "localhost:20001"  # kept verbatim
    host, port = doc["listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0  # hostname resolved, :0 got a real port
    shown = await http(toxi.url, "GET", "/proxies/p")
    assert shown.status == 200 and shown.json()["listen"] == doc["listen"]
    index = (await http(toxi.url, "GET", "/proxies")).json()
    assert list(index) == ["p"] and index["p"]["name"] == "p"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"upstream": "x:1"}, 400, "missing required field: name"),
        ({"name": "a"}, 400, "missing required field: upstream"),
        ({"name": "a", "upstream": 5}, 400, None),
        ({"name": "a", "upstream": "x:1", "enabled": "yes"}, 400, None),
        ([1, 2], 400, None),
        ({"name": "a", "upstream": "x:1", "listen": "nocolon"}, 500, "missing port in address"),
    ],
)
async def test_create_errors(toxi: Toxiproxy, body: Any, status: int, message: str | None) -> None:
    resp = await http(toxi.url, "POST", "/proxies", body)
    assert resp.status == status
    err = resp.json()
    assert err["status"] == status
    if message:
        assert message in err["error"]
    if status == 400 and message is None:
        assert err["error"].startswith("bad request body")


@pytest.mark.parametrize("raw", [b"", b"{", b"{'a':1}", b"nonsense", b"\xff\xfe"])
async def test_malformed_json_is_400(toxi: Toxiproxy, raw: bytes) -> None:
    resp = await http(toxi.url, "POST", "/proxies", raw=raw)
    assert resp.status == 400
    assert resp.json()["error"].startswith("bad request body")
    await make(toxi)  # the server still works afterwards
    for path in ("/proxies/p", "/proxies/p/toxics", "/populate"):
        resp = await http(toxi.url, "POST", path, raw=raw)
        assert resp.status == 400, (path, resp.body)


async def test_duplicate_proxy_409_and_port_conflict_500(toxi: Toxiproxy) -> None:
    doc = await make(toxi)
    resp = await http(toxi.url, "POST", "/proxies", {"name": "p", "upstream": "x:1"})
    assert resp.status == 409 and resp.json() == {"error": "proxy already exists", "status": 409}
    resp = await http(
        toxi.url, "POST", "/proxies", {"name": "q", "upstream": "x:1", "listen": doc["listen"]}
    )
    assert resp.status == 500
    assert "address already in use" in resp.json()["error"]


async def test_disabled_on_create_keeps_raw_listen_then_enable(toxi: Toxiproxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = await make(toxi, listen=f"localhost:{port}", enabled=False)
    assert doc["listen"] == f"localhost:{port}" and doc["enabled"] is False
    resp = await http(toxi.url, "PATCH", "/proxies/p", {"enabled": True})
    assert resp.status == 200
    assert resp.json()["listen"] == f"127.0.0.1:{port}" and resp.json()["enabled"] is True


async def test_disable_enable_keeps_port_and_partial_update(toxi: Toxiproxy) -> None:
    doc = await make(toxi)
    for enabled in (False, True):
        resp = await http(toxi.url, "POST", "/proxies/p", {"enabled": enabled})
        assert resp.status == 200
        assert resp.json()["enabled"] is enabled and resp.json()["listen"] == doc["listen"]
    resp = await http(toxi.url, "PATCH", "/proxies/p", {"upstream": "127.0.0.1:2", "name": "zz"})
    assert resp.json()["upstream"] == "127.0.0.1:2" and resp.json()["name"] == "p"
    assert resp.json()["listen"] == doc["listen"]


async def test_delete_proxy(toxi: Toxiproxy) -> None:
    await make(toxi)
    resp = await http(toxi.url, "DELETE", "/proxies/p")
    assert resp.status == 204 and resp.body == b""
    assert (await http(toxi.url, "GET", "/proxies/p")).status == 404


ZEROED = {
    "noop": {},
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}


@pytest.mark.parametrize("toxic_type", sorted(ZEROED))
async def test_toxic_defaults(toxi: Toxiproxy, toxic_type: str) -> None:
    await make(toxi)
    resp = await http(toxi.url, "POST", "/proxies/p/toxics", {"type": toxic_type})
    assert resp.status == 200
    assert resp.json() == {
        "attributes": ZEROED[toxic_type],
        "name": f"{toxic_type}_downstream",
        "type": toxic_type,
        "stream": "downstream",
        "toxicity": 1,
    }
    assert list(resp.json()) == ["attributes", "name", "type", "stream", "toxicity"]
    shown = await http(toxi.url, "GET", f"/proxies/p/toxics/{toxic_type}_downstream")
    assert shown.json() == resp.json()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"type": "latency", "stream": "sideways"}, "stream was invalid"),
        ({"type": "nope"}, "invalid toxic type"),
        ({"type": "latency", "attributes": {"latency": "100"}}, "bad request body"),
        ({"type": "latency", "attributes": {"latency": 100.5}}, "bad request body"),
        ({"type": "latency", "attributes": {"latency": True}}, "bad request body"),
        ({"type": "latency", "attributes": [1]}, "bad request body"),
        ({"type": "latency", "toxicity": "high"}, "bad request body"),
        ({"type": 7}, "bad request body"),
    ],
)
async def test_toxic_bad_input_400(toxi: Toxiproxy, body: Any, message: str) -> None:
    await make(toxi)
    resp = await http(toxi.url, "POST", "/proxies/p/toxics", body)
    assert resp.status == 400
    assert resp.json()["status"] == 400 and message in resp.json()["error"]
    assert (await http(toxi.url, "GET", "/proxies/p/toxics")).json() == []


async def test_toxic_conflicts_order_update_delete(toxi: Toxiproxy) -> None:
    await make(toxi)

    async def post(body: Any) -> Any:
        return await http(toxi.url, "POST", "/proxies/p/toxics", body)

    assert (await post({"type": "latency", "stream": "downstream"})).status == 200
    assert (await post({"type": "latency", "stream": "UPSTREAM"})).json()[
        "name"
    ] == "latency_UPSTREAM"  # stream kept as sent, matched case-insensitively
    dup = await post({"type": "timeout", "name": "latency_downstream", "stream": "upstream"})
    assert dup.status == 409 and dup.json()["error"] == "toxic already exists"
    await post(
        {"type": "bandwidth", "name": "bw", "attributes": {"rate": 5, "bogus": 1}, "toxicity": 0.5}
    )
    names = [t["name"] for t in (await http(toxi.url, "GET", "/proxies/p/toxics")).json()]
    assert names == ["latency_UPSTREAM", "latency_downstream", "bw"]  # upstream chain first
    upd = await http(
        toxi.url,
        "PATCH",
        "/proxies/p/toxics/latency_downstream",
        {"attributes": {"jitter": 5}, "type": "timeout", "stream": "upstream"},
    )
    assert upd.status == 200
    assert upd.json()["attributes"] == {"latency": 0, "jitter": 5}
    assert upd.json()["type"] == "latency" and upd.json()["stream"] == "downstream"
    upd = await http(toxi.url, "POST", "/proxies/p/toxics/bw", {"toxicity": 0.25})
    assert upd.json()["toxicity"] == 0.25 and upd.json()["attributes"] == {"rate": 5}
    bad = await http(toxi.url, "POST", "/proxies/p/toxics/bw", {"attributes": {"rate": "x"}})
    assert bad.status == 400
    assert (await http(toxi.url, "DELETE", "/proxies/p/toxics/bw")).status == 204
    assert (await http(toxi.url, "DELETE", "/proxies/p/toxics/bw")).status == 404
    assert (await http(toxi.url, "PATCH", "/proxies/p/toxics/bw", {})).status == 404
    proxy = (await http(toxi.url, "GET", "/proxies/p")).json()
    assert [t["name"] for t in proxy["toxics"]] == ["latency_UPSTREAM", "latency_downstream"]


async def test_reset_reenables_and_clears_toxics(toxi: Toxiproxy) -> None:
    await make(toxi)
    await http(toxi.url, "POST", "/proxies/p/toxics", {"type": "latency"})
    await http(toxi.url, "POST", "/proxies/p", {"enabled": False})
    resp = await http(toxi.url, "POST", "/reset")
    assert resp.status == 204
    doc = (await http(toxi.url, "GET", "/proxies/p")).json()
    assert doc["enabled"] is True and doc["toxics"] == []


async def test_populate(toxi: Toxiproxy) -> None:
    first = await make(toxi, "keep", listen="127.0.0.1:0")
    await http(toxi.url, "POST", "/proxies/keep/toxics", {"type": "latency"})
    await http(toxi.url, "POST", "/proxies/keep", {"enabled": False})
    bad = await http(
        toxi.url, "POST", "/populate", [{"name": "a", "upstream": "x:1"}, {"upstream": "x:1"}]
    )
    assert bad.status == 400
    assert bad.json() == {
        "error": "missing required field: name at proxy 2",
        "status": 400,
        "proxies": None,
    }
    assert "a" not in (await http(toxi.url, "GET", "/proxies")).json()  # all-or-nothing
    body = [
        {"name": "keep", "upstream": first["upstream"], "listen": first["listen"], "enabled": True},
        {"name": "new", "upstream": "x:2", "listen": "127.0.0.1:0"},
    ]
    resp = await http(toxi.url, "POST", "/populate", body)
    assert resp.status == 201
    got = {p["name"]: p for p in resp.json()["proxies"]}
    assert got["keep"]["enabled"] is False and len(got["keep"]["toxics"]) == 1  # untouched
    assert got["new"]["enabled"] is True
    assert (await http(toxi.url, "POST", "/populate", {"not": "a list"})).status == 400
    body = [{"name": "keep", "upstream": "x:9", "listen": "127.0.0.1:0"}]
    replaced = (await http(toxi.url, "POST", "/populate", body)).json()["proxies"][0]
    assert replaced["upstream"] == "x:9" and replaced["toxics"] == []  # differs: replaced


async def test_toxiproxy_python_interop(toxi: Toxiproxy, backend: Backend) -> None:
    def sync_ops() -> tuple[Any, ...]:
        toxiproxy.api.APIConsumer.host, toxiproxy.api.APIConsumer.port = toxi.host, toxi.port
        server = toxiproxy.Toxiproxy()
        proxy = server.create(upstream=backend.address, name="py")
        proxy.add_toxic(type="latency", attributes={"latency": 10})
        toxics = proxy.toxics()
        try:
            server.create(upstream=backend.address, name="py")
            dup = False
        except toxiproxy.exceptions.ProxyExists:
            dup = True
        with proxy.down():
            down = server.get_proxy("py").enabled
        return (
            proxy,
            toxics,
            dup,
            down,
            proxy.destroy_toxic("latency_downstream"),
            server.reset(),
            server.destroy(proxy),
            server.proxies(),
        )

    (
        proxy,
        toxics,
        dup,
        down,
        destroyed_toxic,
        reset,
        destroyed,
        left,
    ) = await trio.to_thread.run_sync(sync_ops)
    assert proxy.listen.startswith("127.0.0.1:")
    assert toxics["latency_downstream"].attributes == {"latency": 10, "jitter": 0}
    assert dup and down is False and destroyed_toxic and reset and destroyed and left == {}


async def test_async_client_errors(toxi: Toxiproxy) -> None:
    await toxi.create_proxy("c", "127.0.0.1:1")
    with pytest.raises(ToxiproxyError) as info:
        await toxi.create_proxy("c", "127.0.0.1:1")
    assert info.value.status == 409
    with pytest.raises(ToxiproxyError) as info:
        await toxi.add_toxic("c", "bogus")
    assert info.value.status == 400
    with pytest.raises(ToxiproxyError) as info:
        await toxi.remove_toxic("c", "none")
    assert info.value.status == 404
    taken = (await toxi.proxies())["c"].listen
    with pytest.raises(ToxiproxyError) as info:
        await toxi.create_proxy("d", "127.0.0.1:1", listen=taken)
    assert info.value.status == 500


@embedded_only("builds its own embedded server to read its collection")
async def test_wildcard_listen_reported() -> None:
    from trio_cluster.faults import EmbeddedToxiproxy

    async with EmbeddedToxiproxy() as tp:
        doc = await make(tp, listen=":0")
        assert doc["listen"].startswith(("[::]:", "0.0.0.0:"))


async def test_server_reports_a_version(toxi: Toxiproxy) -> None:
    assert (await toxi.version()).count(".") >= 1
