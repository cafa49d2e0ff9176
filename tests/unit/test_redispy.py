"""What trio-cluster takes from redis-py's internals (``trio_cluster/redispy.py``) is still
there and still what it was: a redis-py release that moves one fails here, naming the release,
before it fails a user's call."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import version

from redis import exceptions as rex

from trio_cluster import redispy

REDIS_PY = f"redis-py {version('redis')}"


def _python(*lines: str) -> subprocess.CompletedProcess[str]:
    """Runs ``lines`` in a fresh interpreter: how an import under a changed redis-py looks
    (the lines change it, then import trio_cluster)."""
    return subprocess.run(
        [sys.executable, "-c", "\n".join(lines)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_every_internal_is_present_and_of_its_kind() -> None:
    expected_kinds = {
        "EMPTY_RESPONSE": str,
        "NEVER_DECODE": str,
        "SUPPORTED": str,
        "CLUSTER_ATTRIBUTES": tuple,
        "ERR_REPLY_CLASSES": dict,
    }
    for name in redispy.__all__:
        value = getattr(redispy, name, None)
        assert value is not None, f"{REDIS_PY}: redispy.{name} is missing"
        kind = expected_kinds.get(name)
        if kind is not None:
            assert isinstance(value, kind), f"{REDIS_PY}: {name} is a {type(value).__name__}"
        else:
            assert callable(value), f"{REDIS_PY}: {name} is no longer callable"


def test_the_callback_selector_still_takes_its_options() -> None:
    from redis._parsers.response_callbacks import get_response_callbacks

    parameters = inspect.signature(get_response_callbacks).parameters
    assert {"user_protocol", "legacy_responses"} <= set(parameters), (
        f"{REDIS_PY}: get_response_callbacks takes {list(parameters)}"
    )
    for protocol in (None, 2, 3):
        callbacks = redispy.response_callbacks(protocol)
        missing = {"ZRANGE", "CONFIG GET", "CLIENT LIST", "INFO"} - {k.upper() for k in callbacks}
        assert not missing, f"{REDIS_PY}: no response callback for {missing} (protocol {protocol})"


def test_the_cluster_routing_tables_are_still_where_they_were() -> None:
    flags = redispy.RedisCluster.COMMAND_FLAGS
    assert isinstance(flags, dict) and flags.get("FLUSHALL") == redispy.RedisCluster.PRIMARIES, (
        f"{REDIS_PY}: RedisCluster.COMMAND_FLAGS changed shape"
    )
    assert "CLUSTER SLOTS" in redispy.RedisCluster.CLUSTER_COMMANDS_RESPONSE_CALLBACKS, (
        f"{REDIS_PY}: RedisCluster.CLUSTER_COMMANDS_RESPONSE_CALLBACKS changed"
    )


def test_a_moved_internal_fails_the_import_with_one_clear_error() -> None:
    """A redis-py without one of the internals (simulated by deleting it before the import):
    one ImportError naming the missing piece, the installed release and the supported range."""
    result = _python(
        "import redis._parsers.helpers as helpers",
        "del helpers.zset_score_pairs_resp3_to_resp2_legacy",
        "import trio_cluster",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: trio-cluster "), last
    assert "zset_score_pairs_resp3_to_resp2_legacy" in last and REDIS_PY in last, last
    assert "redis>=8.0" in last, last


def test_a_missing_cluster_attribute_fails_the_import_too() -> None:
    result = _python(
        "from redis.cluster import RedisCluster",
        "for cls in RedisCluster.__mro__:",
        "    if 'COMMAND_FLAGS' in vars(cls):",
        "        delattr(cls, 'COMMAND_FLAGS')",
        "import trio_cluster",
    )
    last = result.stderr.strip().splitlines()[-1]
    assert "RedisCluster.COMMAND_FLAGS" in last and REDIS_PY in last, last


def test_without_the_new_class_the_import_falls_back_to_its_base() -> None:
    # What a redis-py 8.0 or 8.1 looks like to the import (the lowest session runs it for real).
    result = _python(
        "import redis.exceptions as rex",
        "del rex.RedisClusterUnreachableError",
        "from trio_cluster import errors",
        "print(' '.join(c.__name__ for c in errors.ClusterUnreachableError.__mro__))",
    )
    if "AttributeError" in result.stderr:  # a redis-py without it: nothing to delete
        assert not hasattr(rex, "RedisClusterUnreachableError")
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == [
        "ClusterUnreachableError", "RedisClusterException", "ConnectionError"
    ]  # fmt: skip
