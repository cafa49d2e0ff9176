"""Shared fixtures: real servers (one standalone, one 3+3 cluster) for the whole session.

The server binary is the one ``trio_cluster.testing.find_server_binary`` picks
(``TRIO_CLUSTER_SERVER``, then ``redis-server`` or ``valkey-server`` on PATH, then the bundled
Valkey); the report header names it so every run says which server it used.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from trio_cluster.testing import LocalCluster, LocalServer, find_server_binary, server_version

# Started in the background by a shell (``nohup ... &``), a process inherits SIGINT ignored, and
# so would every child that a test interrupts with Ctrl-C: they would never see it.  A handler
# of pytest's own is not inherited across exec: the children start with the default, as they
# would from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config: pytest.Config) -> list[str]:
    binary = find_server_binary()
    libraries = ", ".join(
        f"{name} {version(name)}" for name in ("redis", "trio", "hiredis", "attrs")
    )
    return [f"server: {server_version(binary)} ({binary})", f"libraries: {libraries}"]


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalServer]:
    """A standalone server shared by the session (tests must not depend on its contents)."""
    with LocalServer() as server:
        yield server


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A 3-primary, 3-replica cluster shared by the session.  Tests that kill, pause or fail
    over nodes use their own cluster instead."""
    with LocalCluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster
