"""Lua scripts from ``register_script``: redis-py's ``AsyncScript``, also callable with
``client=pipe`` on our pipelines (the script is loaded before the pipeline runs, as redis-py's
pipelines do)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.commands.core import AsyncScript

__all__ = ["Script"]


class Script(AsyncScript):
    """A Lua script run by EVALSHA (loaded again after NOSCRIPT)."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        """Run the script on the client it was registered with, or on ``client``: another
        client, or a pipeline (then it is queued, and the pipeline is returned)."""
        from .pipelinebase import PipelineBase

        if client is None:
            client = self.registered_client  # may be a pipeline (pipe.register_script)
        if isinstance(client, PipelineBase):
            keys = list(keys or [])
            client.scripts.add(self)
            pipe: Any = client
            return pipe.evalsha(self.sha, len(keys), *keys, *(args or []))
        return await super().__call__(keys, args, client)
