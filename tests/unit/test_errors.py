"""Every exception class a caller can meet constructs, ``repr()``s, ``str()``s and pickles.

A ``repr()`` that raises is not cosmetic: trio formats exceptions while it unwinds, and an
``AttributeError`` there becomes ``TrioInternalError`` and corrupts later ``trio.run`` calls.
"""

from __future__ import annotations

import inspect
import pickle
from importlib.metadata import version

import pytest
import redis
import trio
from packaging.version import Version
from redis import exceptions as rex

import trio_cluster
from trio_cluster import errors
from trio_cluster.clients.pubsub import PubSubLimitError
from trio_cluster.conn.state import ConnState
from trio_cluster.pooling.breaker import CircuitOpenError
from trio_cluster.testing import free_port

_REDIS_PY = Version(version("redis"))

#: Constructor arguments for the classes that parse or need more than a message.
SPECIAL_ARGS: dict[type[BaseException], tuple[object, ...]] = {
    errors.MovedError: ("3999 127.0.0.1:6381",),
    errors.AskError: ("3999 127.0.0.1:6381",),
    errors.InvalidTransition: (ConnState.IDLE, ConnState.CREATED),
}


def _classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in (errors, trio_cluster):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    found["CircuitOpenError"] = CircuitOpenError
    found["PubSubLimitError"] = PubSubLimitError
    return sorted(set(found.values()), key=lambda c: c.__name__)


CLASSES = _classes()


def test_the_class_list_covers_every_exported_error() -> None:
    exported = [getattr(errors, name) for name in errors.__all__]
    assert {c for c in exported if inspect.isclass(c)} <= set(CLASSES)
    assert errors.ArgumentTypeError in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_constructs_reprs_strs_and_pickles(cls: type[BaseException]) -> None:
    args = SPECIAL_ARGS.get(cls, ("something went wrong",))
    error = cls(*args)
    text = str(error)
    assert text  # a message, never empty
    assert isinstance(repr(error), str)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == text
    assert repr(copy) == repr(error)


def test_argument_type_error_is_datatype_and_typeerror_with_redis_py_repr() -> None:
    error = errors.ArgumentTypeError("command argument 2 has type NoneType")
    assert isinstance(error, rex.DataError)
    assert isinstance(error, TypeError)
    assert repr(error) == "server:ArgumentTypeError"  # redis-py's own format, no AttributeError


def test_argument_type_error_unwinding_through_trio_is_not_an_internal_error() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise errors.ArgumentTypeError("bad argument")

    with pytest.raises(BaseExceptionGroup) as caught:
        trio.run(main)
    assert caught.group_contains(errors.ArgumentTypeError)
    trio.run(trio.sleep, 0)  # a later run in the same process still works


@pytest.mark.parametrize(
    ("message", "cls", "text"),
    [
        ("ERR wrong number of arguments for 'set' command", rex.ResponseError,
         "wrong number of arguments for 'set' command"),
        ("ERR unknown command 'FOO', with args beginning with: ", errors.UnknownCommandError,
         "unknown command 'FOO', with args beginning with: "),
        ("ERR max number of clients reached", rex.ConnectionError,
         "max number of clients reached"),
        ("ERR invalid password", errors.AuthenticationError, "invalid password"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", rex.ResponseError,
         "WRONGTYPE Operation against a key holding the wrong kind of value"),
    ],
)  # fmt: skip
def test_err_prefix_is_dropped_as_redis_py_does(
    message: str, cls: type[Exception], text: str
) -> None:
    error = errors.error_from_reply(message)
    assert isinstance(error, cls)
    assert str(error) == text


def test_cluster_refusals_are_in_both_families() -> None:
    tx = errors.CrossSlotTransactionError("All keys ... same slot")
    assert isinstance(tx, rex.CrossSlotTransactionError)
    assert isinstance(tx, rex.RedisClusterException)
    assert isinstance(tx, errors.ClusterCrossSlotError)
    keys = errors.CrossSlotKeysError("RENAME - all keys must map to the same key slot")
    assert isinstance(keys, rex.RedisClusterException)
    assert isinstance(keys, rex.ClusterCrossSlotError)
    down = errors.ClusterUnreachableError("Redis Cluster cannot be connected.")
    assert isinstance(down, rex.RedisClusterException)
    assert isinstance(down, rex.ConnectionError)


# --- an unreachable cluster: redis-py 8.2's class where it exists ---------------------------


def test_cluster_unreachable_is_redis_py_s_own_class_where_it_exists() -> None:
    # redis-py 8.2 added RedisClusterUnreachableError; 8.0 and 8.1 raise its base class.
    expected = getattr(rex, "RedisClusterUnreachableError", rex.RedisClusterException)
    assert issubclass(errors.ClusterUnreachableError, expected)
    assert issubclass(errors.ClusterUnreachableError, rex.RedisClusterException)
    assert issubclass(errors.ClusterUnreachableError, rex.ConnectionError)


async def test_an_unreachable_cluster_raises_what_redis_py_raises_for_it() -> None:
    port = free_port("127.0.0.1")  # nothing listens there

    def redis_py() -> BaseException:
        try:
            redis.RedisCluster(host="127.0.0.1", port=port, socket_connect_timeout=2)
        except Exception as exc:
            return exc
        raise AssertionError("redis-py connected to a closed port")

    reference = await trio.to_thread.run_sync(redis_py)
    with trio.fail_after(20), pytest.raises(errors.ClusterUnreachableError) as caught:
        async with trio_cluster.ClusterClient("127.0.0.1", port, connect_timeout=2.0):
            pass
    assert isinstance(caught.value, type(reference)), type(reference)


def _redis_py_error_replies() -> list[str]:
    """Every error reply redis-py's parser gives a class of its own, and a few it does not."""
    from redis._parsers.base import BaseParser

    replies = ["WRONGTYPE Operation against a key", "BUSY Redis is busy", "weird reply", "E"]
    for code, cls in BaseParser.EXCEPTION_CLASSES.items():
        if isinstance(cls, dict):
            replies += [f"{code} {message}" for message in cls]
        replies.append(f"{code} 3999 127.0.0.1:6381" if code in ("MOVED", "ASK") else f"{code} x")
    return replies


@pytest.mark.parametrize("reply", _redis_py_error_replies())
def test_an_error_reply_gets_redis_py_s_class_and_status_code(reply: str) -> None:
    """redis-py's own parser is the oracle: the same ``except`` clause catches ours, and
    ``status_code`` is the same (ours follows redis-py 8.2, which gives any first word that
    looks like a code; 8.0 gives only the codes it has a class for)."""
    from redis._parsers.base import BaseParser

    theirs, ours = BaseParser.parse_error(reply), errors.error_from_reply(reply)
    assert isinstance(ours, type(theirs)), (type(theirs), type(ours))
    code = getattr(theirs, "status_code", None)
    if code is not None or Version("8.2") <= _REDIS_PY:  # 8.0 names only the codes it knows
        assert getattr(ours, "status_code", None) == code
