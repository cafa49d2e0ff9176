"""redis-py 8 as the oracle: every row of the tables (``cases.py``, ``scenarios.py``) run
through redis-py's client and through trio-cluster on the same real server, for a
standalone server (with the default protocol, with RESP2 and RESP3 asked for explicitly, and
with decode_responses=True), a password-protected one and a cluster (default protocol, RESP3,
decode_responses=True); values, types, error classes and error messages must agree except for
the deliberate differences the README lists.

Each test prints how many calls it compared; ``test_count`` checks the tables' size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from packaging.version import Version

from trio_cluster import Client, ClusterClient
from trio_cluster.testing import LocalCluster, LocalServer

from .cases import CASES
from .conftest import DRIFT
from .harness import (
    DIFFERENCES,
    MESSAGE_DIFFERENCES,
    Case,
    Report,
    compare_cases,
    drift_summary,
    message_difference,
    runs_on,
)
from .redispy_versions import MESSAGE_RULE_RANGES, REDIS_PY
from .scenarios import SCENARIOS

SECRET = "differential-secret"
TABLE: list[Case] = [*CASES, *SCENARIOS]
FAMILIES = sorted({case.family for case in TABLE})
#: Target name -> (server, options given to both clients).  Rows name "standalone", "auth"
#: or "cluster"; the other targets run the rows of their server kind (see ``runs_on``).
TARGETS: dict[str, tuple[str, dict[str, Any]]] = {
    "standalone": ("standalone", {}),
    "auth": ("auth", {}),
    "cluster": ("cluster", {}),
    "resp2": ("standalone", {"protocol": 2}),
    "resp3": ("standalone", {"protocol": 3}),
    "cluster-resp3": ("cluster", {"protocol": 3}),
    "decoded": ("standalone", {"decode_responses": True}),
    "cluster-decoded": ("cluster", {"decode_responses": True}),
}


@pytest.fixture(scope="module")
def auth_server() -> Iterator[LocalServer]:
    with LocalServer(password=SECRET) as server:
        yield server


@asynccontextmanager
async def clients(
    target: str, local_server: LocalServer, auth_server: LocalServer, cluster: LocalCluster
) -> AsyncIterator[tuple[Any, Any]]:
    """(redis-py's client, trio-cluster's client) for ``target``."""
    kind, options = TARGETS[target]
    if kind == "cluster":
        host, port = cluster.startup_nodes[0]
        reference: Any = await trio.to_thread.run_sync(
            lambda: redis.RedisCluster(host=host, port=port, **options)
        )
        ours: Any = ClusterClient(host, port, **options)
    else:
        server = auth_server if kind == "auth" else local_server
        if kind == "auth":
            options = {**options, "password": SECRET}
        reference = redis.Redis(host=server.host, port=server.port, **options)
        ours = Client(server.host, server.port, **options)
    try:
        async with ours:
            yield reference, ours
    finally:
        await trio.to_thread.run_sync(reference.close)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
async def test_family_agrees_with_redis_py(
    family: str,
    target: str,
    local_server: LocalServer,
    auth_server: LocalServer,
    local_cluster: LocalCluster,
    request: pytest.FixtureRequest,
) -> None:
    cases = [case for case in TABLE if case.family == family]
    report = Report()
    async with clients(target, local_server, auth_server, local_cluster) as (reference, ours):
        await compare_cases(target, TARGETS[target][0], cases, reference, ours, report)
    print(
        f"\n{family} on {target}: {report.compared} calls compared, {report.agreed} agree, "
        f"{len(report.expected_differences)} deliberate differences"
    )
    for line in report.expected_differences:
        print(f"  deliberate: {line}")
    print(f"  same error class, other message: {len(report.messages_differ)}")
    for line in report.messages_differ:
        print(f"    {line}")
    request.config.stash.setdefault(DRIFT, []).extend(report.drift)
    if report.drift:
        lines = "\n".join(drift_summary(report.drift))
        pytest.fail(f"redis-py {REDIS_PY} drifted from the tables:\n{lines}", pytrace=False)


def test_count() -> None:
    """The tables cover every family the issue names, with enough rows to mean something."""
    per_target = {t: sum(1 for case in TABLE if runs_on(case, t, TARGETS[t][0])) for t in TARGETS}
    print(f"\ncompared calls per target: {per_target}, total {sum(per_target.values())}")
    assert {
        "strings",
        "keys",
        "hashes",
        "lists",
        "sets",
        "sorted sets",
        "streams",
        "geo",
        "hyperloglog",
        "bitmaps",
        "scripting",
        "server",
        "pubsub",
        "pipelines",
        "transactions",
    } <= set(FAMILIES)
    assert sum(per_target.values()) >= 500


def test_readme_lists_every_deliberate_difference() -> None:
    """Each reason the suite accepts is explained in the README, under its key."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Differences from redis-py", 1)[1]
    missing = [key for key in (*DIFFERENCES, *MESSAGE_DIFFERENCES) if f"[`{key}`]" not in section]
    assert not missing, f"README's 'Differences from redis-py' lacks {missing}"
    used = {reason for case in TABLE for reason in case.differs.values()}
    unused = set(DIFFERENCES) - used
    assert not unused, f"differences no row exercises: {unused}"


def test_message_differences_are_recognised_narrowly() -> None:
    """Each listed message difference explains its own pair of messages and nothing else."""
    samples: dict[str, tuple[BaseException, BaseException]] = {
        "data-error-message": (
            redis.DataError("A tuple item must be str, int, float or bytes."),
            redis.DataError("Invalid input of type: 'NoneType'. Convert to a bytes, string..."),
        ),
        "data-error-argument": (
            redis.DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int."),
            redis.DataError(
                "Invalid input of type: 'bool'. Convert to a bytes, string, int. "
                "(command argument 2 of SET)"
            ),
        ),
        "unknown-command-message": (
            redis.RedisError("HEXPIRE command doesn't exist in Redis commands"),
            redis.ResponseError("unknown command 'HEXPIRE', with args beginning with: 'k' "),
        ),
        "client-class-name": (
            AttributeError("'Redis' object has no attribute 'nope'"),
            AttributeError("'Client' object has no attribute 'nope'"),
        ),
        "error-code-kept": (
            redis.exceptions.NoScriptError("No matching script.", status_code="NOSCRIPT"),
            redis.exceptions.NoScriptError("NOSCRIPT No matching script."),
        ),
    }
    assert set(samples) == set(MESSAGE_DIFFERENCES)
    for key, (theirs, ours) in samples.items():
        low, high = MESSAGE_RULE_RANGES.get(key, (None, None))
        holds = Version(low or "8.0")
        assert message_difference(theirs, ours, holds) == key
        assert message_difference(theirs, redis.ResponseError("something else"), holds) is None
        if high is not None:  # a rule for older releases is not tried on newer ones
            assert message_difference(theirs, ours, Version(high)) is None
    assert (
        message_difference(
            AttributeError("'Redis' object has no attribute 'a'"),
            AttributeError("'Client' object has no attribute 'b'"),
        )
        is None
    )
