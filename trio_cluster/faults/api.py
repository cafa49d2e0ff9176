"""HTTP routes of the Toxiproxy 2.12 API, independent of the HTTP transport.

``Api.handle`` maps one request (method, path, headers, body) to one ``Response``.  Routing,
status codes, bodies and headers copy Go's ``api.go`` with gorilla/mux: 405 for a known path
with the wrong method, a plain-text 404 for unknown paths, 403 for browsers.  As in Go, only
a request that matched a route passes the middlewares: it gets an ``X-Toxiproxy-Request-Id``
header and a debug access-log line; router-level 404/405 answers get neither.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from .collection import ProxyCollection
from .errors import ToxiproxyError
from .logs import event
from .metrics import CONTENT_TYPE, Metrics
from .model import decode_body, dumps
from .version import VERSION

__all__ = ["VERSION", "Api", "Response"]

_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"
log = logging.getLogger(__name__)


@dataclass
class Response:
    """An HTTP response: status, headers (without the request id) and body."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The route's name (Go's handler name, e.g. ``ProxyCreate``); None when none matched.
    route: str | None = None


def _json(status: int, doc: Any) -> Response:
    return Response(status, dumps(doc).encode(), [("Content-Type", _JSON)])


def _error(exc: ToxiproxyError) -> Response:
    """The error answer exactly as Go's ``http.Error`` writes it (JSON and a newline)."""
    doc: dict[str, Any] = {"error": exc.message, "status": exc.status, **exc.extra}
    return Response(
        exc.status or 500,
        dumps(doc).encode() + b"\n",
        [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")],
    )


def request_id() -> str:
    """A 20-character base32hex id, the shape of the ``xid`` ids Go's server sends."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))


Handler = Callable[[dict[str, str], bytes], Awaitable[Response]]


class Api:
    """The routes, bound to one ``ProxyCollection``."""

    def __init__(self, collection: ProxyCollection, metrics: Metrics | None = None) -> None:
        self.collection = collection
        self.metrics = metrics or Metrics()
        p, t = r"(?P<proxy>[^/]+)", r"(?P<toxic>[^/]+)"
        # (pattern, {method: (route name, handler)}), in Go's registration order.
        self._routes: list[tuple[re.Pattern[str], dict[str, tuple[str, Handler]]]] = [
            (re.compile(r"/reset"), {"POST": ("ResetState", self._reset)}),
            (
                re.compile(r"/proxies"),
                {
                    "GET": ("ProxyIndex", self._proxy_index),
                    "POST": ("ProxyCreate", self._proxy_create),
                },
            ),
            (re.compile(r"/populate"), {"POST": ("Populate", self._populate)}),
            (
                re.compile(rf"/proxies/{p}"),
                {
                    "GET": ("ProxyShow", self._proxy_show),
                    "POST": ("ProxyUpdate", self._proxy_update),
                    "PATCH": ("ProxyUpdate", self._proxy_update),
                    "DELETE": ("ProxyDelete", self._proxy_delete),
                },
            ),
            (
                re.compile(rf"/proxies/{p}/toxics"),
                {
                    "GET": ("ToxicIndex", self._toxic_index),
                    "POST": ("ToxicCreate", self._toxic_create),
                },
            ),
            (
                re.compile(rf"/proxies/{p}/toxics/{t}"),
                {
                    "GET": ("ToxicShow", self._toxic_show),
                    "POST": ("ToxicUpdate", self._toxic_update),
                    "PATCH": ("ToxicUpdate", self._toxic_update),
                    "DELETE": ("ToxicDelete", self._toxic_delete),
                },
            ),
            (re.compile(r"/version"), {"GET": ("Version", self._version)}),
        ]
        if self.metrics.enabled:
            self._routes.append((re.compile(r"/metrics"), {"GET": ("Metrics", self._metrics)}))

    def route(self, method: str, target: str) -> tuple[str, Handler, dict[str, str]] | Response:
        """The matching route (name, handler, path parameters), or the router's 404/405."""
        path = target.split("?", 1)[0]
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            found = methods.get(method.upper())
            if found is None:
                return Response(405)
            name, handler = found
            return name, handler, {k: unquote(v) for k, v in match.groupdict().items()}
        return Response(
            404,
            b"404 page not found\n",
            [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")],
        )

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, rid: str = ""
    ) -> Response:
        """Answer one request; never raises for bad input (unexpected bugs become a 500).

        ``rid`` is the request id a routed answer carries (a new one when empty).
        """
        routed = self.route(method, target)
        if isinstance(routed, Response):
            return routed
        name, handler, params = routed
        rid = rid or request_id()
        response = await self._run(method, name, handler, params, headers, body, rid)
        response.headers.append(("X-Toxiproxy-Request-Id", rid))
        response.route = name
        return response

    async def _run(
        self,
        method: str,
        name: str,
        handler: Handler,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        rid: str,
    ) -> Response:
        if headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(
                403,
                b"User agent not allowed\n",
                [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")],
            )
        if method.upper() == "POST" and name in ("ProxyUpdate", "ToxicUpdate"):
            event(
                log,
                logging.WARNING,
                f"{name}: HTTP method POST is depercated. Use HTTP PATCH instead.",  # Go's typo
                request_id=rid,
            )
        try:
            return await handler(params, body)
        except ToxiproxyError as exc:
            if exc.status == 500:
                event(
                    log,
                    logging.WARNING,
                    "Error did not include status code",
                    error=exc.message,
                )
            return _error(exc)
        except Exception as exc:  # a bug must not take the server down: report a 500
            log.exception("internal error answering %s", name)
            return _error(ToxiproxyError(500, f"internal error: {exc!r}"))

    async def _reset(self, params: dict[str, str], body: bytes) -> Response:
        await self.collection.reset()
        return Response(204)

    async def _proxy_index(self, params: dict[str, str], body: bytes) -> Response:
        return _json(200, self.collection.index())

    async def _proxy_create(self, params: dict[str, str], body: bytes) -> Response:
        return _json(201, await self.collection.create(decode_body(body)))

    async def _populate(self, params: dict[str, str], body: bytes) -> Response:
        try:
            status, doc = await self.collection.populate(decode_body(body))
        except ToxiproxyError as exc:
            # Go answers every populate error as JSON (not http.Error: no newline) with the
            # proxies created so far, or null.
            doc = {"error": exc.message, "status": exc.status}
            doc["proxies"] = exc.extra.get("proxies") or None
            return _json(exc.status or 500, doc)
        return _json(status, doc)

    async def _proxy_show(self, params: dict[str, str], body: bytes) -> Response:
        return _json(200, self.collection.get(params["proxy"]).to_json())

    async def _proxy_update(self, params: dict[str, str], body: bytes) -> Response:
        self.collection.get(params["proxy"])  # 404 before decoding, as Go looks it up first
        return _json(200, await self.collection.update(params["proxy"], decode_body(body)))

    async def _proxy_delete(self, params: dict[str, str], body: bytes) -> Response:
        await self.collection.delete(params["proxy"])
        return Response(204)

    async def _toxic_index(self, params: dict[str, str], body: bytes) -> Response:
        return _json(200, self.collection.toxic_index(params["proxy"]))

    async def _toxic_create(self, params: dict[str, str], body: bytes) -> Response:
        self.collection.get(params["proxy"])
        return _json(200, self.collection.toxic_create(params["proxy"], decode_body(body)))

    async def _toxic_show(self, params: dict[str, str], body: bytes) -> Response:
        return _json(200, self.collection.toxic_show(params["proxy"], params["toxic"]))

    async def _toxic_update(self, params: dict[str, str], body: bytes) -> Response:
        self.collection.toxic_show(params["proxy"], params["toxic"])
        doc = decode_body(body)
        return _json(200, self.collection.toxic_update(params["proxy"], params["toxic"], doc))

    async def _toxic_delete(self, params: dict[str, str], body: bytes) -> Response:
        self.collection.toxic_delete(params["proxy"], params["toxic"])
        return Response(204)

    async def _metrics(self, params: dict[str, str], body: bytes) -> Response:
        return Response(200, self.metrics.exposition(), [("Content-Type", CONTENT_TYPE)])

    async def _version(self, params: dict[str, str], body: bytes) -> Response:
        body_text = f'{{"version": "{VERSION}"}}\n'
        return Response(
            200, body_text.encode(), [("Content-Type", "application/json;charset=utf-8")]
        )
