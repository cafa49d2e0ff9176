"""Fault injection for trio-cluster.

* an embedded Toxiproxy 2.12-compatible server (``python -m faults serve``,
  ``faults.server.ToxiproxyServer``, ``faults.embedded.EmbeddedToxiproxy``) and a
  ``toxiproxy-cli`` work-alike (``python -m faults cli``);
* a trio client of the Toxiproxy HTTP API (``faults.client.Toxiproxy``; its one error is
  ``ToxiproxyError``) and trio fault context managers over one node or many
  (``faults.nodes``);
* maintenance-notification injection in front of a real Redis/Valkey (``faults.inject``).

The names below are imported on first use, so ``python -m faults cli`` starts without
loading the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faults.client import ProxyInfo, Toxiproxy
    from faults.embedded import EmbeddedToxiproxy
    from faults.errors import ToxiproxyError
    from faults.server import ToxiproxyServer

__all__ = ["EmbeddedToxiproxy", "ProxyInfo", "Toxiproxy", "ToxiproxyError", "ToxiproxyServer"]

_HOMES = {
    "EmbeddedToxiproxy": "faults.embedded",
    "ProxyInfo": "faults.client",
    "Toxiproxy": "faults.client",
    "ToxiproxyError": "faults.errors",
    "ToxiproxyServer": "faults.server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'faults' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
