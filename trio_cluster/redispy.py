"""Everything trio-cluster takes from redis-py beyond its exceptions and ``key_slot``, in one
module.

trio-cluster reuses redis-py's command mixins, response callbacks and encoder, so that its
commands have redis-py's signatures and its replies redis-py's shapes.  Some of what that needs
is redis-py's internals (private modules, class attributes, option names): they can move in any
release.  Every such name is imported here and nowhere else, and the import is checked: when
a redis-py release moves one, importing trio-cluster fails with one ``ImportError`` that names
the missing piece, the installed redis-py and the supported range, instead of an
``AttributeError`` deep in a call.  ``tests/unit/test_redispy.py`` checks the same names and
what they are expected to be.

redis-py 8.0 is the oldest release supported: it introduced the response-callback selector
(``get_response_callbacks(..., legacy_responses=...)``) whose reply shapes trio-cluster gives.
Names that newer releases added are imported with a fallback to what the older ones had
(``RedisClusterUnreachableError``, new in 8.2, is ``RedisClusterException`` before).
"""

from __future__ import annotations

from importlib.metadata import version as _installed_version
from typing import Any

from .version import __version__

#: The redis-py releases this trio-cluster was tested with (pyproject.toml says the same).
SUPPORTED = "redis>=8.0"


def _unsupported(missing: str) -> ImportError:
    return ImportError(
        f"trio-cluster {__version__} needs {missing} from redis-py, which the installed "
        f"redis-py {_installed_version('redis')} does not have; trio-cluster supports "
        f"{SUPPORTED} (pip install 'redis>=8.0'), and a redis-py newer than it was tested "
        "with may have moved it: please report it"
    )


try:
    from redis._parsers.base import BaseParser
    from redis._parsers.encoders import Encoder
    from redis._parsers.helpers import zset_score_pairs_resp3_to_resp2_legacy
    from redis._parsers.response_callbacks import get_response_callbacks
    from redis.backoff import AbstractBackoff, NoBackoff
    from redis.client import EMPTY_RESPONSE, NEVER_DECODE
    from redis.cluster import (
        LoadBalancingStrategy,
        RedisCluster,
        parse_cluster_shards_with_str_keys,
    )
    from redis.commands import AsyncCoreCommands
    from redis.commands.cluster import ClusterManagementCommands
    from redis.commands.core import AsyncScript
    from redis.commands.helpers import list_or_args
    from redis.retry import AbstractRetry, Retry
    from redis.utils import safe_str, truncate_text
except ImportError as error:
    raise _unsupported(f"{error.name or 'a name'} ({error})") from error

try:
    from redis.exceptions import RedisClusterUnreachableError
except ImportError:  # redis-py 8.0 and 8.1 raise their base class for the same case
    from redis.exceptions import (  # type: ignore[assignment]
        RedisClusterException as RedisClusterUnreachableError,
    )

#: ``RedisCluster``'s class attributes that the routing tables are built from.
CLUSTER_ATTRIBUTES = (
    "COMMAND_FLAGS",
    "RESULT_CALLBACKS",
    "CLUSTER_COMMANDS_RESPONSE_CALLBACKS",
    "DEFAULT_NODE",
    "PRIMARIES",
    "ALL_NODES",
    "RANDOM",
    "REPLICAS",
)
for _name in CLUSTER_ATTRIBUTES:
    if not hasattr(RedisCluster, _name):
        raise _unsupported(f"RedisCluster.{_name}")


#: What a redis-py ``Retry`` (``redis.retry``, ``redis.asyncio.retry``) holds that a client
#: maps to its own retry options: the count has a getter, the backoff only an attribute.
for _name in ("get_retries", "_backoff"):
    if not hasattr(Retry(NoBackoff(), 0), _name):
        raise _unsupported(f"redis.retry.AbstractRetry.{_name}")


_err_classes = getattr(BaseParser, "EXCEPTION_CLASSES", {}).get("ERR")
if not isinstance(_err_classes, dict):
    raise _unsupported("BaseParser.EXCEPTION_CLASSES['ERR'] (redis._parsers.base)")
#: ``ERR`` replies redis-py raises as a class of their own, by the text after ``ERR `` (module
#: load errors, AUTH without a password set...): its parser's table.
ERR_REPLY_CLASSES: dict[str, type[Exception]] = dict(_err_classes)


def retry_parts(retry: AbstractRetry[Any]) -> tuple[int, AbstractBackoff]:
    """A redis-py ``Retry``'s retry count and backoff object."""
    backoff: AbstractBackoff = retry._backoff  # no public getter in redis-py 8
    return retry.get_retries(), backoff


def response_callbacks(protocol: int | None) -> dict[str, Any]:
    """redis-py's response callbacks for ``protocol`` as ``redis.Redis`` chooses them by
    default (``legacy_responses=True``: the reply shapes redis-py users know)."""
    callbacks: dict[str, Any] = get_response_callbacks(
        user_protocol=protocol, legacy_responses=True
    )
    return callbacks


__all__ = [
    "CLUSTER_ATTRIBUTES",
    "EMPTY_RESPONSE",
    "ERR_REPLY_CLASSES",
    "NEVER_DECODE",
    "SUPPORTED",
    "AbstractBackoff",
    "AbstractRetry",
    "AsyncCoreCommands",
    "AsyncScript",
    "ClusterManagementCommands",
    "Encoder",
    "LoadBalancingStrategy",
    "RedisCluster",
    "RedisClusterUnreachableError",
    "list_or_args",
    "parse_cluster_shards_with_str_keys",
    "response_callbacks",
    "retry_parts",
    "safe_str",
    "truncate_text",
    "zset_score_pairs_resp3_to_resp2_legacy",
]
