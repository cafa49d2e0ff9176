"""redis-py's constructor options on trio-cluster's clients, each mapped once to the option that
does the same here, or refused with a message naming what to use instead.

A redis-py application builds ``Redis(max_connections=20, retry=Retry(...), ssl=True, ...)``
or ``RedisCluster(read_from_replicas=True, ...)``; ``Client`` and ``ClusterClient`` take the
same keywords (and ``from_url`` the same query options) and hand them to
:func:`take_redis_py_options`, which turns them into this library's options:

==================================  ===================================================
redis-py                            trio-cluster
==================================  ===================================================
``max_connections=n``               ``PoolOptions(size=n, max_active=n)``: at most n
                                    connections (per node); one more command fails at
                                    once with ``MaxConnectionsError``, as in redis-py
``single_connection_client=True``   ``PoolOptions(size=1)``: commands take turns on one
                                    connection (``Client`` only, as redis-py)
``retry=Retry(backoff, n)``         ``RetryOptions(retries=n, backoff_policy=backoff)``
``retry_on_timeout=True``           retries on (``RetryOptions()`` unless ``retry=``)
``retry_on_error=[...]``            retries on, for connection errors and timeouts
``cluster_error_retry_attempts=n``  ``RetryOptions(retries=n, transient_retries=n)``
                                    (ignored when ``retry=`` is given, as in redis-py)
``ssl=True``, ``ssl_*``             ``ssl_context=`` built as redis-py builds its own
``read_from_replicas=True``         ``read_from=ReadFrom.ROUND_ROBIN``
``load_balancing_strategy=s``       ``read_from=`` the matching :class:`ReadFrom`
``topology_refresh_min_interval``   ``refresh_min_interval``
==================================  ===================================================

``health_check_interval``, ``socket_keepalive``, ``socket_keepalive_options``,
``client_name``, ``socket_timeout``, ``socket_connect_timeout`` (``config``), and
``require_full_coverage``, ``reinitialize_steps``, ``dynamic_startup_nodes`` (arguments of
``ClusterClient``) are options of the same name here.  A
name in :data:`REFUSED` raises ``TypeError`` with the way out; any other unknown name raises
``TypeError`` naming the client.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Iterable
from typing import Any

import attrs
from redis import exceptions as rex

from ..config import RetryOptions
from ..pooling.pool import PoolOptions
from ..redispy import AbstractRetry, LoadBalancingStrategy, retry_parts
from ..routing.slotmap import ReadFrom

__all__ = ["REFUSED", "RedisPyOptions", "ssl_context_from", "take_redis_py_options"]

_OCSP = "OCSP checks are not supported: pass an ssl.SSLContext of your own as ssl_context="
_ROUTING = "command routing follows the servers' COMMAND table and redis-py's flags"
_MAINT = "use maint_notifications='auto', 'enabled' or 'disabled' (or MaintNotificationsOptions)"

#: redis-py options no client here can honour -> what to do instead.
REFUSED: dict[str, str] = {
    "cache": "client-side caching is not supported: remove the option",
    "cache_config": "client-side caching is not supported: remove the option",
    "connection_pool": (
        "a redis-py ConnectionPool cannot be used: size the client's own pool with "
        "max_connections= or pool=PoolOptions(...)"
    ),
    "socket_read_size": "reads are sized by the client itself: remove the option",
    "redis_connect_func": (
        "use credentials= (credentials per connection) or add_hook() (a hook on every dial)"
    ),
    "credential_provider": (
        "use credentials=: (username, password), a callable returning them, or an async "
        "iterable of them"
    ),
    "event_dispatcher": "use add_hook() (trio_cluster.hooks) to observe commands and dials",
    "maint_notifications_config": _MAINT,
    "oss_cluster_maint_notifications_handler": _MAINT,
    "driver_info": "use lib_name= and lib_version= (sent with CLIENT SETINFO)",
    "ssl_validate_ocsp": _OCSP,
    "ssl_validate_ocsp_stapled": _OCSP,
    "ssl_ocsp_context": _OCSP,
    "ssl_ocsp_expected_cert": _OCSP,
    "policy_resolver": f"{_ROUTING}; it cannot be replaced",
    "metadata_resolver": f"{_ROUTING}; it cannot be replaced",
    "auto_close_connection_pool": (
        "the client always closes its pool when its async with block ends (or at aclose())"
    ),
    "url": "use ClusterClient.from_url(url)",
}

#: The ``ssl_*`` options redis-py builds its TLS context from.
SSL_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
)

_CERT_REQS = {
    "none": ssl_module.CERT_NONE,
    "optional": ssl_module.CERT_OPTIONAL,
    "required": ssl_module.CERT_REQUIRED,
}

#: redis-py's load-balancing strategies -> where reads go here.
_STRATEGIES = {
    "round_robin": ReadFrom.ROUND_ROBIN,
    "round_robin_replicas": ReadFrom.ROUND_ROBIN_REPLICAS,
    "random": ReadFrom.RANDOM_NODE,
    "random_replica": ReadFrom.RANDOM,
}


@attrs.frozen
class RedisPyOptions:
    """What redis-py's options asked for, in this library's terms (None: nothing asked)."""

    pool: PoolOptions | None = None
    retry: RetryOptions | None = None
    read_from: ReadFrom | None = None
    cluster: dict[str, Any] = attrs.field(factory=dict)
    """Keywords for ``ClusterClient`` itself (``refresh_min_interval``)."""


def take_redis_py_options(
    owner: str,
    options: dict[str, Any],
    *,
    pool: PoolOptions | None,
    retry: RetryOptions | AbstractRetry[Any] | None,
    cluster: bool,
) -> RedisPyOptions:
    """Take redis-py's options out of a client's keywords (``options``, changed in place:
    what is left are connection options) and map them; ``pool`` and ``retry`` are the
    client's own arguments.  Refused or clashing options raise ``TypeError``, bad values
    ``ValueError``."""
    refused = sorted(name for name in options if name in REFUSED)
    if refused:
        name = refused[0]
        raise TypeError(f"{owner}() does not support redis-py's {name}=: {REFUSED[name]}")
    legacy = options.pop("legacy_responses", True)
    if legacy is not True:
        raise TypeError(
            f"{owner}() gives redis-py's default reply shapes (legacy_responses=True); "
            "for RESP3 shapes use protocol=3"
        )
    if options.pop("ssl", False):
        if "ssl_context" in options:
            raise TypeError(
                f"give {owner}() ssl=True (with ssl_* options) or ssl_context=, not both"
            )
        options["ssl_context"] = ssl_context_from(
            {name: options.pop(name) for name in SSL_OPTIONS if name in options}
        )
    else:
        for name in SSL_OPTIONS:  # as in redis-py: without ssl=True they are not used
            options.pop(name, None)
    mapped_pool = _pool(owner, options, pool, cluster)
    mapped_retry = _retry(owner, options, retry, cluster)
    read_from = _read_from(owner, options) if cluster else None
    extra = {}
    if cluster and "topology_refresh_min_interval" in options:
        interval = options.pop("topology_refresh_min_interval")
        if interval is not None:
            extra["refresh_min_interval"] = interval
    return RedisPyOptions(mapped_pool, mapped_retry, read_from, extra)


def _pool(
    owner: str, options: dict[str, Any], pool: PoolOptions | None, cluster: bool
) -> PoolOptions | None:
    size = options.pop("max_connections", None)
    single = False if cluster else options.pop("single_connection_client", False)
    if pool is not None and (size is not None or single):
        name = "max_connections" if size is not None else "single_connection_client"
        raise TypeError(f"give {owner}() {name} (redis-py's option) or pool=, not both")
    if single:
        if size is not None:
            raise TypeError(f"give {owner}() max_connections or single_connection_client, not both")
        return PoolOptions(size=1)
    if size is None:
        return pool
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"max_connections must be an integer >= 1; got {size!r}")
    return PoolOptions(size=size, max_active=size)


def _retry(
    owner: str,
    options: dict[str, Any],
    retry: RetryOptions | AbstractRetry[Any] | None,
    cluster: bool,
) -> RetryOptions | None:
    on_timeout = options.pop("retry_on_timeout", False)
    on_error = options.pop("retry_on_error", None) or ()
    attempts = options.pop("cluster_error_retry_attempts", None) if cluster else None
    _check_retried_errors(owner, on_error)
    if isinstance(retry, AbstractRetry):
        retries, backoff = retry_parts(retry)
        if retries < 0:
            raise ValueError(
                f"{owner}() cannot retry forever (a redis-py Retry with retries={retries}): "
                "give a count"
            )
        return RetryOptions(retries=retries, backoff_policy=backoff)
    if retry is not None:
        if not isinstance(retry, RetryOptions):
            raise TypeError(
                f"{owner}(retry=...) takes RetryOptions or a redis-py Retry; got {retry!r}"
            )
        return retry
    if attempts is not None:
        return RetryOptions(retries=attempts, transient_retries=attempts)
    if on_timeout or on_error:
        return RetryOptions()
    return None


def _check_retried_errors(owner: str, classes: Iterable[Any]) -> None:
    """retry_on_error may only name what this library's rules retry: connection errors and
    timeouts (on reads, or commands that provably were not sent)."""
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, rex.ConnectionError | rex.TimeoutError)):
            name = getattr(cls, "__name__", repr(cls))
            raise TypeError(
                f"{owner}(retry_on_error=...) cannot retry {name}: only connection errors and "
                "timeouts are retried (a read, or a command that was provably not sent); "
                "catch other errors and call again"
            )


def _read_from(owner: str, options: dict[str, Any]) -> ReadFrom | None:
    replicas = options.pop("read_from_replicas", False)
    strategy = options.pop("load_balancing_strategy", None)
    if strategy is not None:
        value = strategy.value if isinstance(strategy, LoadBalancingStrategy) else strategy
        if value not in _STRATEGIES:
            raise ValueError(
                f"load_balancing_strategy must be a redis.cluster.LoadBalancingStrategy; "
                f"got {strategy!r}"
            )
        return _STRATEGIES[value]
    return ReadFrom.ROUND_ROBIN if replicas else None


def ssl_context_from(options: dict[str, Any]) -> ssl_module.SSLContext:
    """The TLS context redis-py's ``SSLConnection`` builds from its ``ssl_*`` options:
    certificates verified (``ssl_cert_reqs``: "required", "optional", "none" or an
    ``ssl.VerifyMode``; ``None`` means "none", as in redis-py) and host names checked unless
    ``ssl_check_hostname=False`` or nothing is verified."""
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs is None:
        reqs = ssl_module.CERT_NONE
    elif isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ValueError(
                f"ssl_cert_reqs must be 'none', 'optional', 'required' or an ssl.VerifyMode; "
                f"got {reqs!r}"
            )
        reqs = _CERT_REQS[reqs.lower()]
    context = ssl_module.create_default_context()
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and (
        reqs != ssl_module.CERT_NONE
    )
    context.verify_mode = ssl_module.VerifyMode(reqs)
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if keyfile and not certfile:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
    if certfile:
        context.load_cert_chain(certfile, keyfile, options.get("ssl_password"))
    ca_certs, ca_path, ca_data = (
        options.get("ssl_ca_certs"),
        options.get("ssl_ca_path"),
        options.get("ssl_ca_data"),
    )
    if ca_certs or ca_path or ca_data:
        context.load_verify_locations(ca_certs, ca_path, ca_data)
    minimum = options.get("ssl_min_version")
    if minimum is not None:
        context.minimum_version = ssl_module.TLSVersion(minimum)
    ciphers = options.get("ssl_ciphers")
    if ciphers:
        context.set_ciphers(ciphers)
    return context
