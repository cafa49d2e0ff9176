"""A ``transaction()`` callable that meets exactly one WATCH conflict, for the tests of the
transaction helper's retry."""

from __future__ import annotations

from typing import Any


class ConflictOnce:
    """Reads ``key`` through the pipeline; on the first attempt only, changes it behind the
    watch (INCRBY ``spoil`` through ``client``'s other connections), so that attempt fails;
    then queues SET ``key`` to the value read plus ``add``.  Returns the value read."""

    def __init__(self, client: Any, key: str, *, spoil: int, add: int) -> None:
        self.client = client
        self.key = key
        self.spoil = spoil
        self.add = add
        self.attempts = 0

    async def __call__(self, pipe: Any) -> int:
        self.attempts += 1
        value = int(await pipe.get(self.key))
        if self.attempts == 1:
            await self.client.incrby(self.key, self.spoil)
        pipe.multi()
        pipe.set(self.key, value + self.add)
        return value
