"""ConnectionConfig validation, URL parsing and redaction."""

from __future__ import annotations

import ssl

import pytest

from trio_cluster import Client
from trio_cluster.config import ConnectionConfig, parse_url, redact_url


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("port", 0, "1..65535"),
        ("port", 70000, "1..65535"),
        ("port", "6379", "1..65535"),
        ("db", -1, ">= 0"),
        ("protocol", 4, "2 or 3"),
        ("read_timeout", 0, "> 0"),
        ("write_timeout", -1.0, "> 0"),
        ("connect_timeout", float("nan"), "> 0"),
        ("read_timeout", True, "> 0"),
    ],
)
def test_bad_values_name_field_and_range(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ConnectionConfig(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value) and fragment in str(info.value)


def test_none_timeouts_mean_no_limit() -> None:
    config = ConnectionConfig(read_timeout=None, write_timeout=None, connect_timeout=None)
    assert config.read_timeout is None


def test_password_not_in_repr() -> None:
    assert "hunter2" not in repr(ConnectionConfig(username="u", password="hunter2"))


def test_parse_full_url() -> None:
    kwargs = parse_url("redis://alice:p%40ss@cache.local:7000/2?client_name=app&read_timeout=1.5")
    assert kwargs == {
        "username": "alice",
        "password": "p@ss",
        "host": "cache.local",
        "port": 7000,
        "db": 2,
        "client_name": "app",
        "read_timeout": 1.5,
    }
    assert ConnectionConfig(**kwargs).port == 7000


def test_parse_password_only_and_tls() -> None:
    kwargs = parse_url("rediss://:tok@host")
    assert kwargs["password"] == "tok" and "username" not in kwargs
    assert kwargs["ssl"] is True  # the client builds the context, as redis-py does
    context = Client.from_url("rediss://:tok@host").config.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    relaxed = Client.from_url("rediss://host?ssl_cert_reqs=none").config.ssl_context
    assert relaxed is not None and relaxed.verify_mode is ssl.CERT_NONE
    assert parse_url("redis://lonely@host")["password"] == "lonely"


def test_parse_unix() -> None:
    assert parse_url("unix:///tmp/redis.sock")["unix_socket_path"] == "/tmp/redis.sock"


@pytest.mark.parametrize(
    "url",
    ["http://x:secretpw@host", "redis://u:secretpw@host:notaport", "redis://u:secretpw@h/x",
     "redis://u:secretpw@h?bogus=1"],
)  # fmt: skip
def test_bad_urls_are_rejected_without_leaking_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    assert "secretpw" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:pw@h:1/0", "redis://alice:***@h:1/0"),
        ("rediss://:pw@h", "rediss://:***@h"),
        ("redis://pw@h", "redis://***@h"),
        ("redis://h:1", "redis://h:1"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact_url(url) == shown
