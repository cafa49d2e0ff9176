"""Messages and logs: no URL error or repr ever shows a password, outage warnings are
rate-limited per subject with a count, and the library never prints through Python's
last-resort handler."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
import trio
import trio.testing

import trio_cluster
from trio_cluster import Client, ClusterClient
from trio_cluster.config import parse_url, redact_url
from trio_cluster.logs import LogLimiter

SECRETS = ["pa#ss", "pa?ss", "pa/ss", "pa@ss", "p#?/@ss", "p%ss:x"]


def _urls(secret: str) -> list[str]:
    encoded = quote(secret, safe="")
    return [
        f"redis://user:{secret}@localhost:6379/0",
        f"redis://:{secret}@localhost:6379",
        f"redis://{secret}@localhost",
        f"rediss://user:{encoded}@localhost:6380/1",
        f"redis://user:{secret}@localhost:notaport/0",
        f"redis://user:{secret}@localhost:6379/notadb",
        f"redis://user:{secret}@localhost:6379/0?unknown=1",
        f"unix://user:{secret}@/tmp/redis.sock",
    ]


@pytest.mark.parametrize("secret", SECRETS)
def test_no_url_error_or_repr_contains_the_password(secret: str) -> None:
    encoded = quote(secret, safe="")
    for url in _urls(secret):
        shown = redact_url(url)
        assert secret not in shown and encoded not in shown and "***" in shown
        for factory in (parse_url, Client.from_url, ClusterClient.from_url):
            try:
                result = factory(url)
            except (ValueError, TypeError) as error:
                text = f"{error!s} {error!r}"
                assert secret not in text and encoded not in text, (url, text)
            else:
                assert secret not in repr(result) or factory is parse_url


@pytest.mark.parametrize("secret", SECRETS)
def test_percent_encoded_password_is_read_back_exactly(secret: str) -> None:
    options = parse_url(f"redis://user:{quote(secret, safe='')}@localhost:6379/2")
    assert options["password"] == secret
    assert options["username"] == "user" and options["db"] == 2


def test_unencoded_special_characters_are_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="percent-encode") as caught:
        parse_url("redis://user:pa#ss@localhost:6379/0")
    assert "pa#ss" not in str(caught.value)


async def test_outage_warnings_are_one_record_per_interval_with_a_count(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_cluster.test")
    limiter = LogLimiter(logging.getLogger("trio_cluster.test"), interval=10.0)
    for _ in range(50):  # five records a second for 10 s, about two subjects
        limiter.log(logging.WARNING, "node-a", "node %s is down", "a")
        limiter.log(logging.WARNING, "node-b", "node %s is down", "b")
        await trio.sleep(0.2)
    await trio.sleep(0.1)  # past the interval whatever the float sum of the sleeps
    limiter.log(logging.WARNING, "node-a", "node %s is down", "a")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "node a is down",
        "node b is down",
        "node a is down (49 more like it in the last 10 s)",
    ]
    assert limiter.reset("node-b") == 49


def test_library_logs_never_reach_the_last_resort_handler() -> None:
    root = logging.getLogger("trio_cluster")
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    assert trio_cluster.__name__ == "trio_cluster"


def test_url_takes_redis_py_query_options() -> None:
    url = "redis://localhost:6379/0?decode_responses=true&socket_timeout=2.5&encoding=latin-1"
    client = Client.from_url(url)
    assert client.config.read_timeout == client.config.write_timeout == 2.5
    assert client.config.connect_timeout == 2.5
    assert client._encoding.decode_responses is True
    assert client._encoding.encoding == "latin-1"
    with pytest.raises(ValueError, match="decode_responses"):
        parse_url("redis://localhost/0?decode_responses=maybe")
