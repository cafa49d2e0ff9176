"""HTTP routes of the Toxiproxy 2.12 API, independent of the HTTP transport.

``Api.handle`` maps one request (method, path, headers, body) to one ``Response``.  Routing,
status codes, bodies and headers copy Go's ``api.go`` with gorilla/mux: 405 for a known path
with the wrong method, a plain-text 404 for unknown paths, 403 for browsers, and an
``X-Toxiproxy-Request-Id`` header on every response.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from faults.collection import ProxyCollection
from faults.model import ApiError, decode_body, dumps

__all__ = ["VERSION", "Api", "Response"]

#: The Toxiproxy version this server imitates.
VERSION: Final = "2.12.0"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"


@dataclass
class Response:
    """An HTTP response: status, headers (without the request id) and body."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, doc: Any) -> Response:
    return Response(status, dumps(doc).encode(), [("Content-Type", _JSON)])


def _error(exc: ApiError) -> Response:
    return Response(
        exc.status, exc.body(), [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")]
    )


def request_id() -> str:
    """A 20-character base32hex id, the shape of the ``xid`` ids Go's server sends."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))


Handler = Callable[[dict[str, str], bytes], Awaitable[Response]]


class Api:
    """The routes, bound to one ``ProxyCollection``."""

    def __init__(self, collection: ProxyCollection) -> None:
        self.collection = collection
        p, t = r"(?P<proxy>[^/]+)", r"(?P<toxic>[^/]+)"
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/reset"), {"POST": self._reset}),
            (re.compile(r"/proxies"), {"GET": self._proxy_index, "POST": self._proxy_create}),
            (re.compile(r"/populate"), {"POST": self._populate}),
            (
                re.compile(rf"/proxies/{p}"),
                {
                    "GET": self._proxy_show,
                    "POST": self._proxy_update,
                    "PATCH": self._proxy_update,
                    "DELETE": self._proxy_delete,
                },
            ),
            (
                re.compile(rf"/proxies/{p}/toxics"),
                {"GET": self._toxic_index, "POST": self._toxic_create},
            ),
            (
                re.compile(rf"/proxies/{p}/toxics/{t}"),
                {
                    "GET": self._toxic_show,
                    "POST": self._toxic_update,
                    "PATCH": self._toxic_update,
                    "DELETE": self._toxic_delete,
                },
            ),
            (re.compile(r"/version"), {"GET": self._version}),
        ]

    async def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request; never raises for bad input (unexpected bugs become a 500)."""
        response = await self._dispatch(method, target, headers, body)
        response.headers.append(("X-Toxiproxy-Request-Id", request_id()))
        return response

    async def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        if headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(403, b"User agent not allowed\n", [("Content-Type", _TEXT)])
        path = target.split("?", 1)[0]
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(method.upper())
            if handler is None:
                return Response(405)
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return await handler(params, body)
            except ApiError as exc:
                return _error(exc)
            except Exception as exc:  # a bug must not take the server down: report a 500
                return _error(ApiError(500, f"internal error: {exc!r}"))
        return Response(
            404,
            b"404 page not found\n",
            [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")],
        )

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
        except ApiError as exc:
            # Go answers every populate error with the proxies created so far (or null).
            exc.extra.setdefault("proxies", None)
            return _error(exc)
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

    async def _version(self, params: dict[str, str], body: bytes) -> Response:
        body_text = f'{{"version": "{VERSION}"}}\n'
        return Response(
            200, body_text.encode(), [("Content-Type", "application/json;charset=utf-8")]
        )
