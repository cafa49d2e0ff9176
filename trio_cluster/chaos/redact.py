"""Keeps secrets out of everything a run prints or writes.

Every password a run knows (from ``--cluster``/``--toxiproxy`` URLs, the ACL users a scenario
creates) is registered with one :class:`Redactor`; every line printed and every file written
goes through :meth:`Redactor.scrub`, so a secret that slips into an exception message, a note
or a repr is replaced by ``***`` too.  URLs are also shown in their redacted form up front.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from trio_cluster import redact_url

__all__ = ["MASK", "Redactor", "secrets_of_url"]

MASK = "***"


def secrets_of_url(url: str) -> list[str]:
    """The password of ``url`` (raw and percent-decoded), or of its lone user-info field,
    which redis-py reads as a password."""
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
    except ValueError:
        return []
    found: list[str] = []
    if password:
        found.append(password)
    elif username and parts.scheme != "unix":
        found.append(username)
    return [*found, *(unquote(s) for s in found)]


class Redactor:
    """The secrets of one run, and the one way to scrub text of them."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Register a secret (empty strings and None are ignored)."""
        if secret:
            self._secrets.add(secret)

    def add_url(self, url: str) -> None:
        """Register the password of a URL."""
        for secret in secrets_of_url(url):
            self.add(secret)

    def url(self, url: str) -> str:
        """``url`` safe to show: its password replaced by ``***``."""
        return self.scrub(redact_url(url))

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``***`` (longest first, so a
        secret that contains another is masked whole)."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text
