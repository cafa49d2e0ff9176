"""redis-py's behaviour as data keyed by its version.

The differential suite compares trio-cluster with the redis-py that is installed: the locked
one in ``nox -s tests``, the oldest allowed one in ``nox -s lowest``, the newest release in
``nox -s tests-latest``.  Where a redis-py release changed what a row of the tables does, the
change is a line here (the first release that behaves the new way, the rows it concerns, and
why), not an edit of the row: the same tables then hold for every supported redis-py.

A release that changes something not listed here shows up as *drift*: a short list of the
rows whose behaviour moved (``now agrees``: a listed difference that no longer differs;
``now differs``: a row that agreed and no longer does; ``message changed``), printed once at
the end of the run and in each failing test, instead of assertion dumps.  Each line of it
becomes either a ``Change`` below (redis-py moved; say why) or a fix in trio-cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

from packaging.version import Version

#: The installed redis-py.
REDIS_PY = Version(version("redis"))


@dataclass(frozen=True)
class Change:
    """From redis-py ``since`` on, the rows named ``cases`` (a ``Case.name`` or a prefix of
    one) no longer differ for the listed reason ``reason``: redis-py now does what we do."""

    since: str
    reason: str
    cases: tuple[str, ...]
    why: str

    def applies(self, case_name: str, reason: str, installed: Version = REDIS_PY) -> bool:
        """Whether this change makes ``case_name`` agree under ``installed``."""
        return (
            reason == self.reason
            and installed >= Version(self.since)
            and any(case_name.startswith(prefix) for prefix in self.cases)
        )


#: Every behaviour change of redis-py the tables know, oldest first.
CHANGES: tuple[Change, ...] = (
    Change(
        since="8.2",
        reason="keyless-default-node",
        cases=(
            "scripting:evalsha_ro(",
            "server:command_getkeysandflags(",
            "server:function_kill()",
            "server:script_kill()",
        ),
        why=(
            "redis-py 8.2's RedisCluster gained routing rules for EVALSHA_RO without keys, "
            "COMMAND GETKEYSANDFLAGS, FUNCTION KILL and SCRIPT KILL, so it sends them instead "
            "of raising 'No way to dispatch this command'; the answers now agree"
        ),
    ),
    Change(
        since="8.2",
        reason="pubsub-ping-decoded",
        cases=("pubsub:pubsub_ping",),  # with a message, and pubsub_ping_without_message
        why=(
            "redis-py 8.2's PubSub.handle_message recognises a decoded PING answer, and gives "
            "the same {'type': 'pong', ..., 'data': 'hi'} message as we do"
        ),
    ),
)

#: The message rules of ``harness.MESSAGE_DIFFERENCES`` that hold only for some releases:
#: key -> (first release it holds for or None, first release it no longer holds for or None).
MESSAGE_RULE_RANGES: dict[str, tuple[str | None, str | None]] = {
    # redis-py before 8.2 packs commands with hiredis' packer ("A tuple item must be...").
    "data-error-message": (None, "8.2"),
    # redis-py 8.2 checks arguments with its own encoder's words; ours adds the argument.
    "data-error-argument": ("8.2", None),
}


def message_rule_holds(key: str, installed: Version = REDIS_PY) -> bool:
    """Whether the message rule ``key`` applies to the installed redis-py."""
    low, high = MESSAGE_RULE_RANGES.get(key, (None, None))
    return (low is None or installed >= Version(low)) and (
        high is None or installed < Version(high)
    )


def change_for(case_name: str, reason: str, installed: Version = REDIS_PY) -> Change | None:
    """The listed change under which ``case_name`` agrees despite its ``reason``, if any."""
    for change in CHANGES:
        if change.applies(case_name, reason, installed):
            return change
    return None
