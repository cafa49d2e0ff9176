"""The cluster a run works on, parsed once.

``--cluster`` is ``local`` (chaos starts a 3+3 cluster) or the ``redis://``/``rediss://`` URL of
a node of an existing cluster.  :meth:`ClusterTarget.parse` reads it once, when the arguments
are checked: the node to discover the cluster from, the connection keywords every client of the
run gets (credentials, TLS, db), and the form that may be shown.  Its password is registered
with the run's redactor there too, so nothing printed or written afterwards can show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trio_cluster import parse_url

from .address import Address
from .redact import Redactor

__all__ = ["LOCAL", "ClusterTarget", "TargetError"]

LOCAL = "local"


class TargetError(ValueError):
    """``--cluster`` is neither ``local`` nor a usable URL (the message is redacted)."""


@dataclass(frozen=True)
class ClusterTarget:
    """Where the run's cluster is (see the module docstring)."""

    shown: str
    """``local``, or the URL with its password replaced by ``***``."""
    seed: Address | None = None
    """The node the URL names (None: a local cluster)."""
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Connection keywords from the URL (credentials, TLS, db), for every client of the run."""

    @property
    def local(self) -> bool:
        """Whether chaos starts the cluster itself (process faults allowed)."""
        return self.seed is None

    @classmethod
    def parse(cls, spec: str, redactor: Redactor) -> ClusterTarget:
        """``local`` or a ``redis://``/``rediss://`` URL; TargetError says what is wrong."""
        if spec == LOCAL:
            return cls(LOCAL)
        redactor.add_url(spec)
        shown = redactor.url(spec)
        if not spec.startswith(("redis://", "rediss://")):
            raise TargetError(f"{shown}: use '{LOCAL}' or a redis:// or rediss:// URL")
        try:
            options = parse_url(spec)
        except ValueError as exc:
            raise TargetError(redactor.scrub(str(exc))) from None
        host = options.pop("host", None)
        port = options.pop("port", 6379)
        if not host:
            raise TargetError(f"{shown}: no host")
        return cls(shown, Address(host, int(port)), MappingProxyType(options))
