"""``client.lock(name)``: redis-py's distributed lock (``redis.asyncio.lock.Lock``) on trio.

The same key, token and Lua scripts as redis-py, so a trio-cluster lock and a redis-py lock
on the same name exclude each other.  The trio way: ``acquire`` waits as long as the caller's
cancel scope allows (``blocking_timeout``, redis-py's argument, is an extra bound), and
leaving ``async with`` releases the lock even when the block was cancelled.
"""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace
from typing import Any, Literal, Self

import trio
from redis.exceptions import LockError, LockNotOwnedError

from ..lifetime import Scoped

__all__ = ["Lock"]

logger = logging.getLogger(__name__)

# The scripts of redis-py's Lock (same behaviour, so both clients interoperate).
_RELEASE = """
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
redis.call('del', KEYS[1])
return 1
"""
_EXTEND = """
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
local expiration = redis.call('pttl', KEYS[1])
if not expiration then
    expiration = 0
end
if expiration < 0 then
    return 0
end
local newttl = ARGV[2]
if ARGV[3] == "0" then
    newttl = ARGV[2] + expiration
end
redis.call('pexpire', KEYS[1], newttl)
return 1
"""
_REACQUIRE = """
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""

#: How long leaving ``async with`` may spend releasing the lock when the block was cancelled.
RELEASE_BUDGET = 5.0


class Lock(Scoped):
    """A lock held in key ``name``, as redis-py's.

    ``timeout``: the lock's life in seconds (None: until released).  ``sleep``: the pause
    between attempts while another holder has it.  ``blocking``: whether ``acquire`` waits
    at all.  ``blocking_timeout``: at most that many seconds of waiting (None: as long as the
    caller's cancel scope allows).  ``thread_local`` is accepted for redis-py compatibility:
    trio tasks share one thread, so the token belongs to this ``Lock`` object.
    ``raise_on_release_error``: whether leaving ``async with`` raises when the lock was no
    longer owned (else it logs a warning).
    """

    def __init__(
        self,
        redis: Any,
        name: Any,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> None:
        self.redis = redis
        self.name = name
        self.timeout = timeout
        self.sleep = sleep
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.thread_local = bool(thread_local)
        self.raise_on_release_error = raise_on_release_error
        #: Where redis-py keeps the token (``lock.local.token``); see :attr:`token`.
        self.local = SimpleNamespace(token=None)
        self.lua_release = redis.register_script(_RELEASE)
        self.lua_extend = redis.register_script(_EXTEND)
        self.lua_reacquire = redis.register_script(_REACQUIRE)

    @property
    def token(self) -> bytes | None:
        """The token this lock holds the key with (None when not held)."""
        token: bytes | None = self.local.token
        return token

    @token.setter
    def token(self, value: bytes | None) -> None:
        self.local.token = value

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} {'held' if self.token is not None else 'not held'}>"

    async def __aenter__(self) -> Self:
        # Not Scoped's: a lock not acquired has nothing to release.
        if await self.acquire():
            return self
        raise LockError("Unable to acquire lock within the time specified", lock_name=self.name)

    async def _close(self) -> None:
        # Shielded: a cancelled block must still give the lock back (bounded, though).
        with trio.CancelScope(shield=True, deadline=trio.current_time() + RELEASE_BUDGET):
            try:
                await self.release()
            except LockError:
                if self.raise_on_release_error:
                    raise
                logger.warning("Lock was unlocked or no longer owned when exiting context manager.")

    async def acquire(
        self,
        blocking: bool | None = None,
        blocking_timeout: float | None = None,
        token: str | bytes | None = None,
    ) -> bool:
        """Take the lock; True once taken.  ``blocking=False``: one attempt, False if
        another holder has it.  Otherwise retry every ``sleep`` seconds until taken, until
        ``blocking_timeout`` seconds passed (False), or until the caller's cancel scope ends."""
        if token is None:
            encoded = uuid.uuid1().hex.encode()
        else:
            encoded = self.redis.get_encoder().encode(token)
        if blocking is None:
            blocking = self.blocking
        if blocking_timeout is None:
            blocking_timeout = self.blocking_timeout
        stop = None if blocking_timeout is None else trio.current_time() + blocking_timeout
        while True:
            if await self.do_acquire(encoded):
                self.token = encoded
                return True
            if not blocking:
                return False
            if stop is not None and trio.current_time() + self.sleep > stop:
                return False
            await trio.sleep(self.sleep)

    async def do_acquire(self, token: bytes) -> bool:
        """One attempt: SET NX with the lock's life."""
        px = int(self.timeout * 1000) if self.timeout else None
        return bool(await self.redis.set(self.name, token, nx=True, px=px))

    async def locked(self) -> bool:
        """Whether anyone holds the lock."""
        return await self.redis.get(self.name) is not None

    async def owned(self) -> bool:
        """Whether this ``Lock`` holds it."""
        stored = await self.redis.get(self.name)
        if stored is not None and not isinstance(stored, bytes):
            stored = self.redis.get_encoder().encode(stored)
        return self.token is not None and stored == self.token

    async def release(self) -> None:
        """Give the lock back; ``LockNotOwnedError`` if it expired or another took it."""
        expected = self.token
        if expected is None:
            raise LockError(
                "Cannot release a lock that's not owned or is already unlocked.",
                lock_name=self.name,
            )
        try:
            released = await self.lua_release(keys=[self.name], args=[expected])
        except LockNotOwnedError:
            self.token = None
            raise
        self.token = None  # cleared only once the server answered (a cancel may retry)
        if not released:
            raise LockNotOwnedError(
                "Cannot release a lock that's no longer owned", lock_name=self.name
            )

    async def extend(self, additional_time: float, replace_ttl: bool = False) -> Literal[True]:
        """Add ``additional_time`` seconds to the lock's life (``replace_ttl``: set it)."""
        if self.token is None:
            raise LockError("Cannot extend an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise LockError("Cannot extend a lock with no timeout", lock_name=self.name)
        args = [self.token, int(additional_time * 1000), "1" if replace_ttl else "0"]
        if not await self.lua_extend(keys=[self.name], args=args):
            raise LockNotOwnedError(
                "Cannot extend a lock that's no longer owned", lock_name=self.name
            )
        return True

    async def reacquire(self) -> Literal[True]:
        """Reset the lock's life to ``timeout``."""
        if self.token is None:
            raise LockError("Cannot reacquire an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise LockError("Cannot reacquire a lock with no timeout", lock_name=self.name)
        args = [self.token, int(self.timeout * 1000)]
        if not await self.lua_reacquire(keys=[self.name], args=args):
            raise LockNotOwnedError(
                "Cannot reacquire a lock that's no longer owned", lock_name=self.name
            )
        return True
