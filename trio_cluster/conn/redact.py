"""Keeping configured secrets out of what a server says.

A server may echo what it was sent (a hostile or broken one, or a proxy in front of it): a
password given to ``AUTH`` or ``HELLO`` can come back inside an error reply or a malformed
line, and from there reach an exception that a caller sees or logs, or a log record of ours.
So every piece of server-provided text that a connection turns into an exception passes
through :func:`redact` first, with the secrets that connection was given: its configured
password (the credentials a provider returned are in the connection's configuration too), and
a re-authentication's new password (passed by its job).
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["MASK", "redact", "redact_replies"]

#: What a secret is replaced by (as ``config.redact_url`` shows a URL's password).
MASK = "***"

E = TypeVar("E", bound=BaseException)


def redact(error: E, *secrets: str | None) -> E:
    """Replace every occurrence of each secret in ``error``'s text (its arguments, and text
    attributes such as redis-py's ``message``) by :data:`MASK`, in place; returns ``error``."""
    found = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first
    if not found:
        return error
    error.args = tuple(_mask(arg, found) for arg in error.args)
    for name, value in list(vars(error).items()):
        if isinstance(value, str | bytes):
            setattr(error, name, _mask(value, found))
    return error


def redact_replies(replies: list[Any], *secrets: str | None) -> None:
    """:func:`redact` every error among ``replies`` (errors as values, as a pipeline returns
    them, also inside a transaction's reply)."""
    for reply in replies:
        if isinstance(reply, BaseException):
            redact(reply, *secrets)
        elif isinstance(reply, list):
            redact_replies(reply, *secrets)


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
    elif isinstance(value, bytes):
        for secret in secrets:
            value = value.replace(secret.encode(), MASK.encode())
    return value
