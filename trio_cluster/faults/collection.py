"""The set of proxies and every state-changing operation of the API, with Go's semantics.

Operations raise ``ToxiproxyError`` for anything the client did wrong (or a bind failure), and
return plain JSON-ready values.  Proxies serve inside the collection's nursery, so they live
exactly as long as the server that owns the collection.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from .errors import ToxiproxyError
from .metrics import Metrics
from .model import (
    ProxyInput,
    Toxic,
    populate_input,
    proxy_input,
    toxic_from_json,
)
from .proxy import Proxy
from .sockets import resolve_listen

__all__ = ["ProxyCollection"]


class ProxyCollection:
    """All proxies of one server, keyed by name."""

    def __init__(
        self, nursery: trio.Nursery, seed: int | None = None, metrics: Metrics | None = None
    ) -> None:
        self._nursery = nursery
        self.rng = random.Random(seed)
        self.metrics = metrics or Metrics()
        self.proxies: dict[str, Proxy] = {}
        # One change at a time: an operation awaits (bind, resolve) and must not interleave.
        self._lock = trio.Lock()

    def get(self, name: str) -> Proxy:
        """The named proxy, or a 404."""
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ToxiproxyError(404, "proxy not found")
        return proxy

    def index(self) -> dict[str, Any]:
        """``GET /proxies``: name -> proxy JSON, sorted by name as Go's map encoding is."""
        return {name: self.proxies[name].to_json() for name in sorted(self.proxies)}

    @staticmethod
    def _validate(entry: ProxyInput, suffix: str = "") -> None:
        if not entry.name:
            raise ToxiproxyError(400, f"missing required field: name{suffix}")
        if not entry.upstream:
            raise ToxiproxyError(400, f"missing required field: upstream{suffix}")

    async def _new(self, entry: ProxyInput) -> Proxy:
        proxy = Proxy(entry.name, entry.listen, entry.upstream, self.rng, self.metrics)
        if entry.enabled:
            await proxy.start(self._nursery)
        self.proxies[entry.name] = proxy
        return proxy

    async def create(self, doc: Any) -> dict[str, Any]:
        """``POST /proxies``."""
        entry = proxy_input(doc)
        self._validate(entry)
        async with self._lock:
            if entry.name in self.proxies:
                raise ToxiproxyError(409, "proxy already exists")
            return (await self._new(entry)).to_json()

    async def _differs(self, proxy: Proxy, entry: ProxyInput) -> bool:
        """Go's ``Proxy.Differs``: a listen address that does not resolve is a 500, with
        ``net.ResolveTCPAddr``'s text (no ``listen tcp:`` prefix)."""
        try:
            _, _, port, display = await resolve_listen(entry.listen)
        except ToxiproxyError as exc:
            raise ToxiproxyError(exc.status, exc.message.removeprefix("listen tcp: ")) from None
        return entry.upstream != proxy.upstream or port == 0 or display != proxy.listen

    async def update(self, name: str, doc: Any) -> dict[str, Any]:
        """``POST/PATCH /proxies/{name}``: a partial body merges into the current values."""
        async with self._lock:
            proxy = self.get(name)
            entry = proxy_input(
                doc, name=name, listen=proxy.listen, upstream=proxy.upstream, enabled=proxy.enabled
            )
            if await self._differs(proxy, entry):
                proxy.stop()
                proxy.listen, proxy.upstream = entry.listen, entry.upstream
                if entry.enabled:
                    await proxy.start(self._nursery)
            elif entry.enabled and not proxy.enabled:
                await proxy.start(self._nursery)
            elif not entry.enabled and proxy.enabled:
                proxy.stop()
            return proxy.to_json()

    async def delete(self, name: str) -> None:
        """``DELETE /proxies/{name}``: stop it and forget it."""
        async with self._lock:
            self.get(name).stop()
            del self.proxies[name]

    async def reset(self) -> None:
        """``POST /reset``: re-enable every proxy and drop all toxics (proxies are kept)."""
        async with self._lock:
            for proxy in list(self.proxies.values()):
                await proxy.start(self._nursery)
                proxy.remove_all_toxics()

    async def populate(self, doc: Any) -> tuple[int, dict[str, Any]]:
        """``POST /populate``: validate all, then create or replace each entry in order.

        Returns the status and body; a mid-way failure keeps what was created so far.
        """
        entries = populate_input(doc)
        for number, entry in enumerate(entries, start=1):
            try:
                self._validate(entry, f" at proxy {number}")
            except ToxiproxyError as exc:
                raise ToxiproxyError(exc.status, exc.message, proxies=None) from None
        done: list[dict[str, Any]] = []
        async with self._lock:
            for entry in entries:
                try:
                    existing = self.proxies.get(entry.name)
                    if existing is not None and not await self._differs(existing, entry):
                        done.append(existing.to_json())
                        continue
                    if existing is not None:
                        existing.stop()
                        del self.proxies[entry.name]
                    done.append((await self._new(entry)).to_json())
                except ToxiproxyError as exc:
                    raise ToxiproxyError(exc.status, exc.message, proxies=done) from None
        # Go's nil slice: an empty populate answers null.
        return 201, {"proxies": done or None}

    # --- toxics -----------------------------------------------------------------------------

    def _toxic(self, proxy_name: str, toxic_name: str) -> tuple[Proxy, Toxic]:
        proxy = self.get(proxy_name)
        toxic = proxy.find_toxic(toxic_name)
        if toxic is None:
            raise ToxiproxyError(404, "toxic not found")
        return proxy, toxic

    def toxic_index(self, proxy_name: str) -> list[dict[str, Any]]:
        """``GET /proxies/{p}/toxics``."""
        return [t.to_json() for t in self.get(proxy_name).all_toxics()]

    def toxic_create(self, proxy_name: str, doc: Any) -> dict[str, Any]:
        """``POST /proxies/{p}/toxics`` (200, not 201, as in Go)."""
        proxy = self.get(proxy_name)
        toxic = toxic_from_json(doc, lambda name: proxy.find_toxic(name) is not None)
        proxy.add_toxic(toxic)
        return toxic.to_json()

    def toxic_show(self, proxy_name: str, toxic_name: str) -> dict[str, Any]:
        """``GET /proxies/{p}/toxics/{t}``."""
        return self._toxic(proxy_name, toxic_name)[1].to_json()

    def toxic_update(self, proxy_name: str, toxic_name: str, doc: Any) -> dict[str, Any]:
        """``POST/PATCH /proxies/{p}/toxics/{t}``: attributes merge; only toxicity else."""
        proxy, toxic = self._toxic(proxy_name, toxic_name)
        toxic.update_from_json(doc)
        proxy.toxic_updated(toxic)
        return toxic.to_json()

    def toxic_delete(self, proxy_name: str, toxic_name: str) -> None:
        """``DELETE /proxies/{p}/toxics/{t}``."""
        proxy, toxic = self._toxic(proxy_name, toxic_name)
        proxy.remove_toxic(toxic)

    def close(self) -> None:
        """Stop every proxy (server shutdown)."""
        for proxy in self.proxies.values():
            proxy.stop(log_it=False)
