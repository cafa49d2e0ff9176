"""Fault injection for trio-cluster.

* an embedded Toxiproxy 2.12-compatible server (``python -m faults serve``,
  ``faults.server.ToxiproxyServer``, ``faults.embedded.EmbeddedToxiproxy``);
* an async client over ``toxiproxy-python`` (``faults.client.Toxiproxy``) and trio fault
  context managers over one node or many (``faults.nodes``);
* maintenance-notification injection in front of a real Redis/Valkey (``faults.inject``).
"""

from faults.client import ProxyInfo, Toxiproxy, ToxiproxyError
from faults.embedded import EmbeddedToxiproxy
from faults.server import ToxiproxyServer

__all__ = ["EmbeddedToxiproxy", "ProxyInfo", "Toxiproxy", "ToxiproxyError", "ToxiproxyServer"]
