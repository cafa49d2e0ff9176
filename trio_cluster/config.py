"""How to reach and greet one node: address, TLS, credentials, timeouts, handshake options.

Everything here is a frozen attrs class validated at construction, so a bad value fails where
it was written with a ``ValueError`` naming the field, never later inside a connection.
Secrets are kept out of ``repr()``.
"""

from __future__ import annotations

import math
import random
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from .version import __version__

__all__ = ["ConnectionConfig", "RetryOptions", "parse_url", "redact_url"]

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
    budget: float = 10.0
    """Seconds a command that provably never reached a server keeps being retried."""
    failover_wait: str = "auto"
    """What a command for a known-bad node's slots (its circuit breaker open) does:
    ``"auto"`` waits for a failover (within ``budget``) only when the node has a replica and
    the cluster itself sees the node failing, and otherwise fails at once with
    ``CircuitOpenError`` naming the node and why; ``"never"`` always fails at once;
    ``"always"`` always waits (the behaviour before isolation).  See
    ``docs/architecture.md``, "A sick node"."""

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
        for name in ("backoff_base", "backoff_cap", "budget"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0; got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based)."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


def parse_url(url: str) -> dict[str, Any]:
    """Turn a ``redis://``, ``rediss://`` or ``unix://`` URL into ConnectionConfig keywords.

    ``rediss://`` turns TLS on with ``ssl.create_default_context()`` (certificates and host
    names verified).  Query options: ``protocol``, ``client_name``, ``db``,
    ``connect_timeout``, ``read_timeout``, ``write_timeout``, and redis-py's
    ``socket_timeout``, ``socket_connect_timeout``, ``decode_responses``, ``encoding``,
    ``encoding_errors``.  Errors name the URL only in its
    redacted form.
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
            kwargs["ssl_context"] = ssl.create_default_context()
    for key, values in parse_qs(parts.query).items():
        value = values[-1]
        if key in ("connect_timeout", "read_timeout", "write_timeout"):
            kwargs[key] = float(value)
        elif key in ("protocol", "db"):
            kwargs[key] = int(value)
        elif key == "client_name":
            kwargs[key] = value
        elif key in ("socket_timeout", "socket_connect_timeout"):  # redis-py's names
            kwargs[key] = float(value)
        elif key in ("encoding", "encoding_errors"):
            kwargs[key] = value
        elif key == "decode_responses":
            kwargs[key] = _url_bool(key, value, shown)
        else:
            raise ValueError(f"unknown URL option {key!r} in {shown}")
    return kwargs


def _url_bool(key: str, value: str, shown: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"URL option {key} must be true or false in {shown}; got {value!r}")


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
