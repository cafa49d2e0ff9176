"""Typed exceptions.

Every exception a caller can see subclasses the matching class from ``redis.exceptions``, so code
written against redis-py (``except redis.exceptions.TimeoutError``) keeps working. Server error
replies are turned into these classes by :func:`error_from_reply`.
"""

from __future__ import annotations

import re

from redis import exceptions as rex

from .redispy import ERR_REPLY_CLASSES, RedisClusterUnreachableError

__all__ = [
    "ArgumentTypeError",
    "AskError",
    "AuthenticationError",
    "BusyError",
    "BusyLoadingError",
    "CertificateVerificationError",
    "ClientNotOpenError",
    "ClusterCrossSlotError",
    "ClusterDownError",
    "ClusterUnreachableError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "CrossSlotKeysError",
    "CrossSlotTransactionError",
    "ExecAbortError",
    "InvalidRedirectError",
    "InvalidTransition",
    "MasterDownError",
    "MovedError",
    "NoPermissionError",
    "NoScriptError",
    "OutOfMemoryError",
    "PoolClosedError",
    "PoolExhaustedError",
    "PoolTimeoutError",
    "ProtocolError",
    "ReadOnlyError",
    "ReadTimeoutError",
    "ReleaseError",
    "ReplyShapeError",
    "ReplyTooDeepError",
    "ReplyTooLargeError",
    "ResponseError",
    "ScriptTimeoutError",
    "TrioRequiredError",
    "TryAgainError",
    "UnknownCommandError",
    "UnsolicitedReplyError",
    "WriteTimeoutError",
    "error_from_reply",
]

ResponseError = rex.ResponseError


# --- client-side conditions -------------------------------------------------------------------


class ProtocolError(rex.InvalidResponse):
    """The byte stream from the server is not valid RESP; the connection is closed for good."""


class UnsolicitedReplyError(ProtocolError):
    """Bytes arrived that no command was owed (a reply with no caller, or bytes left after the
    last owed reply): no reply on that stream can be trusted, so the connection is closed."""


class ReplyTooLargeError(ProtocolError):
    """A reply declared or accumulated more than ``max_reply_bytes`` bytes, or would hold more
    than ``max_reply_elements`` elements (the message names which); the connection is
    closed."""


class ReplyTooDeepError(ProtocolError):
    """A reply nested aggregates or attributes deeper than ``max_reply_depth``; the connection
    is closed."""


class ReplyShapeError(ProtocolError):
    """A well-formed reply of an impossible shape (a map with an unhashable key, a push frame
    inside an aggregate); the connection is closed."""


class ArgumentTypeError(TypeError, rex.DataError):
    """A command argument of a type that cannot be sent (also a redis-py ``DataError``)."""

    def __init__(self, *args: object, status_code: str | None = None) -> None:
        # TypeError.__init__ comes first in the MRO and would skip redis-py's constructor,
        # leaving no ``error_type`` (which redis-py's ``__repr__`` reads).
        rex.DataError.__init__(self, *args, status_code=status_code)


class ConnectTimeoutError(rex.TimeoutError):
    """Opening a connection (TCP, TLS and handshake) took longer than the connect timeout."""


class ReadTimeoutError(rex.TimeoutError):
    """The server did not send a complete reply within the read timeout."""


class ScriptTimeoutError(ReadTimeoutError):
    """A script or function (EVAL, FCALL...) ran longer than the client's ``script_timeout``:
    the script's own length, not the node's health, so it does not count against the node's
    circuit breaker.  The server may still be running it (``SCRIPT KILL`` stops it)."""


class TrioRequiredError(RuntimeError):
    """A client was used outside ``trio.run`` (under asyncio, for instance): trio-cluster
    runs under trio only."""


class WriteTimeoutError(rex.TimeoutError):
    """The command's bytes could not be written within the write timeout."""


class PoolTimeoutError(rex.TimeoutError):
    """No connection became available within the pool's wait timeout."""


class PoolExhaustedError(rex.MaxConnectionsError):
    """The pool already has ``max_active`` connections out; the get fails at once."""


class PoolClosedError(rex.ConnectionError):
    """The pool (or the client owning it) is closed."""


class ClientNotOpenError(PoolClosedError):
    """A client was used outside its ``async with`` block (never entered, or already left)."""


class ConnectionClosedError(rex.ConnectionError):
    """The connection was closed (by us or the peer) and cannot carry a command."""


class CertificateVerificationError(rex.ConnectionError):
    """The server's TLS certificate failed verification (an issuer the ``ssl_context`` does not
    trust, an expired certificate, a host name it does not cover...). Not retried: another
    attempt fails the same way; trust the issuer or connect by a name the certificate covers."""


class InvalidTransition(RuntimeError):
    """A connection state change that the transition table does not allow."""

    def __init__(self, from_state: object, to_state: object) -> None:
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(
            f"invalid connection state transition {_name(from_state)} -> {_name(to_state)}"
        )

    def __reduce__(self) -> tuple[type[InvalidTransition], tuple[object, object]]:
        return (type(self), (self.from_state, self.to_state))


class ReleaseError(RuntimeError):
    """A connection was released twice, or released to a pool that never handed it out."""


def _name(state: object) -> str:
    return str(getattr(state, "name", state))


# --- server error replies ---------------------------------------------------------------------


class AuthenticationError(rex.AuthenticationError):
    """NOAUTH / WRONGPASS / invalid username-password pair."""


class NoPermissionError(rex.NoPermissionError):
    """NOPERM: the ACL user may not run this command or touch this key."""


class InvalidRedirectError(rex.ResponseError):
    """A MOVED or ASK error reply whose slot, host or port is unusable (slot outside
    0..16383, port outside 1..65535, an address that does not parse).  Routing is left as it
    was; the connection itself is fine."""


_SLOTS = 16384
# A host in a redirect: a name, an IPv4 address, or an IPv6 address (with an optional zone),
# or empty ("the node you asked").  Anything else (spaces, slashes, control bytes) is refused.
_HOST_RE = re.compile(r"[A-Za-z0-9_.:%-]{0,255}")


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


class _RedirectMixin:
    """Parses ``<slot> <host>:<port>`` (host may be IPv6, or empty meaning "the same host")."""

    slot: int
    slot_id: int
    host: str
    port: int
    node_addr: tuple[str, int]

    def _parse_target(self, rest: str) -> None:
        try:
            slot_text, addr = rest.split(" ", 1)
            host, _, port_text = addr.strip().rpartition(":")
            self.slot = self.slot_id = int(slot_text)
            self.host = host
            self.port = int(port_text)
        except ValueError:
            raise ValueError(f"malformed redirect error reply: {rest!r}") from None
        if not 0 <= self.slot < _SLOTS:
            raise ValueError(f"redirect to slot {self.slot}, outside 0..{_SLOTS - 1}: {rest!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"redirect to port {self.port}, outside 1..65535: {rest!r}")
        if not _HOST_RE.fullmatch(host) or not _digits(slot_text + port_text):
            raise ValueError(f"unparsable address in redirect error reply: {rest!r}")
        self.node_addr = (self.host, self.port)


class MovedError(_RedirectMixin, rex.MovedError):
    """MOVED: the slot now lives on another node; ``slot``, ``host``, ``port`` say where."""

    def __init__(self, resp: str) -> None:
        rex.ResponseError.__init__(self, resp)
        self.message = resp
        self._parse_target(resp)


class AskError(_RedirectMixin, rex.AskError):
    """ASK: this one command must go to the slot's importing node, preceded by ASKING."""

    def __init__(self, resp: str) -> None:
        rex.ResponseError.__init__(self, resp)
        self.message = resp
        self._parse_target(resp)


class TryAgainError(rex.TryAgainError):
    """TRYAGAIN: a multi-key command hit a slot that is being migrated; retry later."""


class ClusterDownError(rex.ClusterDownError):
    """CLUSTERDOWN: the cluster cannot serve this slot right now."""

    def __init__(self, resp: str) -> None:
        super().__init__(resp)


class MasterDownError(rex.MasterDownError):
    """MASTERDOWN: the replica lost its link with the primary."""

    def __init__(self, resp: str) -> None:
        super().__init__(resp)


class BusyLoadingError(rex.BusyLoadingError):
    """LOADING: the server is loading its dataset into memory."""


class ReadOnlyError(rex.ReadOnlyError):
    """READONLY: a write reached a replica."""


class BusyError(rex.ResponseError):
    """BUSY: the server is running a script or function that has not yielded."""


class NoScriptError(rex.NoScriptError):
    """NOSCRIPT: EVALSHA named a script the server does not have."""


class ExecAbortError(rex.ExecAbortError):
    """EXECABORT: a transaction was discarded because a queued command was rejected."""


class OutOfMemoryError(rex.OutOfMemoryError):
    """OOM: the server is over maxmemory and the command would use more."""


class ClusterCrossSlotError(rex.ClusterCrossSlotError):
    """CROSSSLOT: the keys of one command hash to different slots."""


class UnknownCommandError(rex.ResponseError):
    """The server does not know the command (older server or renamed command)."""


# --- refusals of the cluster client (redis-py's ``RedisClusterException`` family) -------------
# Each also keeps the class this library raised before, so both ``except`` clauses match.


class CrossSlotTransactionError(rex.CrossSlotTransactionError, ClusterCrossSlotError):
    """A cluster transaction (or WATCH) whose keys span slots; refused before anything is
    sent, as redis-py's ``CrossSlotTransactionError``."""


class CrossSlotKeysError(rex.RedisClusterException, ClusterCrossSlotError):
    """A command whose keys span slots and cannot be split (RENAME, SINTER...); refused
    before anything is sent, as redis-py's ``RedisClusterException``."""


class ClusterUnreachableError(RedisClusterUnreachableError, rex.ConnectionError):
    """No startup or known node could give the cluster's topology (redis-py's
    ``RedisClusterUnreachableError`` from redis-py 8.2 on, ``RedisClusterException`` before;
    also a ``ConnectionError``); the message names each cause."""


# Error code (first word of the reply) -> exception class.  The classes that parse their
# message take the text after the code; the others keep the whole message, as redis-py does.
_BY_CODE: dict[str, type[Exception]] = {
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "MASTERDOWN": MasterDownError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "BUSY": BusyError,
    "NOSCRIPT": NoScriptError,
    "EXECABORT": ExecAbortError,
    "OOM": OutOfMemoryError,
    "CROSSSLOT": ClusterCrossSlotError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
}
_REDIRECTS = (MovedError, AskError)


# ``ERR`` replies that redis-py raises as a more precise class (the text after ``ERR``): its
# parser's table, with this library's subclass where it has one.
_ERR_EXACT: dict[str, type[Exception]] = {
    text: AuthenticationError if cls is rex.AuthenticationError else cls
    for text, cls in ERR_REPLY_CLASSES.items()
}


#: What redis-py 8.2 takes for an error code (its ``status_code``): the reply's first word.
_STATUS_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def error_from_reply(message: str) -> Exception:
    """Turn the text of a RESP error reply into the matching typed exception.

    Returns (does not raise) the exception: replies inside arrays (EXEC, pipelines) carry
    errors as values, and the caller decides when to raise.  As redis-py does, ``str()`` of
    an ``ERR`` reply's exception leaves the ``ERR `` prefix out, and ``status_code`` is the
    reply's first word when it looks like a code (``"NOSCRIPT"``, ``"ERR"``...), else None;
    OpenTelemetry's ``db.response.status_code`` reads it.
    """
    code, _, rest = message.partition(" ")
    error = _typed_error(message, code, rest)
    error.status_code = code if _STATUS_CODE.fullmatch(code) else None  # type: ignore[attr-defined]
    return error


def _typed_error(message: str, code: str, rest: str) -> Exception:
    cls = _BY_CODE.get(code)
    if cls is None:
        if code == "ERR":
            if rest.startswith("unknown command"):
                return UnknownCommandError(rest)
            if "invalid username-password pair" in rest:
                return AuthenticationError(rest)
            return _ERR_EXACT.get(rest, ResponseError)(rest)
        return ResponseError(message)
    if cls in _REDIRECTS:
        try:
            return cls(rest)
        except ValueError as exc:
            return InvalidRedirectError(f"{message} ({exc})")
    return cls(message)


# --- classification: one place for the rules every node call applies ------------------------

#: Error replies saying the server did not run the command: a retry is safe for any command.
SERVER_DID_NOT_RUN = (TryAgainError, ClusterDownError, MasterDownError, BusyLoadingError)

#: Failures of the link to a node or of the wait for it (ours subclass these redis-py classes).
NETWORK_ERRORS = (rex.ConnectionError, rex.TimeoutError)


def node_failed(error: BaseException) -> bool:
    """Whether ``error``, raised by a call to a node, says the node is unhealthy (and counts
    against its circuit breaker): a network failure, but not a loading server (it answered)
    nor a busy pool (that says nothing about the node)."""
    return isinstance(error, NETWORK_ERRORS) and not isinstance(
        error, BusyLoadingError | PoolTimeoutError | PoolExhaustedError
    )
