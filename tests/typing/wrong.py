"""A deliberate type error: ``nox -s lint`` requires mypy to reject this file, proving that the
typed-application check can fail (a check that cannot fail proves nothing).  Never run."""

from __future__ import annotations

from trio_cluster import ClusterClient


async def wrong(rc: ClusterClient) -> int:
    return await rc.get("k")  # bytes | str | None is not an int
