"""Fixtures for the faults suite: a Toxiproxy (embedded, or real via TOXIPROXY_URL), an echo
backend, a real Redis/Valkey server, and a per-test deadline on every async test."""

from faults_helpers import backend, pytest_collection_modifyitems, redis_port, toxi

__all__ = ["backend", "pytest_collection_modifyitems", "redis_port", "toxi"]
