"""Automatic pipelining: concurrent commands for one node share a connection and a write.

Opt-in with ``PoolOptions(autopipeline=True)``.  A caller's command joins the node's queue and
the caller parks.  The first command of a scheduler pass wakes a *batch worker* (a task in the
pool's nursery, parked between batches; a new one is started only when every worker is busy
with a batch); the worker runs in the next pass, once every task of this pass has queued its
command, borrows one connection from the pool, writes the whole queue in one system call and
reads the replies in order, handing each to its caller.  A cluster node's circuit breaker is
consulted once per batch: an open breaker fails the queue unsent, and a batch's outcome counts
once, not once per command.

Every guarantee of a command on its own connection holds:

* Exactly once, in order: replies are matched to callers by position in the batch, read
  through :meth:`Connection.execute_encoded` (the connection's own books and exactly-once
  checks), and each caller is woken once.
* Cancellation: a caller cancelled while its command is still queued takes it out (it is never
  sent); one cancelled after the write leaves its slot in the batch, whose reply is still read
  and thrown away.  No reply ever reaches another caller.
* Timeouts are the connection's typed ones (``ReadTimeoutError``, ``WriteTimeoutError``).
* A failure of the connection fails exactly the commands of that batch, each with its own copy
  of the error; when not one byte went out, the error says so (``was_unsent``) and the caller's
  retry rules resend it.  Queued commands of later batches are untouched, unless that failure
  opened the node's breaker: then they get its refusal at once (never sent).

Only commands that neither block nor depend on connection state come here (the node call
decides, by the command's spec: ``routing.specs.CommandSpec.shares_connection``); blocking
commands, transactions, ``WATCH`` and pub/sub keep connections of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import outcome
import trio
from redis import exceptions as rex

from ..conn.connection import mark_unsent
from ..wire.protocol import EncodableArg, encode_command

__all__ = ["MAX_BATCH", "AutoPipeliner", "BatchBreaker", "BatchPool"]

#: Most commands written in one batch; the rest wait for the next batch (which starts at once).
MAX_BATCH = 512

_QUEUED = 0
_SENT = 1
_GONE = 2  # cancelled while queued: never sent


class PipelinedConnection(Protocol):
    """What the pipeliner needs from a pooled connection."""

    relaxed_until: float
    """Until when a maintenance notice relaxed its timeouts (a slow reply is expected)."""
    sent_at: float
    """When its last round trip was written."""

    async def execute_encoded(self, data: bytes, count: int) -> list[Any]:
        """Write ``count`` encoded commands at once; their replies in order (errors as values)."""
        ...


class BatchPool(Protocol):
    """What the pipeliner needs from its pool (the pool sits above it: it makes the pipeliner)."""

    node_name: str

    def spawn_job(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` in the pool's nursery."""
        ...

    async def get(self) -> Any:
        """A connection of the pool."""
        ...

    def put(self, conn: Any) -> None:
        """Give a connection back."""
        ...


class BatchBreaker(Protocol):
    """What the pipeliner needs from a circuit breaker (a cluster node's)."""

    def before_call(self) -> None:
        """Raise (an unsent ``ConnectionError``) if nothing may be sent now."""
        ...

    def record(self, error: BaseException | None, commands: int = 1) -> None:
        """How a call carrying ``commands`` commands went."""
        ...

    def record_reply(self, sent_at: float, commands: int = 1) -> bool:
        """Replies came for a call sent at ``sent_at``; True if they were too slow (then
        counted as failures)."""
        ...

    def record_get_failure(self, error: BaseException) -> None:
        """A pool get failed before anything was sent."""
        ...

    def abandon_probe(self) -> None:
        """A call that decided nothing about the node."""
        ...


class _Call:
    """One caller's command on its way through a batch."""

    __slots__ = ("data", "state", "task")

    def __init__(self, data: bytes, task: trio.lowlevel.Task) -> None:
        self.data = data
        self.task: trio.lowlevel.Task | None = task  # None once nobody waits for the reply
        self.state = _QUEUED

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """The caller is cancelled while parked (so nothing has been handed to it yet)."""
        if self.state is _QUEUED:
            self.state = _GONE  # the batch skips it: never sent
        self.task = None  # a reply that comes is read and thrown away
        return trio.lowlevel.Abort.SUCCEEDED


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one caller (an exception object raised in several tasks would
    have their tracebacks piled onto it); its cause and the unsent mark come along."""
    try:
        mine = copy.copy(error)
    except Exception:
        return error
    mine.__cause__ = error.__cause__
    mine.__traceback__ = None
    return mine


class AutoPipeliner:
    """The queue and batches of one pool (one node).  Made by the pool when
    ``PoolOptions.autopipeline`` is set, with the node's breaker if it has one; its batch jobs
    run in the pool's nursery."""

    __slots__ = (
        "_breaker",
        "_idle_workers",
        "_pool",
        "_queue",
        "_scheduled",
        "batches",
        "commands",
    )

    def __init__(self, pool: BatchPool, breaker: BatchBreaker | None = None) -> None:
        self._pool = pool
        #: The node's circuit breaker (a cluster node's), checked once per batch.
        self._breaker = breaker
        self._queue: list[_Call] = []
        #: A worker has been woken (or started) and has not taken the queue yet.
        self._scheduled = False
        #: Batch workers parked between batches (starting a task per batch costs more).
        self._idle_workers: list[trio.lowlevel.Task] = []
        #: Batches written so far, and the commands they carried (for stats and tests).
        self.batches = 0
        self.commands = 0

    async def execute(self, args: Sequence[EncodableArg]) -> Any:
        """Run one command through the node's shared connection; return its reply, or raise
        its error (an error reply as its typed error, a failure of the connection as a
        ``redis.exceptions.ConnectionError`` / ``TimeoutError`` subclass)."""
        data = encode_command(args)  # bad arguments are refused here, before anything is sent
        call = _Call(data, trio.lowlevel.current_task())
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._wake_worker()
            except BaseException:
                self._scheduled = False
                self._queue.remove(call)
                raise
        # The checkpoint: a caller cancelled already is aborted here, its command unsent.
        reply = await trio.lowlevel.wait_task_rescheduled(call.abort)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def fail_queued(self, error: BaseException) -> None:
        """Fail every command still queued (none of them was sent): the pool is closing."""
        queue, self._queue = self._queue, []
        for call in queue:
            if call.state is _QUEUED:
                call.state = _GONE
                _deliver(call, _own_copy(error))

    def _wake_worker(self) -> None:
        """Have a worker take the queue in the next scheduler pass."""
        if self._idle_workers:
            trio.lowlevel.reschedule(self._idle_workers.pop())
        else:
            self._pool.spawn_job(self._work)

    async def _work(self) -> None:
        """A batch worker: run a batch, park until woken for the next one (until the pool's
        nursery is cancelled)."""
        me = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle_workers.remove(me)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await self._run_batch()
            self._idle_workers.append(me)
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _run_batch(self) -> None:
        """One batch: borrow a connection, take the queue, write it, hand out the replies."""
        pool = self._pool
        breaker = self._breaker
        try:
            if breaker is not None:
                breaker.before_call()  # an open breaker: CircuitOpenError, marked unsent
            try:
                conn: PipelinedConnection = await pool.get()
            except BaseException as exc:
                if breaker is not None:
                    breaker.record_get_failure(exc)
                raise
        except BaseException as exc:
            # Nothing was sent: every queued command gets the error, marked unsent, so their
            # callers' retry rules decide.
            self._scheduled = False
            if isinstance(exc, Exception):
                self.fail_queued(mark_unsent(exc))
                return
            self.fail_queued(
                mark_unsent(rex.ConnectionError(f"pool for {pool.node_name} is closing"))
            )
            raise
        calls = self._take()
        if not calls:
            pool.put(conn)
            if breaker is not None:
                breaker.abandon_probe()  # every caller left: nothing was asked of the node
            return
        self.batches += 1
        self.commands += len(calls)
        try:
            replies = await conn.execute_encoded(b"".join([c.data for c in calls]), len(calls))
        except BaseException as exc:
            if breaker is not None:
                # Once for the batch (a timeout: once per command it held).
                breaker.record(exc, len(calls))
                if self._queue:
                    self._refuse_queued(breaker)
            # The connection's failure is every command's of this batch, and no other's.
            error: BaseException = exc
            if not isinstance(exc, Exception):
                error = rex.ConnectionError(
                    f"pool for {pool.node_name} closed with the command in flight"
                )
            for call in calls:
                _deliver(call, _own_copy(error))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            pool.put(conn)
        if breaker is not None:
            if conn.relaxed_until > conn.sent_at:  # a node under maintenance: slow expected
                breaker.record(None)
            elif breaker.record_reply(conn.sent_at, len(calls)) and self._queue:
                self._refuse_queued(breaker)  # too slow: it may have opened the breaker
        for call, reply in zip(calls, replies, strict=True):
            _deliver(call, reply)

    def _refuse_queued(self, breaker: BatchBreaker) -> None:
        """If the breaker refuses calls now (this batch's failure opened it), the commands
        still queued, never sent, get its refusal at once rather than wait for a connection
        to a node known bad (a dial into a hung node waits for its timeout)."""
        try:
            breaker.before_call()
        except Exception as refusal:
            self.fail_queued(refusal)
        else:
            breaker.abandon_probe()  # it let a call through: none was made

    def _take(self) -> list[_Call]:
        """The live queued calls, at most :data:`MAX_BATCH`; more left over start a new batch."""
        queue, self._queue = self._queue, []
        self._scheduled = False
        calls = [c for c in queue if c.state is _QUEUED]
        if len(calls) > MAX_BATCH:
            self._queue = calls[MAX_BATCH:]
            calls = calls[:MAX_BATCH]
            self._scheduled = True
            self._wake_worker()
        for call in calls:
            call.state = _SENT
        return calls


def _deliver(call: _Call, reply: Any) -> None:
    """Wake the caller with its reply (an exception is raised there), once; a reply nobody
    waits for any more is dropped."""
    task = call.task
    if task is not None:
        call.task = None
        trio.lowlevel.reschedule(task, outcome.Value(reply))
