"""The client of the Toxiproxy HTTP API (the Go server or the embedded one), on trio.

``Toxiproxy(url)`` holds nothing but the server's address.  Each call opens one HTTP/1.1
connection, sends one request (h11) and reads the whole answer, all under one deadline
(``timeout``, 10 s by default), so a dead or stalled server cannot hang the caller; trio
cancellation works at every point.  Answers are read as Go's client reads them: a 2xx answer
carries JSON (or nothing); any other is an error body ``{"error": ..., "status": ...}``,
raised as ``ToxiproxyError``.  A server that cannot be reached, or an error answer that is
not that JSON, raises ``ToxiproxyError`` with ``status`` None and Go's client text
(``fail to request: Get "...": dial tcp ...: connect: connection refused``), which
``python -m trio_cluster.faults cli`` (built on this class) prints as ``toxiproxy-cli`` does.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import h11
import trio

from . import gojson
from .errors import ToxiproxyError
from .version import VERSION

__all__ = ["REQUEST_TIMEOUT", "ProxyInfo", "Toxiproxy", "ToxiproxyError", "split_address"]

#: Seconds a call may take, connecting included, unless the client is given another bound.
REQUEST_TIMEOUT: Final = 10.0
#: The largest answer read (a ``GET /proxies`` of 10,000 proxies is about 2 MB).
MAX_ANSWER: Final = 64 * 1024 * 1024
_RECV_SIZE: Final = 65536
# The Go client's error type, to decode error answers with Go's messages.
_API_ERROR: Final = gojson.Struct(
    "toxiproxy.ApiError", "ApiError", {"error": gojson.STRING, "status": gojson.INT}
)


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` or ``"[::1]:8000"`` -> ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ProxyInfo:
    """A proxy as the server reports it."""

    name: str
    listen: str
    upstream: str
    enabled: bool

    @property
    def listen_address(self) -> tuple[str, int]:
        """The listen address as ``(host, port)``; a wildcard host maps to loopback."""
        host, port = split_address(self.listen)
        return ("127.0.0.1" if host in ("", "::", "0.0.0.0") else host), port

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ProxyInfo:
        """From the proxy object of an answer."""
        return cls(str(doc["name"]), str(doc["listen"]), str(doc["upstream"]), bool(doc["enabled"]))


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _reason(exc: BaseException) -> str:
    """Go's lower-case text for a failed connection (``connect: connection refused``).

    trio's ``open_tcp_stream`` raises "all attempts to connect ... failed" with the real
    errors as its cause (a group when several addresses were tried), each with its own
    wording: the first one's errno is used.
    """
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, OSError) and exc.errno:
        return f"connect: {os.strerror(exc.errno).lower()}"
    return str(exc) or type(exc).__name__


class Toxiproxy:
    """Async client for one Toxiproxy server, e.g. ``Toxiproxy("http://127.0.0.1:8474")``.

    ``timeout`` bounds each call; ``user_agent`` is sent with every request (the CLI sends
    ``toxiproxy-cli``'s).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8474",
        *,
        timeout: float = REQUEST_TIMEOUT,
        user_agent: str = f"faults/{VERSION}",
    ) -> None:
        # As Go's client: a bare host:port means http.
        full = url if "://" in url else "http://" + url
        parts = urllib.parse.urlsplit(full)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(
                "a Toxiproxy URL is http://host:port (or https://), not one with scheme "
                f"{parts.scheme!r}, host {parts.hostname!r}"
            )
        self.url = full.rstrip("/")
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout
        self.user_agent = user_agent
        self._tls = parts.scheme == "https"
        self._hostport = parts.netloc.rpartition("@")[2]
        self._prefix = parts.path.rstrip("/")
        self._auth: str | None = None
        # In error texts the password shows as Go's url.Redacted() shows it.
        self._shown = self.url
        if parts.username is not None:
            userinfo = f"{parts.username}:{parts.password or ''}"
            self._auth = (
                "Basic " + base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode()
            )
            if parts.password is not None:
                self._shown = self.url.replace(f":{parts.password}@", ":xxxxx@", 1)

    def __repr__(self) -> str:
        return f"Toxiproxy({self._shown!r})"

    # --- one request ------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request (``body`` as JSON); return the answer's JSON, None when empty.

        Raises ``ToxiproxyError``: with the answer's status for an error answer, with
        ``status`` None when the server cannot be reached, does not answer within
        ``timeout``, or answers something that is not Toxiproxy's.
        """
        status, raw = await self._exchange(method, path, body)
        if not 200 <= status < 300:
            raise self._error_answer(raw)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            text = raw[:80].decode("utf-8", "replace")
            raise ToxiproxyError(None, f"answer of {path} is not JSON: {text!r}") from None

    async def _exchange(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        """One request and its whole answer: ``(status, body)``."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        where = f'{method.title()} "{self._shown}{path}"'
        try:
            with trio.fail_after(self.timeout):
                return await self._send(method, self._prefix + path, data)
        except trio.TooSlowError:
            message = f"fail to request: {where}: no answer within {self.timeout:g} s"
        except OSError as exc:
            message = f"fail to request: {where}: dial tcp {self._hostport}: {_reason(exc)}"
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            message = f"fail to request: {where}: {exc or 'connection closed'}"
        raise ToxiproxyError(None, message)

    async def _send(self, method: str, target: str, data: bytes) -> tuple[int, bytes]:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", self._hostport),
            ("User-Agent", self.user_agent),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
        if self._auth is not None:
            headers.append(("Authorization", self._auth))
        request = [conn.send(h11.Request(method=method, target=target, headers=headers))]
        if data:
            request.append(conn.send(h11.Data(data=data)))
        request.append(conn.send(h11.EndOfMessage()))
        stream: trio.abc.Stream
        if self._tls:
            context = ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(self.host, self.port, ssl_context=context)
        else:
            stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            await stream.send_all(b"".join(part or b"" for part in request))
            status, chunks, size = 0, [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(_RECV_SIZE)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_ANSWER:
                        raise h11.RemoteProtocolError(f"answer larger than {MAX_ANSWER} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return status, b"".join(chunks)
                elif isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("the server closed the connection")

    @staticmethod
    def _error_answer(raw: bytes) -> ToxiproxyError:
        """An error answer as Go's client reads it: the API's error JSON, or Go's decoding
        error for anything else (``status`` None)."""
        try:
            doc = _API_ERROR.unmarshal(gojson.decode(raw), {})
        except gojson.GoJsonError as exc:
            return ToxiproxyError(None, str(exc))
        return ToxiproxyError(int(doc.get("status", 0)), str(doc.get("error", "")))

    # --- the API ----------------------------------------------------------------------------

    async def version(self) -> str:
        """The server version string (parses every historical ``/version`` format)."""
        status, raw = await self._exchange("GET", "/version", None)
        if not 200 <= status < 300:
            raise self._error_answer(raw)
        text = raw.decode("utf-8", "replace").strip()
        try:
            return str(json.loads(text)["version"])
        except (ValueError, KeyError, TypeError):  # 2.6's broken JSON, 2.5's plain text
            return text.replace("\\n", "").strip('{}" ').rpartition('"')[-1] or text

    async def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy, by name."""
        doc = await self.request("GET", "/proxies") or {}
        return {name: ProxyInfo.from_json(p) for name, p in doc.items()}

    async def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; 409 if the name exists, 500 for a bind error."""
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return ProxyInfo.from_json(await self.request("POST", "/proxies", body))

    async def delete_proxy(self, name: str) -> None:
        """Delete a proxy (404 if unknown)."""
        await self.request("DELETE", f"/proxies/{_quoted(name)}")

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a proxy (disabling drops its connections and refuses new ones)."""
        await self.request("PATCH", f"/proxies/{_quoted(name)}", {"enabled": enabled})

    async def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        attributes: dict[str, int] | None = None,
    ) -> str:
        """Add a toxic and return its name."""
        body = {
            "name": name or f"{type}_{stream}",
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes or {},
        }
        doc = await self.request("POST", f"/proxies/{_quoted(proxy)}/toxics", body)
        return str(doc["name"])

    async def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic (404 if unknown)."""
        await self.request("DELETE", f"/proxies/{_quoted(proxy)}/toxics/{_quoted(name)}")

    async def toxics(self, proxy: str) -> dict[str, dict[str, Any]]:
        """The proxy's toxics as JSON-like dicts (without their names), by name."""
        found = await self.request("GET", f"/proxies/{_quoted(proxy)}/toxics") or []
        return {t["name"]: {k: v for k, v in t.items() if k != "name"} for t in found}

    async def reset(self) -> None:
        """Re-enable every proxy and remove every toxic."""
        await self.request("POST", "/reset")

    async def delete_all(self, names: Iterable[str] | None = None) -> None:
        """Delete the named proxies (all proxies when ``names`` is None)."""
        targets = list(names) if names is not None else list(await self.proxies())
        for name in targets:
            await self.delete_proxy(name)
