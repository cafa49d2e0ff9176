"""The one form a node's address takes along a chaos run.

A run meets addresses in several places: the cluster's own (a node's real ``host:port``), the
proxies and injectors chaos puts in front of each node (how the client names a node), the
client's topology and the faults' targets.  They are all :class:`Address` from the moment they
enter chaos until a report prints them (``str(address)`` is ``host:port``).  It is a tuple, so
the ``(host, port)`` APIs of faults and of the client take it as it is, and a plain tuple
compares equal to it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

__all__ = ["Address"]


class Address(NamedTuple):
    """A node's ``(host, port)``; ``str()`` gives ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def of(cls, value: str | tuple[str, int]) -> Address:
        """``value`` (``"host:port"`` as the client names a node, or a ``(host, port)`` pair)
        as an Address.  ValueError names a string that is not ``host:port``."""
        if isinstance(value, Address):
            return value
        if isinstance(value, str):
            return _parse(value)
        host, port = value
        return cls(host, int(port))


@lru_cache(maxsize=1024)
def _parse(text: str) -> Address:
    """``host:port`` (cached: the monitor meets the same few names 50 times a second)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {text!r}")
    return Address(host, int(port))
