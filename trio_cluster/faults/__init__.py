"""Fault injection for trio-cluster.

* an embedded Toxiproxy 2.12-compatible server (``trio-cluster-faults serve``, also
  ``python -m trio_cluster.faults serve``; ``server.ToxiproxyServer``,
  ``embedded.EmbeddedToxiproxy``) and a ``toxiproxy-cli`` work-alike
  (``trio-cluster-faults cli``);
* a trio client of the Toxiproxy HTTP API (``client.Toxiproxy``; its one error is
  ``ToxiproxyError``) and trio fault context managers over one node or many (``nodes``);
* maintenance-notification injection in front of a real Redis/Valkey (``inject``).

The package lives under ``trio_cluster`` so that its import name cannot shadow, or be shadowed
by, another distribution's top-level ``faults``.  The names below are imported on first use, so
``trio-cluster-faults cli`` starts without loading the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ProxyInfo, Toxiproxy
    from .embedded import EmbeddedToxiproxy
    from .errors import ToxiproxyError
    from .server import ToxiproxyServer

__all__ = ["EmbeddedToxiproxy", "ProxyInfo", "Toxiproxy", "ToxiproxyError", "ToxiproxyServer"]

_HOMES = {
    "EmbeddedToxiproxy": "trio_cluster.faults.embedded",
    "ProxyInfo": "trio_cluster.faults.client",
    "Toxiproxy": "trio_cluster.faults.client",
    "ToxiproxyError": "trio_cluster.faults.errors",
    "ToxiproxyServer": "trio_cluster.faults.server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'trio_cluster.faults' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
