"""The machinery of the differential suite: a table of calls, each run through redis-py 8 (the
reference, its synchronous client in a worker thread) and through trio-cluster on the same
server, from the same starting state, and their outcomes compared.

A case names a call (``Call("hset", K.h, mapping={...})``), what to set up first, and how to
compare.  ``K.name`` stands for a key of the case's own (one hash tag per case, so multi-key
commands stay in one slot on a cluster); the harness deletes the case's keys before each run.
An outcome is a value or an exception; two outcomes agree when the values are equal with the
same types all the way down, or trio-cluster's exception is an instance of redis-py's class
(the same ``except`` clause catches both).

A case that differs on purpose names its reason (a key of ``DIFFERENCES``, each listed in the
README's "Differences from redis-py"): the suite then checks that it *does* differ, so a
difference that disappears is noticed too.  Where redis-py itself changed between releases,
``redispy_versions.py`` says so as data; what no line there explains is reported as drift
(``Drift``), one short line per row.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
from packaging.version import Version

from .redispy_versions import REDIS_PY, change_for, message_rule_holds

#: Deliberate differences: reason key -> what differs and why (mirrored in README.md).
DIFFERENCES: dict[str, str] = {
    "whole-keyspace": (
        "keys(), dbsize() and randomkey-free scans on a ClusterClient cover every primary; "
        "redis-py's RedisCluster asks its default node only (a third of the keyspace)"
    ),
    "split-multikey": (
        "cross-slot MGET/MSET/DEL/EXISTS/UNLINK/TOUCH on a ClusterClient are split per slot "
        "(not atomic); redis-py's RedisCluster refuses MGET/MSET across slots"
    ),
    "keyless-default-node": (
        "a keyless command with no routing rule in redis-py's table (ECHO, LOLWUT, an unknown "
        "command) goes to the ClusterClient's default node; redis-py's RedisCluster raises "
        "RedisClusterException('No way to dispatch this command')"
    ),
    "cluster-pipeline-keyless": (
        "a ClusterClient pipeline runs keyless commands (CONFIG GET...) on the default node; "
        "redis-py's cluster pipeline refuses them (RedisClusterException)"
    ),
    "cluster-transaction-callbacks": (
        "a ClusterClient transaction parses replies as every other pipeline does (SET gives "
        "True); redis-py's cluster transaction returns them raw (b'OK'), unlike its own "
        "standalone transactions"
    ),
    "cluster-watch": (
        "a ClusterClient pipeline accepts WATCH (keys of one slot) whether or not it was "
        "created with transaction=True; redis-py's cluster pipeline refuses WATCH on a "
        "non-transactional pipeline (RedisClusterException)"
    ),
    "pubsub-ping-decoded": (
        "PubSub.ping() with decode_responses gives the decoded pong message; redis-py before "
        "8.2's handle_message indexes the decoded answer (a str) as a list: IndexError, or "
        "{'type': 'P', 'channel': 'O', 'data': 'N'} for a bare PONG"
    ),
    "pipeline-discard": (
        "Pipeline.discard() forgets the queue and ends WATCH on the client side; redis-py "
        "queues a DISCARD that then breaks the pipeline's EXEC"
    ),
}

#: Deliberate differences in the message of an error of the right class: reason key -> what
#: differs and why (mirrored in README.md).  :func:`message_difference` recognises them.
MESSAGE_DIFFERENCES: dict[str, str] = {
    "data-error-message": (
        "a value redis-py cannot send (None...) raises DataError with the words of redis-py's "
        "own encoder, naming the type and the argument; redis-py before 8.2 with hiredis "
        "installed says 'A tuple item must be str, int, float or bytes.' (hiredis' packer)"
    ),
    "data-error-argument": (
        "a value redis-py cannot send raises DataError with redis-py 8.2's words, followed by "
        "the argument's position and command, which redis-py does not name"
    ),
    "unknown-command-message": (
        "a command the cluster's servers do not know reaches a node, whose answer names the "
        "command and its first arguments (UnknownCommandError, a RedisError); redis-py's "
        "RedisCluster refuses it first with RedisError('X command doesn't exist in Redis "
        "commands')"
    ),
    "client-class-name": (
        "AttributeError for a method neither client has names our class (Client, "
        "ClusterClient) instead of redis-py's (Redis, RedisCluster)"
    ),
    "error-code-kept": (
        "str() of an error reply keeps its code other than ERR (NOSCRIPT..., as the server "
        "sent it: the client's handshake and users' log searches read it); redis-py drops "
        "every code it knows"
    ),
}

#: Whether an error of the right class with another message fails the suite (a row that
#: differs on purpose, or a message difference listed above, is exempt).
STRICT_MESSAGES = True


def message_difference(
    reference: BaseException, ours: BaseException, installed: Version = REDIS_PY
) -> str | None:
    """The key of MESSAGE_DIFFERENCES that explains why the two messages differ, if any (a
    rule that holds only for some redis-py releases is tried only on those)."""
    theirs, mine = str(reference), str(ours)
    if (
        message_rule_holds("data-error-message", installed)
        and theirs == "A tuple item must be str, int, float or bytes."
        and mine.startswith("Invalid input of type: ")
    ):
        return "data-error-message"
    if (
        message_rule_holds("data-error-argument", installed)
        and theirs.startswith("Invalid input of type: ")
        and mine.startswith(f"{theirs} (command argument ")
    ):
        return "data-error-argument"
    if theirs.endswith(" command doesn't exist in Redis commands") and mine.startswith(
        "unknown command "
    ):
        return "unknown-command-message"
    if isinstance(reference, AttributeError) and (
        theirs.partition(" object ")[2] == mine.partition(" object ")[2] != ""
    ):
        return "client-class-name"
    code = getattr(reference, "status_code", None)
    if code not in (None, "ERR") and mine == f"{code} {theirs}":
        return "error-code-kept"
    return None


Outcome = tuple[str, Any]  # ("ok", value) or ("error", exception)


class Key:
    """A key of the case (see ``K``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"K.{self.name}"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.name))


class Spread(Key):
    """A key of the case without a hash tag (``diff-<case>-<name>``): different names land
    in different slots, so a few of them cover every shard of a cluster."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Spread({self.name!r})"


class SpreadPattern:
    """A glob pattern over the case's ``Spread`` keys: ``diff-<case>-<glob>``."""

    __slots__ = ("glob",)

    def __init__(self, glob: str) -> None:
        self.glob = glob

    def __repr__(self) -> str:
        return f"SpreadPattern({self.glob!r})"


class _Keys:
    def __getattr__(self, name: str) -> Key:
        return Key(name)


#: ``K.a``, ``K.h``...: keys of the case, resolved to ``{diff:<case>}:<name>``.
K = _Keys()


@dataclass(frozen=True)
class Call:
    """One command method call: ``Call("set", K.a, "v", nx=True)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __init__(self, method: str, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.method}({', '.join(parts)})"


@dataclass(frozen=True)
class Pipe:
    """A pipeline (``transaction=True``: MULTI/EXEC) of queued calls, then ``execute()``."""

    calls: tuple[Call, ...]
    transaction: bool = False
    raise_on_error: bool = True

    def __repr__(self) -> str:
        kind = "transaction" if self.transaction else "pipeline"
        errors = "" if self.raise_on_error else " (errors as values)"
        return f"{kind}[{', '.join(map(repr, self.calls))}]{errors}"


@dataclass(frozen=True)
class Scenario:
    """A call too rich for a table row: the same steps written for each client."""

    name: str
    reference: Callable[[Any, Callable[[Any], Any]], Any]
    """``reference(sync_redis_py_client, resolve)`` (runs in a worker thread)."""
    ours: Callable[[Any, Callable[[Any], Any]], Awaitable[Any]]
    """``await ours(trio_cluster_client, resolve)``."""
    keys: tuple[str, ...] = ("a", "b", "lock")
    """The ``K`` names the steps use (deleted before each run)."""

    def __repr__(self) -> str:
        return self.name


Action = Call | Pipe | Scenario


@dataclass(frozen=True)
class Case:
    """One compared call."""

    family: str
    action: Action
    setup: tuple[Call, ...] = ()
    compare: Callable[[Any], Any] | None = None
    """Applied to both values before comparing (for replies that vary by nature)."""
    targets: frozenset[str] = frozenset({"standalone", "auth", "cluster"})
    differs: dict[str, str] = field(default_factory=dict)
    """target -> reason key of DIFFERENCES, where the outcomes differ on purpose."""

    @property
    def name(self) -> str:
        return f"{self.family}:{self.action!r}"


def runs_on(case: Case, target: str, kind: str) -> bool:
    """Whether the case runs on ``target``, a server of ``kind`` ("standalone", "auth" or
    "cluster"): rows name either the target itself or its kind."""
    return target in case.targets or kind in case.targets


def difference(case: Case, target: str, kind: str) -> str | None:
    """The reason the case differs on ``target`` on purpose, if any (by target, else kind)."""
    return case.differs.get(target) or case.differs.get(kind)


def resolver(tag: str) -> Callable[[Any], Any]:
    """Replace every ``Key`` inside a value (lists, tuples, dicts, keys of dicts)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, Spread):
            return f"diff-{tag}-{value.name}"
        if isinstance(value, SpreadPattern):
            return f"diff-{tag}-{value.glob}"
        if isinstance(value, Key):
            return f"{{diff:{tag}}}:{value.name}"
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        if isinstance(value, dict):
            return {resolve(k): resolve(v) for k, v in value.items()}
        return value

    return resolve


def keys_of(case: Case) -> list[Key]:
    """Every key the case names (so the harness can delete them before a run)."""
    found: set[Key] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Key):
            found.add(value)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, Call):
            walk(value.args)
            walk(value.kwargs)
        elif isinstance(value, Pipe):
            walk(value.calls)
        elif isinstance(value, Scenario):
            found.update(Key(name) for name in value.keys)

    walk(case.setup)
    walk(case.action)
    return list(found)


def same(a: Any, b: Any) -> bool:
    """Equal values with the same types all the way down (floats: NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, set | frozenset):
        return bool(a == b)
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, BaseException):
        return True  # the same class is enough (messages are compared elsewhere)
    return bool(a == b)


def shape(value: Any) -> Any:
    """The structure of a value with its leaves replaced by their types (for replies that
    hold clocks, ids, addresses...)."""
    if isinstance(value, list | tuple):
        return type(value)(shape(v) for v in value)
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


def dict_keys(value: Any) -> Any:
    """Only the keys of a dict reply (and their order-free set), for INFO-like replies."""
    return sorted(map(str, value)) if isinstance(value, dict) else value


def outcome_text(outcome: Outcome) -> str:
    kind, value = outcome
    if kind == "error":
        code = getattr(value, "status_code", None)
        shown = f" (status_code {code!r})" if code is not None else ""
        return f"{type(value).__module__}.{type(value).__name__}{shown}: {value}"
    return f"{type(value).__name__} {value!r}"[:400]


# --- running ---------------------------------------------------------------------------------


def run_reference(client: Any, action: Action, resolve: Callable[[Any], Any]) -> Outcome:
    """Run ``action`` through redis-py's synchronous client (call in a worker thread)."""
    try:
        if isinstance(action, Call):
            method = getattr(client, action.method)
            return "ok", method(*resolve(action.args), **resolve(action.kwargs))
        if isinstance(action, Pipe):
            pipe = client.pipeline(transaction=action.transaction)
            try:
                for call in action.calls:
                    getattr(pipe, call.method)(*resolve(call.args), **resolve(call.kwargs))
                return "ok", pipe.execute(raise_on_error=action.raise_on_error)
            finally:
                pipe.reset()
        return "ok", action.reference(client, resolve)
    except Exception as error:
        return "error", error


async def run_ours(client: Any, action: Action, resolve: Callable[[Any], Any]) -> Outcome:
    """Run ``action`` through trio-cluster."""
    try:
        if isinstance(action, Call):
            method = getattr(client, action.method)
            result = method(*resolve(action.args), **resolve(action.kwargs))
            if isinstance(result, Awaitable):
                result = await result
            return "ok", result
        if isinstance(action, Pipe):
            async with client.pipeline(transaction=action.transaction) as pipe:
                for call in action.calls:
                    getattr(pipe, call.method)(*resolve(call.args), **resolve(call.kwargs))
                return "ok", await pipe.execute(raise_on_error=action.raise_on_error)
        return "ok", await action.ours(client, resolve)
    except Exception as error:
        return "error", error


def agree(case: Case, reference: Outcome, ours: Outcome) -> bool:
    """Whether two outcomes agree (same kind, same class or same typed value)."""
    if reference[0] != ours[0]:
        return False
    if reference[0] == "error":
        # A subclass is caught by the same ``except`` clause (e.g. ArgumentTypeError is a
        # DataError that is also a TypeError).  redis-py 8.2 on gives an error reply's code
        # as ``status_code`` (what code reads, and what OpenTelemetry reports).
        return isinstance(ours[1], type(reference[1])) and (
            getattr(reference[1], "status_code", None) is None
            or getattr(ours[1], "status_code", None) == reference[1].status_code
        )
    a, b = reference[1], ours[1]
    if case.compare is not None:
        try:
            a, b = case.compare(a), case.compare(b)
        except Exception:
            return False
    return same(a, b)


@dataclass(frozen=True)
class Drift:
    """One row whose behaviour is not what the tables and ``redispy_versions`` expect for the
    installed redis-py."""

    kind: Literal["now agrees", "now differs", "message changed"]
    case: str
    target: str
    detail: str
    """The reason that no longer holds, the two outcomes, or the two messages."""

    def line(self) -> str:
        return f"{self.kind}: {self.case} [{self.target}] {self.detail}"


def drift_summary(drift: Iterable[Drift]) -> list[str]:
    """One line per (kind, row, detail), the targets where it was seen joined: what a new
    redis-py release changed, short enough to read."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for item in drift:
        seen.setdefault((item.kind, item.case, item.detail), []).append(item.target)
    return [
        f"{kind}: {case} [{', '.join(targets)}] {detail}"
        for (kind, case, detail), targets in seen.items()
    ]


@dataclass
class Report:
    """What one run of a table compared."""

    compared: int = 0
    agreed: int = 0
    expected_differences: list[str] = field(default_factory=list)
    messages_differ: list[str] = field(default_factory=list)
    """Errors of the same class whose ``str()`` differs for no listed reason (a failure
    when ``STRICT_MESSAGES`` is on)."""
    drift: list[Drift] = field(default_factory=list)
    """Unexpected: outcomes that differ without a reason, a listed difference that no longer
    differs, or a message that changed."""


async def compare_cases(
    target: str,
    kind: str,
    cases: Iterable[Case],
    reference_client: Any,
    our_client: Any,
    report: Report,
) -> None:
    """Run every case meant for ``target`` through both clients and record the results."""
    for case in cases:
        if not runs_on(case, target, kind):
            continue
        tag = f"{zlib.crc32(case.name.encode()):08x}"
        resolve = resolver(tag)
        keys = sorted({resolve(key) for key in keys_of(case)})
        await _prepare(reference_client, keys, case.setup, resolve)
        reference = await trio.to_thread.run_sync(
            run_reference, reference_client, case.action, resolve
        )
        await _prepare(reference_client, keys, case.setup, resolve)
        with trio.fail_after(20):
            ours = await run_ours(our_client, case.action, resolve)
        await _prepare(reference_client, keys, (), resolve)
        report.compared += 1
        matched = agree(case, reference, ours)
        reason = difference(case, target, kind)
        message_reason = None
        if matched and reference[0] == "error" and str(reference[1]) != str(ours[1]):
            messages = f"{str(reference[1])[:160]!r} / {str(ours[1])[:160]!r}"
            message_reason = message_difference(reference[1], ours[1])
            if message_reason is None:
                report.messages_differ.append(f"{case.name}: {messages}")
                if STRICT_MESSAGES and reason is None:
                    report.drift.append(Drift("message changed", case.name, target, messages))
        if reason is not None:
            assert reason in DIFFERENCES, f"unknown difference {reason!r}"
            change = change_for(case.name, reason)
            if change is not None and matched:
                report.expected_differences.append(
                    f"{reason} (agrees since redis-py {change.since}): {case.name}"
                )
            elif change is not None:
                detail = f"redis-py: {outcome_text(reference)} / trio-cluster: {outcome_text(ours)}"
                report.drift.append(Drift("now differs", case.name, target, detail))
            elif matched:
                detail = f"(listed difference {reason!r}, redis-py {REDIS_PY})"
                report.drift.append(Drift("now agrees", case.name, target, detail))
            else:
                report.expected_differences.append(f"{reason}: {case.name}")
        elif matched and message_reason is not None:
            report.expected_differences.append(f"{message_reason}: {case.name}")
        elif matched:
            report.agreed += 1
        else:
            detail = f"redis-py: {outcome_text(reference)} / trio-cluster: {outcome_text(ours)}"
            report.drift.append(Drift("now differs", case.name, target, detail))


async def _prepare(
    client: Any, keys: Sequence[str], setup: Sequence[Call], resolve: Callable[[Any], Any]
) -> None:
    """Delete the case's keys (one at a time: they may span slots) and run its setup."""

    def work() -> None:
        for key in keys:
            client.delete(key)
        for call in setup:
            getattr(client, call.method)(*resolve(call.args), **resolve(call.kwargs))

    await trio.to_thread.run_sync(work)
