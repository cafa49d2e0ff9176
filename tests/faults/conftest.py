"""Fixtures for the faults suite: a Toxiproxy (embedded; or the real Go server when
TOXIPROXY_SERVER names its binary or TOXIPROXY_URL a running one), an echo backend, a real
Redis/Valkey server, and a per-test deadline on every async test."""

from faults_helpers import backend, pytest_collection_modifyitems, real_server, redis_port, toxi

__all__ = ["backend", "pytest_collection_modifyitems", "real_server", "redis_port", "toxi"]
