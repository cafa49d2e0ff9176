"""redis-py's constructor and URL options: what each maps to, and the refusals that name the
way out (their effects on a real server: tests/differential/test_options.py)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis
from redis.backoff import ConstantBackoff, ExponentialWithJitterBackoff
from redis.cluster import LoadBalancingStrategy
from redis.retry import Retry

from trio_cluster import Client, ClusterClient, PoolOptions, ReadFrom, RetryOptions
from trio_cluster.clients.options import REFUSED
from trio_cluster.config import URL_OPTIONS, parse_url


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("client_class", [Client, ClusterClient])
def test_options_that_cannot_be_honoured_say_what_to_do(
    name: str, client_class: type[Client] | type[ClusterClient]
) -> None:
    with pytest.raises(TypeError) as caught:
        client_class("127.0.0.1", 7000, **{name: object()})
    message = str(caught.value)
    assert f"{client_class.__name__}() does not support redis-py's {name}=" in message
    assert REFUSED[name] in message


def test_cache_config_is_refused_as_not_supported() -> None:
    with pytest.raises(TypeError, match="client-side caching is not supported"):
        Client(cache_config=object())


def test_unknown_options_still_name_the_client() -> None:
    with pytest.raises(TypeError, match=r"ClusterClient\(\) got unexpected keyword"):
        ClusterClient("127.0.0.1", 7000, single_connection_client=True)  # a Redis option only


def test_max_connections_and_single_connection_map_to_the_pool() -> None:
    assert Client(max_connections=7).pool_options == PoolOptions(size=7, max_active=7)
    assert Client(single_connection_client=True).pool_options == PoolOptions(size=1)
    cluster = ClusterClient("127.0.0.1", 7000, max_connections=4)
    assert cluster.pool_options == PoolOptions(size=4, max_active=4)
    for bad in (0, -1, True, "3"):
        with pytest.raises(ValueError, match="max_connections"):
            Client(max_connections=bad)
    with pytest.raises(TypeError, match="not both"):
        Client(max_connections=3, pool=PoolOptions())
    with pytest.raises(TypeError, match="not both"):
        Client(max_connections=3, single_connection_client=True)


def test_a_redis_py_retry_maps_its_count_and_backoff() -> None:
    backoff = ConstantBackoff(0.25)
    client = Client(retry=Retry(backoff, 4))
    assert client.retry is not None and client.retry.retries == 4
    assert client.retry.backoff(0) == client.retry.backoff(3) == 0.25  # redis-py's backoff
    cluster = ClusterClient("127.0.0.1", 7000, retry=Retry(ExponentialWithJitterBackoff(), 2))
    assert cluster.retry.retries == 2
    with pytest.raises(ValueError, match="cannot retry forever"):
        Client(retry=Retry(backoff, -1))
    assert Client().retry is None  # nothing retried by default
    assert Client(retry_on_timeout=True).retry == RetryOptions()
    attempts = ClusterClient("127.0.0.1", 7000, cluster_error_retry_attempts=6).retry
    assert (attempts.retries, attempts.transient_retries) == (6, 6)


def test_retry_on_error_accepts_only_what_the_rules_retry() -> None:
    assert Client(retry_on_error=[redis.ConnectionError, redis.TimeoutError]).retry is not None
    with pytest.raises(TypeError, match="cannot retry ResponseError"):
        Client(retry_on_error=[redis.ResponseError])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ReadFrom.PRIMARY),
        ({"read_from_replicas": True}, ReadFrom.ROUND_ROBIN),
        ({"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN}, ReadFrom.ROUND_ROBIN),
        (
            {"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN_REPLICAS},
            ReadFrom.ROUND_ROBIN_REPLICAS,
        ),
        ({"load_balancing_strategy": LoadBalancingStrategy.RANDOM}, ReadFrom.RANDOM_NODE),
        ({"load_balancing_strategy": LoadBalancingStrategy.RANDOM_REPLICA}, ReadFrom.RANDOM),
    ],
)
def test_read_options_map_to_read_from(options: dict[str, Any], expected: ReadFrom) -> None:
    client = ClusterClient("127.0.0.1", 7000, **options)
    assert client.read_from is expected
    assert client._base_config.readonly is (expected is not ReadFrom.PRIMARY)


def test_read_from_and_redis_py_read_options_clash() -> None:
    with pytest.raises(TypeError, match="not both"):
        ClusterClient("127.0.0.1", 7000, read_from="round-robin", read_from_replicas=True)


def test_ssl_options_build_the_context_redis_py_builds() -> None:
    verified = Client(ssl=True).config.ssl_context
    assert verified is not None
    assert verified.verify_mode is ssl.CERT_REQUIRED and verified.check_hostname
    relaxed = Client(ssl=True, ssl_cert_reqs="none").config.ssl_context
    assert relaxed is not None
    assert relaxed.verify_mode is ssl.CERT_NONE and not relaxed.check_hostname
    no_host = Client(ssl=True, ssl_check_hostname=False).config.ssl_context
    assert no_host is not None and not no_host.check_hostname
    assert no_host.verify_mode is ssl.CERT_REQUIRED
    pinned = Client(ssl=True, ssl_min_version=ssl.TLSVersion.TLSv1_3).config.ssl_context
    assert pinned is not None and pinned.minimum_version is ssl.TLSVersion.TLSv1_3
    assert Client(ssl_cert_reqs="none").config.ssl_context is None  # no ssl=True: unused
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        Client(ssl=True, ssl_cert_reqs="sometimes")
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        Client(ssl=True, ssl_keyfile="key.pem")
    with pytest.raises(TypeError, match="not both"):
        Client(ssl=True, ssl_context=ssl.create_default_context())


def test_connection_options_of_redis_py() -> None:
    config = Client(
        health_check_interval=2, socket_keepalive=False, client_name="me", socket_timeout=1
    ).config
    assert (config.health_check_interval, config.socket_keepalive) == (2, False)
    assert (config.client_name, config.read_timeout, config.connect_timeout) == ("me", 1, 1)
    assert Client().config.socket_keepalive is True  # redis-py's default
    with pytest.raises(ValueError, match="health_check_interval"):
        Client(health_check_interval=-1)
    with pytest.raises(TypeError, match="legacy_responses"):
        Client(legacy_responses=False)
    assert Client(legacy_responses=True).config.protocol == 3


def test_url_options_are_redis_py_s() -> None:
    url = (
        "redis://h:1/2?max_connections=10&health_check_interval=3&socket_timeout=1.5"
        "&socket_keepalive=false&retry_on_timeout=true&client_name=app&ssl_cert_reqs=none"
        "&retry_on_error=ConnectionError,TimeoutError&read_from_replicas=yes"
    )
    kwargs = parse_url(url)
    assert kwargs == {
        "host": "h",
        "port": 1,
        "db": 2,
        "max_connections": 10,
        "health_check_interval": 3.0,
        "socket_timeout": 1.5,
        "socket_keepalive": False,
        "retry_on_timeout": True,
        "client_name": "app",
        "ssl_cert_reqs": "none",
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "read_from_replicas": True,
    }
    client = Client.from_url("redis://h:1?max_connections=10&health_check_interval=3")
    assert client.pool_options.max_active == 10
    assert client.config.health_check_interval == 3
    cluster = ClusterClient.from_url("redis://h:1?read_from_replicas=true&max_connections=5")
    assert cluster.read_from is ReadFrom.ROUND_ROBIN and cluster.pool_options.size == 5
    with pytest.raises(ValueError, match="bad value for URL option max_connections"):
        parse_url("redis://h?max_connections=many")
    with pytest.raises(ValueError, match="unknown URL option 'nope'"):
        parse_url("redis://h?nope=1")
    assert {"max_connections", "health_check_interval", "ssl_cert_reqs"} <= set(URL_OPTIONS)
