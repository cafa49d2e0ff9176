"""How to reach and greet one node: address, TLS, credentials, timeouts, handshake options.

Everything here is a frozen attrs class validated at construction, so a bad value fails where
it was written with a ``ValueError`` naming the field, never later inside a connection.
Secrets are kept out of ``repr()``.
"""

from __future__ import annotations

import math
import random
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from .version import __version__

__all__ = ["URL_OPTIONS", "ConnectionConfig", "RetryOptions", "parse_url", "redact_url"]

LIB_NAME = "trio-cluster"


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"{attribute.name} must be a finite number of seconds > 0, or None; got {value!r}"
        )


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"{attribute.name} must be a finite number of seconds >= 0 (0: off); got {value!r}"
        )


def _tcp_option(*names: str) -> int | None:
    return next((getattr(socket, n) for n in names if hasattr(socket, n)), None)


#: redis-py's default TCP keepalive settings, on the platforms that have each option.
DEFAULT_KEEPALIVE_OPTIONS = {
    option: setting
    for option, setting in (
        (_tcp_option("TCP_KEEPIDLE", "TCP_KEEPALIVE"), 30),
        (_tcp_option("TCP_KEEPINTVL"), 5),
        (_tcp_option("TCP_KEEPCNT"), 3),
    )
    if option is not None
}


def _keepalive_options(value: object) -> tuple[tuple[int, int], ...]:
    """redis-py's mapping of TCP keepalive options, as sorted (option, value) pairs."""
    if value is None or value == ():
        return ()
    pairs: Any = value.items() if isinstance(value, Mapping) else value
    try:
        checked = [(int(option), int(setting)) for option, setting in pairs]
    except (TypeError, ValueError):
        raise ValueError(
            "socket_keepalive_options must map socket option numbers (socket.TCP_KEEPIDLE, "
            f"TCP_KEEPINTVL, TCP_KEEPCNT) to integers; got {value!r}"
        ) from None
    return tuple(sorted(checked))


def _protocol(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in (2, 3):
        raise ValueError(f"{attribute.name} must be 2 or 3; got {value!r}")


def _port(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be an integer in 1..65535; got {value!r}")


MAINT_MODES = ("disabled", "auto", "enabled")
ENDPOINT_TYPES = ("internal-ip", "internal-fqdn", "external-ip", "external-fqdn", "none")


def _maint_mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in MAINT_MODES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(MAINT_MODES)}; got {value!r}")


def _endpoint_type(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ENDPOINT_TYPES:
        raise ValueError(
            f"{attribute.name} must be one of {', '.join(ENDPOINT_TYPES)}; got {value!r}"
        )


def _db(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0; got {value!r}")


#: Default bound on one reply: 512 MiB, as Redis's own ``proto-max-bulk-len``.
DEFAULT_MAX_REPLY_BYTES = 512 * 1024 * 1024
#: Smallest ``max_reply_bytes`` accepted (the bound is checked once per socket read).
MIN_MAX_REPLY_BYTES = 1024 * 1024
#: Default bound on what one reply may hold, in elements (see ``max_reply_elements``): about
#: 60 MiB of Python objects at most, yet room for an ``LRANGE`` of a million.  What the worst
#: shapes cost in memory and event-loop stalls: benchmarks/README.md, issue 27.
DEFAULT_MAX_REPLY_ELEMENTS = 1024 * 1024
#: Smallest ``max_reply_elements`` accepted: the client's own replies (``COMMAND``, the cluster
#: map of a large cluster) must fit.
MIN_MAX_REPLY_ELEMENTS = 64 * 1024
#: Default and largest nesting depth of a reply (hiredis itself stops at 1024 levels).
DEFAULT_MAX_REPLY_DEPTH = 64
MAX_MAX_REPLY_DEPTH = 1000
#: Default ``read_spin``: four more scheduler passes before a read sleeps.
DEFAULT_READ_SPIN = 4


def _int_in(low: int, high: float) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be an integer in {low}..{high}; got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class ConnectionConfig:
    """Everything one connection needs to open and greet a node.

    ``password`` never appears in ``repr()``.  ``ssl_context`` enables TLS: certificates and
    host names are verified exactly as the context says (``ssl.create_default_context()``
    verifies both).  ``unix_socket_path`` replaces host and port.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=6379, validator=_port)
    unix_socket_path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    client_name: str | None = None
    db: int = attrs.field(default=0, validator=_db)
    protocol: int = attrs.field(default=3, validator=_protocol)
    connect_timeout: float | None = attrs.field(default=5.0, validator=_positive_or_none)
    """Bounds a whole dial (TCP, TLS, handshake); redis-py's ``socket_connect_timeout`` and
    its default, 5 s."""
    read_timeout: float | None = attrs.field(default=5.0, validator=_positive_or_none)
    """Bounds the wait for a reply; redis-py's ``socket_timeout`` and its default, 5 s
    (``None``: no bound, and a hung node then holds its callers forever).  A blocking
    command waits its own timeout on top (none for a timeout of 0, "forever"), and a script
    or function ``script_timeout`` instead."""
    write_timeout: float | None = attrs.field(default=5.0, validator=_positive_or_none)
    """Bounds sending a command; redis-py's ``socket_timeout`` bounds writes too."""
    script_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    """Bounds the wait for the reply of a script or function (``EVAL``, ``EVALSHA``,
    ``EVAL_RO``, ``EVALSHA_RO``, ``FCALL``, ``FCALL_RO``) in place of ``read_timeout``:
    ``None`` (the default), no bound: a script runs as long as its code does, which says
    nothing about the node's health.  Past it the call raises
    :class:`~trio_cluster.errors.ScriptTimeoutError`, which does not count against the
    node's circuit breaker; the server may still be running the script (``SCRIPT KILL``).
    Only bounded when ``read_timeout`` is."""
    health_check_interval: float = attrs.field(default=0, validator=_non_negative)
    """redis-py's: a pooled connection idle longer than this many seconds is checked with a
    ``PING`` before its next command (a dead one is replaced); 0 (the default, as redis-py's)
    checks none that way (every hand-out still notices a connection the server closed)."""
    socket_keepalive: bool = True
    """TCP keepalive (``SO_KEEPALIVE``) on TCP connections; on by default, as redis-py's."""
    socket_keepalive_options: tuple[tuple[int, int], ...] = attrs.field(
        factory=lambda: _keepalive_options(DEFAULT_KEEPALIVE_OPTIONS), converter=_keepalive_options
    )
    """TCP keepalive settings, as redis-py's ``{socket.TCP_KEEPIDLE: 30, ...}`` (options of
    ``IPPROTO_TCP``), applied when ``socket_keepalive`` is on; kept as sorted pairs.  By
    default redis-py's: idle 30 s, then 3 probes 5 s apart (a silent peer is noticed after
    about 45 s); ``{}`` leaves the system's."""
    readonly: bool = False
    maint_notifications: str = attrs.field(default="disabled", validator=_maint_mode)
    """Ask for maintenance push notifications (RESP3 only): "disabled", "auto" (an error
    reply is accepted quietly and the connection carries on) or "enabled" (it fails)."""
    moving_endpoint_type: str = attrs.field(default="internal-ip", validator=_endpoint_type)
    """What kind of address MOVING notifications should carry."""
    max_reply_bytes: int = attrs.field(
        default=DEFAULT_MAX_REPLY_BYTES, validator=_int_in(MIN_MAX_REPLY_BYTES, 2**62)
    )
    """Most bytes one reply may declare or accumulate; past it the connection is closed with
    :class:`~trio_cluster.errors.ReplyTooLargeError`.  At least 1 MiB."""
    max_reply_elements: int = attrs.field(
        default=DEFAULT_MAX_REPLY_ELEMENTS, validator=_int_in(MIN_MAX_REPLY_ELEMENTS, 2**62)
    )
    """Most elements one reply may hold, counted at every depth: a string, number, null or
    boolean (each key and each value of a map) counts 1, an array, map, set or push frame 3 (a
    container costs about three times as much to build, garbage-collect and free).  An
    aggregate's declared elements count as soon as its header arrives.  Past it the connection
    is closed with :class:`~trio_cluster.errors.ReplyTooLargeError`.  At least 65,536."""
    max_reply_depth: int = attrs.field(
        default=DEFAULT_MAX_REPLY_DEPTH, validator=_int_in(1, MAX_MAX_REPLY_DEPTH)
    )
    """Deepest nesting of aggregates and attributes one reply may use; past it the connection
    is closed with :class:`~trio_cluster.errors.ReplyTooDeepError`."""
    read_spin: int = attrs.field(default=DEFAULT_READ_SPIN, validator=_int_in(0, 64))
    """When a command's reply is not there yet, how many more times the read lets the other
    tasks run and tries again before it sleeps until the socket is readable (0: sleep at
    once).  A sleep and the wake-up that follows cost more than the reply takes to come from
    a nearby server; a connection whose replies keep coming later than that stops trying
    (see ``ReplyStream._receive``)."""
    lib_name: str = LIB_NAME
    lib_version: str = attrs.field(default=__version__)

    @property
    def address(self) -> str:
        """A printable address (``host:port`` or the socket path), with no credentials."""
        if self.unix_socket_path is not None:
            return f"unix:{self.unix_socket_path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


#: The values of ``RetryOptions.failover_wait``.
FAILOVER_WAITS = ("auto", "always", "never")


@attrs.frozen(kw_only=True)
class RetryOptions:
    """How hard a cluster client tries before an error reaches the caller (the rules are
    ``routing.policy``'s: one policy for single commands, split commands, pipelines and
    transactions)."""

    max_redirects: int = 5
    """MOVED/ASK followed per command."""
    retries: int = 3
    """Retries of a read whose outcome is unknown (a timeout or a dropped connection)."""
    transient_retries: int = 30
    """Retries of replies saying the server did not run the command (TRYAGAIN, CLUSTERDOWN,
    MASTERDOWN, LOADING), within ``budget``."""
    backoff_base: float = 0.025
    """First backoff (seconds); doubles each retry, with full jitter."""
    backoff_cap: float = 0.5
    """Longest single backoff."""
    backoff_policy: Any = None
    """A redis-py backoff object (``redis.backoff``: anything with ``compute(failures)``), for
    instance the one of a redis-py ``Retry`` given as ``retry=``: it replaces
    ``backoff_base``/``backoff_cap``."""
    budget: float = 10.0
    """Seconds a command that provably never reached a server keeps being retried."""
    failover_wait: str = "auto"
    """What a command for a known-bad node's slots (its circuit breaker open) does:
    ``"auto"`` waits for a failover (within ``budget``) only when the node has a replica,
    the cluster itself sees the node failing and expects to promote the replica within
    ``failover_wait_max`` seconds, and otherwise fails at once with ``CircuitOpenError``
    naming the node and why; ``"never"`` always fails at once; ``"always"`` always waits
    (the behaviour before isolation).  See ``docs/architecture.md``, "A sick node"."""
    failover_wait_max: float = 2.0
    """Under ``failover_wait="auto"``: how soon (seconds) the cluster must expect to promote
    a replica for a command to wait for it (its node timeout since the node went silent,
    plus about a second of election); a failover further off, or overdue by more than
    this, is not waited for."""

    def __attrs_post_init__(self) -> None:
        if self.failover_wait not in FAILOVER_WAITS:
            raise ValueError(
                f"failover_wait must be one of {', '.join(FAILOVER_WAITS)}; "
                f"got {self.failover_wait!r}"
            )
        for name in ("max_redirects", "retries", "transient_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        for name in ("backoff_base", "backoff_cap", "budget", "failover_wait_max"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0; got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based), or what
        ``backoff_policy`` computes for it."""
        if self.backoff_policy is not None:
            return float(self.backoff_policy.compute(attempt + 1))
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


def parse_url(url: str) -> dict[str, Any]:
    """Turn a ``redis://``, ``rediss://`` or ``unix://`` URL into a client's keywords.

    ``rediss://`` turns TLS on (``ssl=True``: certificates and host names verified unless
    the ``ssl_*`` query options say otherwise, as in redis-py).  Query options: this
    library's (``read_timeout``, ``write_timeout``, ``connect_timeout``, ``script_timeout``)
    and redis-py's (:data:`URL_OPTIONS`: ``max_connections``, ``health_check_interval``,
    ``socket_timeout``, ``retry_on_timeout``, ``client_name``, ``ssl_cert_reqs``, ...),
    each converted as redis-py's ``from_url`` converts it; an unknown one raises
    ``ValueError``.  Errors name the URL only in its redacted form.
    """
    parts = urlsplit(url)
    shown = redact_url(url)
    kwargs: dict[str, Any] = {}
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if any(c in userinfo for c in "#?/"):
        raise ValueError(
            f"bad credentials in {shown}: percent-encode '#', '?' and '/' in a user name or"
            " password (urllib.parse.quote(password, safe=''))"
        )
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported URL scheme in {shown}: use redis://, rediss:// or unix://")
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    elif parts.username and parts.scheme != "unix":
        # redis://secret@host: a lone user-info field is the password (as redis-py reads it).
        kwargs["password"] = kwargs.pop("username")
    if parts.scheme == "unix":
        kwargs["unix_socket_path"] = unquote(parts.path)
    else:
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {shown}") from None
        if parts.hostname:
            kwargs["host"] = parts.hostname
        if port is not None:
            kwargs["port"] = port
        path = parts.path.lstrip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"bad database number in {shown}")
            kwargs["db"] = int(path)
        if parts.scheme == "rediss":
            kwargs["ssl"] = True
    for key, values in parse_qs(parts.query).items():
        convert = URL_OPTIONS.get(key)
        if convert is None:
            raise ValueError(
                f"unknown URL option {key!r} in {shown}; known: {', '.join(sorted(URL_OPTIONS))}"
            )
        try:
            kwargs[key] = convert(values[-1])
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad value for URL option {key} in {shown}: {error}") from None
    return kwargs


def _url_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"must be true or false; got {value!r}")


def _url_errors(value: str) -> list[type[Exception]]:
    """redis-py's ``retry_on_error``: names of ``redis.exceptions`` classes, comma-separated."""
    from redis import exceptions

    classes = []
    for name in filter(None, (n.strip() for n in value.split(","))):
        cls = getattr(exceptions, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise ValueError(f"{name!r} is not a redis.exceptions class")
        classes.append(cls)
    return classes


#: Query options a URL may carry -> how the text is converted (redis-py's converters for its
#: names; numbers that redis-py reads as ``int`` are read as numbers of either kind).
URL_OPTIONS: dict[str, Any] = {
    "db": int,
    "protocol": int,
    "client_name": str,
    "connect_timeout": float,
    "read_timeout": float,
    "write_timeout": float,
    "script_timeout": float,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": _url_bool,
    "socket_read_size": int,
    "retry_on_timeout": _url_bool,
    "retry_on_error": _url_errors,
    "max_connections": int,
    "single_connection_client": _url_bool,
    "health_check_interval": float,
    "decode_responses": _url_bool,
    "encoding": str,
    "encoding_errors": str,
    "legacy_responses": _url_bool,
    "ssl_cert_reqs": str,
    "ssl_check_hostname": _url_bool,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_ciphers": str,
    "ssl_min_version": int,
    "read_from_replicas": _url_bool,
    "require_full_coverage": _url_bool,
    "reinitialize_steps": int,
    "dynamic_startup_nodes": _url_bool,
    "cluster_error_retry_attempts": int,
}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log or put in an error).

    Works on the raw text, not on a parse: a password holding an unencoded ``#``, ``?``, ``/``
    or ``@`` confuses URL parsing (the rest reads as a fragment, query or path), so everything
    between ``scheme://`` and the last ``@`` is treated as user-info.  Over-redacting an odd
    URL is fine; echoing a password is not.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, tail = rest.rpartition("@")
    if not at:
        return url
    if ":" in userinfo:
        user = userinfo.partition(":")[0]
        shown = f"{user}:***"
    else:
        shown = "***"  # redis://secret@host: a lone field is the password
    return f"{scheme}{sep}{shown}@{tail}"


def take_redis_py_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    """Turn redis-py's ``socket_timeout`` / ``socket_connect_timeout`` in a client's keywords
    into this library's timeouts, in place, and return ``options``.

    As in redis-py, ``socket_timeout`` bounds each read and write (``read_timeout`` and
    ``write_timeout``; ``None`` means no bound) and also connecting unless
    ``socket_connect_timeout`` is given, which bounds connecting (``connect_timeout``).
    Giving one of redis-py's names together with the option it maps to is refused.
    """
    mapped = {
        "socket_timeout": ("read_timeout", "write_timeout"),
        "socket_connect_timeout": ("connect_timeout",),
    }
    for name, targets in mapped.items():
        if name not in options:
            continue
        clash = [t for t in targets if t in options]
        if clash:
            raise ValueError(f"give {name} (redis-py's name) or {', '.join(clash)}, not both")
        value = options.pop(name)
        for target in targets:
            options[target] = value
        if name == "socket_timeout" and "socket_connect_timeout" not in options:
            options.setdefault("connect_timeout", value)
    return options


#: redis-py's reply/argument encoding options, which clients take beside ConnectionConfig's.
ENCODING_OPTIONS = ("encoding", "encoding_errors", "decode_responses")


def connection_options(owner: str, options: dict[str, Any]) -> dict[str, Any]:
    """A client's connection keywords, checked: redis-py's timeout names mapped
    (:func:`take_redis_py_timeouts`), and anything unknown refused with a ``TypeError`` that
    names the client (``owner``), not an internal class."""
    options = take_redis_py_timeouts(dict(options))
    known = attrs.fields_dict(ConnectionConfig)
    unknown = sorted(n for n in options if n not in known and n not in ENCODING_OPTIONS)
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword argument(s): {', '.join(unknown)}")
    return options
