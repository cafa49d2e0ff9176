"""An async handle on a Toxiproxy server (embedded or real), over the PyPI ``toxiproxy-python``.

``toxiproxy-python`` 0.1.1 is synchronous and has known flaws that this module works around:

* it keeps the server address in class globals (``APIConsumer.host/port``), so every call
  sets them under one process-wide lock before running;
* it sends requests with no timeout, so ``requests`` is wrapped to add one (a dead server
  cannot wedge a worker thread for ever);
* a 500 surfaces as ``KeyError: 'name'`` from ``create``, so that is turned into
  ``ToxiproxyError``;
* ``destroy(name)`` silently does nothing, so a ``Proxy`` record is always passed;
* its ``populate`` is not idempotent, so it is never used.

Every call runs in ``trio.to_thread.run_sync`` so the trio loop never blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import requests
import toxiproxy
import toxiproxy.api
import trio
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

__all__ = ["ProxyInfo", "Toxiproxy", "ToxiproxyError", "split_address"]

REQUEST_TIMEOUT: Final = 10.0
T = TypeVar("T")
_API_LOCK = threading.Lock()


class _RequestsWithTimeout:
    """Stands in for the ``requests`` module inside ``toxiproxy.api``: adds a timeout."""

    @staticmethod
    def get(url: str, **kwargs: Any) -> requests.Response:
        return requests.get(url, timeout=REQUEST_TIMEOUT, **kwargs)

    @staticmethod
    def post(url: str, **kwargs: Any) -> requests.Response:
        return requests.post(url, timeout=REQUEST_TIMEOUT, **kwargs)

    @staticmethod
    def delete(url: str, **kwargs: Any) -> requests.Response:
        return requests.delete(url, timeout=REQUEST_TIMEOUT, **kwargs)


toxiproxy.api.requests = _RequestsWithTimeout()


class ToxiproxyError(Exception):
    """A Toxiproxy request failed; ``status`` is the HTTP status when one is known."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


def _info(proxy: Any) -> ProxyInfo:
    return ProxyInfo(str(proxy.name), str(proxy.listen), str(proxy.upstream), bool(proxy.enabled))


def _message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


class Toxiproxy:
    """Async client for one Toxiproxy server, e.g. ``Toxiproxy("http://127.0.0.1:8474")``."""

    def __init__(self, url: str = "http://127.0.0.1:8474") -> None:
        self.url = url.rstrip("/")
        host_port = self.url.split("://", 1)[-1]
        self.host, self.port = split_address(host_port)

    def __repr__(self) -> str:
        return f"Toxiproxy({self.url!r})"

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a toxiproxy-python call) in a worker thread against this server."""

        def work() -> T:
            with _API_LOCK:
                toxiproxy.api.APIConsumer.host = self.host
                toxiproxy.api.APIConsumer.port = self.port
                try:
                    return fn()
                except ProxyExists as exc:
                    raise ToxiproxyError(_message(exc), 409) from exc
                except NotFound as exc:
                    raise ToxiproxyError(_message(exc), 404) from exc
                except InvalidToxic as exc:
                    raise ToxiproxyError(_message(exc), 400) from exc
                except (KeyError, ValueError) as exc:  # a 500 body fed to Proxy(**body)
                    raise ToxiproxyError(f"unexpected server reply: {exc!r}", 500) from exc
                except requests.RequestException as exc:
                    raise ToxiproxyError(f"cannot reach {self.url}: {exc}") from exc

        # abandon_on_cancel: a caller's deadline (e.g. a shielded undo's timeout) is honoured
        # even mid-request; the thread ends by itself within REQUEST_TIMEOUT.
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)

    @staticmethod
    def _record(name: str) -> Any:
        # toxiproxy-python needs a Proxy instance for per-proxy calls; only the name is used.
        return toxiproxy.Proxy(name=name, upstream="", enabled=True, listen="")

    async def version(self) -> str:
        """The server version string (parses every historical ``/version`` format)."""
        import json

        raw: bytes = await self._call(lambda: toxiproxy.api.APIConsumer.get("/version").content)
        text = raw.decode("utf-8", "replace").strip()
        try:
            return str(json.loads(text)["version"])
        except (ValueError, KeyError, TypeError):
            return text.replace("\\n", "").strip('{}" ').rpartition('"')[-1] or text

    async def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy, by name."""
        found = await self._call(lambda: toxiproxy.Toxiproxy().proxies())
        return {name: _info(p) for name, p in found.items()}

    async def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; 409 if the name exists, 500 for a bind error."""
        proxy = await self._call(
            lambda: toxiproxy.Toxiproxy().create(
                upstream=upstream, name=name, listen=listen, enabled=enabled
            )
        )
        return _info(proxy)

    async def delete_proxy(self, name: str) -> None:
        """Delete a proxy (404 if unknown)."""
        await self._call(lambda: self._record(name).destroy())

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a proxy (disabling drops its connections and refuses new ones)."""
        record = self._record(name)
        await self._call(record.enable if enabled else record.disable)

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
        toxic_name = name or f"{type}_{stream}"
        await self._call(
            lambda: self._record(proxy).add_toxic(
                type=type,
                stream=stream,
                name=toxic_name,
                toxicity=toxicity,
                attributes=attributes or {},
            )
        )
        return toxic_name

    async def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic (404 if unknown)."""
        await self._call(lambda: self._record(proxy).destroy_toxic(name))

    async def toxics(self, proxy: str) -> dict[str, dict[str, Any]]:
        """The proxy's toxics as JSON-like dicts, by name."""
        found = await self._call(lambda: self._record(proxy).toxics())
        return {
            n: {
                "type": t.type,
                "stream": t.stream,
                "toxicity": t.toxicity,
                "attributes": t.attributes,
            }
            for n, t in found.items()
        }

    async def reset(self) -> None:
        """Re-enable every proxy and remove every toxic."""
        await self._call(lambda: toxiproxy.Toxiproxy().reset())

    async def delete_all(self, names: Iterable[str] | None = None) -> None:
        """Delete the named proxies (all proxies when ``names`` is None)."""
        targets = list(names) if names is not None else list(await self.proxies())
        for name in targets:
            await self.delete_proxy(name)
