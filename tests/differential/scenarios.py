"""Rows that need more than one call: scripts, pub/sub, locks, the transaction helper,
monitor and the cluster helpers, each written once per client (redis-py's synchronous
client, in a worker thread; trio-cluster's, awaited)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from .harness import Case, K, Scenario, shape

ALL = frozenset({"standalone", "auth", "cluster"})
STANDALONE = frozenset({"standalone", "auth"})
CLUSTER = frozenset({"cluster"})

Resolve = Callable[[Any], Any]
SCENARIOS: list[Case] = []


def scenario(
    family: str,
    targets: frozenset[str] = ALL,
    compare: Any = None,
    differs: dict[str, str] | None = None,
    keys: tuple[str, ...] = ("a", "b", "lock", "ch"),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a pair: the decorated function is redis-py's side; its ``ours`` attribute
    (set with ``@<ref>.ours``) trio-cluster's.  Used as::

        @scenario("scripts")
        def name(r, k): ...
        @name.ours
        async def _(r, k): ...
    """

    def register(reference: Callable[[Any, Resolve], Any]) -> Any:
        def ours(function: Callable[[Any, Resolve], Awaitable[Any]]) -> Any:
            SCENARIOS.append(
                Case(
                    family,
                    Scenario(reference.__name__, reference, function, keys),
                    compare=compare,
                    targets=targets,
                    differs=differs or {},
                )
            )
            return function

        reference.ours = ours  # type: ignore[attr-defined]
        return reference

    return register


LUA = "return {KEYS[1], ARGV[1], redis.call('incr', KEYS[1])}"

# --- scripts -------------------------------------------------------------------------------


@scenario("scripts")
def register_script_str(r: Any, k: Resolve) -> Any:
    script = r.register_script(LUA)
    return [script.sha, script(keys=[k(K.a)], args=["x"]), script(keys=[k(K.a)], args=[2])]


@register_script_str.ours
async def _(r: Any, k: Resolve) -> Any:
    script = r.register_script(LUA)
    return [
        script.sha,
        await script(keys=[k(K.a)], args=["x"]),
        await script(keys=[k(K.a)], args=[2]),
    ]


@scenario("scripts")
def register_script_bytes(r: Any, k: Resolve) -> Any:
    script = r.register_script(b"return ARGV[1]")
    return [script.sha, script(args=["b"])]


@register_script_bytes.ours
async def _(r: Any, k: Resolve) -> Any:
    script = r.register_script(b"return ARGV[1]")
    return [script.sha, await script(args=["b"])]


@scenario("scripts")
def script_after_flush(r: Any, k: Resolve) -> Any:
    script = r.register_script("return 'fresh ' .. KEYS[1]")
    r.script_flush()
    return script(keys=[k(K.a)])


@script_after_flush.ours
async def _(r: Any, k: Resolve) -> Any:
    script = r.register_script("return 'fresh ' .. KEYS[1]")
    await r.script_flush()
    return await script(keys=[k(K.a)])


@scenario("scripts", targets=STANDALONE)
def script_in_pipeline(r: Any, k: Resolve) -> Any:
    script = r.register_script("return 'piped ' .. ARGV[1]")
    r.script_flush()
    pipe = r.pipeline()
    pipe.set(k(K.a), "1")
    script(keys=[k(K.a)], args=["x"], client=pipe)
    pipe.get(k(K.a))
    return pipe.execute()


@script_in_pipeline.ours
async def _(r: Any, k: Resolve) -> Any:
    script = r.register_script("return 'piped ' .. ARGV[1]")
    await r.script_flush()
    async with r.pipeline() as pipe:
        pipe.set(k(K.a), "1")
        await script(keys=[k(K.a)], args=["x"], client=pipe)
        pipe.get(k(K.a))
        return await pipe.execute()


# --- transactions and pipelines ------------------------------------------------------------


@scenario("transactions")
def transaction_plain_function(r: Any, k: Resolve) -> Any:
    def work(pipe: Any) -> None:
        pipe.multi()
        pipe.incr(k(K.a))
        pipe.incr(k(K.a))

    return r.transaction(work, k(K.a))


@transaction_plain_function.ours
async def _(r: Any, k: Resolve) -> Any:
    def work(pipe: Any) -> None:
        pipe.multi()
        pipe.incr(k(K.a))
        pipe.incr(k(K.a))

    return await r.transaction(work, k(K.a))


@scenario("transactions")
def transaction_value_from_callable(r: Any, k: Resolve) -> Any:
    def work(pipe: Any) -> Any:
        current = pipe.get(k(K.a))
        pipe.multi()
        pipe.set(k(K.a), b"v" + (current or b""))
        return current

    return r.transaction(work, k(K.a), value_from_callable=True)


@transaction_value_from_callable.ours
async def _(r: Any, k: Resolve) -> Any:
    async def work(pipe: Any) -> Any:
        current = await pipe.get(k(K.a))
        pipe.multi()
        pipe.set(k(K.a), b"v" + (current or b""))
        return current

    return await r.transaction(work, k(K.a), value_from_callable=True)


@scenario("transactions", differs={"cluster": "cluster-watch"})
def watched_key_changes(r: Any, k: Resolve) -> Any:
    with r.pipeline() as pipe:
        pipe.watch(k(K.a))
        r.set(k(K.a), "changed")
        pipe.multi()
        pipe.set(k(K.a), "mine")
        return pipe.execute()


@watched_key_changes.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pipeline() as pipe:
        await pipe.watch(k(K.a))
        await r.set(k(K.a), "changed")
        pipe.multi()
        pipe.set(k(K.a), "mine")
        return await pipe.execute()


@scenario("pipelines", differs={t: "pipeline-discard" for t in ALL})
def pipeline_discard(r: Any, k: Resolve) -> Any:
    pipe = r.pipeline()
    pipe.set(k(K.a), 1)
    pipe.discard()
    pipe.set(k(K.b), 2)
    try:
        outcome = pipe.execute()
    except Exception as error:
        outcome = type(error).__name__
    finally:
        pipe.reset()
    return [outcome, r.get(k(K.a)), r.get(k(K.b))]


@pipeline_discard.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pipeline() as pipe:
        pipe.set(k(K.a), 1)
        await pipe.discard()
        pipe.set(k(K.b), 2)
        try:
            outcome = await pipe.execute()
        except Exception as error:
            outcome = type(error).__name__
    return [outcome, await r.get(k(K.a)), await r.get(k(K.b))]


def _redis_class(value: Any) -> str:
    """The name of the redis-py class a value is (ours subclass redis-py's exceptions)."""
    return next(c.__name__ for c in type(value).__mro__ if c.__module__ != "trio_cluster.errors")


@scenario("pipelines", targets=STANDALONE)
def pipeline_default_kind(r: Any, k: Resolve) -> Any:
    with r.pipeline() as pipe:
        pipe.set(k(K.a), 1)
        pipe.execute_command("DIFF-NO-SUCH-COMMAND")
        try:
            outcome = [_redis_class(x) for x in pipe.execute(raise_on_error=False)]
        except Exception as error:
            outcome = [_redis_class(error)]
    return [outcome, r.get(k(K.a))]


@pipeline_default_kind.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pipeline() as pipe:
        pipe.set(k(K.a), 1)
        pipe.execute_command("DIFF-NO-SUCH-COMMAND")
        try:
            outcome = [_redis_class(x) for x in await pipe.execute(raise_on_error=False)]
        except Exception as error:
            outcome = [_redis_class(error)]
    return [outcome, await r.get(k(K.a))]


def _multi_calls(info: dict[str, Any]) -> int:
    return int(info.get("cmdstat_multi", {}).get("calls", 0))


@scenario("pipelines", targets=STANDALONE)
def pipeline_default_is_atomic(r: Any, k: Resolve) -> Any:
    """What the server saw: ``pipeline()`` with no argument sends MULTI/EXEC (INFO
    commandstats), as redis-py's ``Redis.pipeline()``; ``transaction=False`` does not."""
    before = _multi_calls(r.info("commandstats"))
    with r.pipeline() as pipe:
        pipe.set(k(K.a), 1).incr(k(K.a))
        atomic = pipe.execute()
    middle = _multi_calls(r.info("commandstats"))
    with r.pipeline(transaction=False) as pipe:
        pipe.incr(k(K.a))
        plain = pipe.execute()
    return [atomic, middle - before, plain, _multi_calls(r.info("commandstats")) - middle]


@pipeline_default_is_atomic.ours
async def _(r: Any, k: Resolve) -> Any:
    before = _multi_calls(await r.info("commandstats"))
    async with r.pipeline() as pipe:
        pipe.set(k(K.a), 1).incr(k(K.a))
        atomic = await pipe.execute()
    middle = _multi_calls(await r.info("commandstats"))
    async with r.pipeline(transaction=False) as pipe:
        pipe.incr(k(K.a))
        plain = await pipe.execute()
    return [atomic, middle - before, plain, _multi_calls(await r.info("commandstats")) - middle]


@scenario("pipelines")
def pipeline_len_and_reuse(r: Any, k: Resolve) -> Any:
    pipe = r.pipeline()
    pipe.set(k(K.a), 1).incr(k(K.a))
    size = len(pipe)
    first = pipe.execute()
    pipe.get(k(K.a))
    return [size, first, pipe.execute(), len(pipe)]


@pipeline_len_and_reuse.ours
async def _(r: Any, k: Resolve) -> Any:
    pipe = r.pipeline()
    pipe.set(k(K.a), 1).incr(k(K.a))
    size = len(pipe)
    first = await pipe.execute()
    pipe.get(k(K.a))
    return [size, first, await pipe.execute(), len(pipe)]


# --- locks ---------------------------------------------------------------------------------


@scenario("locks")
def lock_lifecycle(r: Any, k: Resolve) -> Any:
    lock = r.lock(k(K.lock), timeout=10)
    steps: list[Any] = [lock.acquire(blocking=False), lock.locked(), lock.owned()]
    steps += [lock.extend(5), lock.reacquire(), lock.extend(3, replace_ttl=True)]
    steps.append(0 < r.pttl(k(K.lock)) <= 3000)
    lock.release()
    steps += [lock.locked(), lock.owned()]
    return steps


@lock_lifecycle.ours
async def _(r: Any, k: Resolve) -> Any:
    lock = r.lock(k(K.lock), timeout=10)
    steps: list[Any] = [await lock.acquire(blocking=False), await lock.locked()]
    steps.append(await lock.owned())
    steps += [await lock.extend(5), await lock.reacquire()]
    steps.append(await lock.extend(3, replace_ttl=True))
    steps.append(0 < await r.pttl(k(K.lock)) <= 3000)
    await lock.release()
    steps += [await lock.locked(), await lock.owned()]
    return steps


@scenario("locks")
def lock_held_elsewhere(r: Any, k: Resolve) -> Any:
    r.set(k(K.lock), "someone-else")
    lock = r.lock(k(K.lock), timeout=10, sleep=0.01)
    return [lock.acquire(blocking=False), lock.acquire(blocking_timeout=0.05), lock.owned()]


@lock_held_elsewhere.ours
async def _(r: Any, k: Resolve) -> Any:
    await r.set(k(K.lock), "someone-else")
    lock = r.lock(k(K.lock), timeout=10, sleep=0.01)
    return [
        await lock.acquire(blocking=False),
        await lock.acquire(blocking_timeout=0.05),
        await lock.owned(),
    ]


@scenario("locks")
def lock_context_manager(r: Any, k: Resolve) -> Any:
    with r.lock(k(K.lock), blocking_timeout=1) as lock:
        inside = [lock.owned(), r.exists(k(K.lock))]
    return [*inside, r.exists(k(K.lock))]


@lock_context_manager.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.lock(k(K.lock), blocking_timeout=1) as lock:
        inside = [await lock.owned(), await r.exists(k(K.lock))]
    return [*inside, await r.exists(k(K.lock))]


@scenario("locks")
def lock_errors(r: Any, k: Resolve) -> Any:
    lock = r.lock(k(K.lock))
    errors = []
    for attempt in (lock.release, lambda: lock.extend(1), lock.reacquire):
        try:
            attempt()
        except Exception as error:
            errors.append(type(error).__name__)
    lock.acquire()
    r.set(k(K.lock), "stolen")
    try:
        lock.release()
    except Exception as error:
        errors.append(type(error).__name__)
    return errors


@lock_errors.ours
async def _(r: Any, k: Resolve) -> Any:
    lock = r.lock(k(K.lock))
    errors = []
    for attempt in (lock.release, lambda: lock.extend(1), lock.reacquire):
        try:
            await attempt()
        except Exception as error:
            errors.append(type(error).__name__)
    await lock.acquire()
    await r.set(k(K.lock), "stolen")
    try:
        await lock.release()
    except Exception as error:
        errors.append(type(error).__name__)
    return errors


# --- pub/sub -------------------------------------------------------------------------------


@contextmanager
def _subscribed(r: Any, k: Resolve) -> Iterator[Any]:
    """redis-py's PubSub subscribed to the ``ch`` channel, its confirmation read."""
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(k(K.ch))
        pubsub.get_message(timeout=5)
        yield pubsub
    finally:
        pubsub.close()


@asynccontextmanager
async def _subscribed_ours(r: Any, k: Resolve) -> AsyncIterator[Any]:
    """:func:`_subscribed` for trio-cluster."""
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(k(K.ch))
        await pubsub.get_message(timeout=5)
        yield pubsub


def _subscribe_and_publish(name: str, sharded: bool, payload: str) -> None:
    """Register the pair ``name``: subscribe to a channel, read the confirmation, publish to
    it (the receivers counted), read the message; classic or sharded (SSUBSCRIBE,
    ``get_sharded_message``, SPUBLISH) pub/sub."""
    subscribe, get, publish = (
        ("ssubscribe", "get_sharded_message", "spublish")
        if sharded
        else ("subscribe", "get_message", "publish")
    )

    def reference(r: Any, k: Resolve) -> Any:
        pubsub = r.pubsub()
        try:
            getattr(pubsub, subscribe)(k(K.ch))
            confirmation = getattr(pubsub, get)(timeout=5)
            receivers = getattr(r, publish)(k(K.ch), payload)
            return [confirmation, receivers, getattr(pubsub, get)(timeout=5)]
        finally:
            pubsub.close()

    async def ours(r: Any, k: Resolve) -> Any:
        async with r.pubsub() as pubsub:
            await getattr(pubsub, subscribe)(k(K.ch))
            confirmation = await getattr(pubsub, get)(timeout=5)
            receivers = await getattr(r, publish)(k(K.ch), payload)
            return [confirmation, receivers, await getattr(pubsub, get)(timeout=5)]

    reference.__name__ = name
    scenario("pubsub")(reference).ours(ours)


_subscribe_and_publish("publish_counts_the_subscriber", sharded=False, payload="hello")


@scenario(
    "pubsub",
    differs={t: "pubsub-ping-decoded" for t in ("decoded", "cluster-decoded")},
)
def pubsub_ping(r: Any, k: Resolve) -> Any:
    with _subscribed(r, k) as pubsub:
        pubsub.ping("hi")
        return pubsub.get_message(timeout=5)


@pubsub_ping.ours
async def _(r: Any, k: Resolve) -> Any:
    async with _subscribed_ours(r, k) as pubsub:
        await pubsub.ping("hi")
        return await pubsub.get_message(timeout=5)


@scenario(
    "pubsub",
    differs={t: "pubsub-ping-decoded" for t in ("decoded", "cluster-decoded")},
)
def pubsub_ping_without_message(r: Any, k: Resolve) -> Any:
    with _subscribed(r, k) as pubsub:
        pubsub.ping()
        return pubsub.get_message(timeout=5)


@pubsub_ping_without_message.ours
async def _(r: Any, k: Resolve) -> Any:
    async with _subscribed_ours(r, k) as pubsub:
        await pubsub.ping()
        return await pubsub.get_message(timeout=5)


@scenario("pubsub")
def get_message_timeout(r: Any, k: Resolve) -> Any:
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(k(K.ch))
        confirmation = pubsub.get_message(timeout=5, ignore_subscribe_messages=True)
        nothing = pubsub.get_message(timeout=0.05)
        return [confirmation, nothing]
    finally:
        pubsub.close()


@get_message_timeout.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(k(K.ch))
        confirmation = await pubsub.get_message(timeout=5, ignore_subscribe_messages=True)
        nothing = await pubsub.get_message(timeout=0.05)
        return [confirmation, nothing]


@scenario("pubsub")
def get_message_without_timeout(r: Any, k: Resolve) -> Any:
    # Nothing published: redis-py's default timeout=0.0 returns None at once.
    with _subscribed(r, k) as pubsub:
        return [pubsub.get_message(), pubsub.get_message(timeout=0)]


@get_message_without_timeout.ours
async def _(r: Any, k: Resolve) -> Any:
    async with _subscribed_ours(r, k) as pubsub:
        # A deadline only so that a regression fails instead of hanging the suite.
        with trio.fail_after(5):
            return [await pubsub.get_message(), await pubsub.get_message(timeout=0)]


@scenario("pubsub")
def get_message_timeout_none(r: Any, k: Resolve) -> Any:
    # timeout=None waits for one message; an ignored confirmation makes it return None.
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(k(K.ch))
        ignored = pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        receivers = r.publish(k(K.ch), "waited")
        return [ignored, receivers, pubsub.get_message(timeout=None)]
    finally:
        pubsub.close()


@get_message_timeout_none.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(k(K.ch))
        ignored = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        receivers = await r.publish(k(K.ch), "waited")
        return [ignored, receivers, await pubsub.get_message(timeout=None)]


@scenario("pubsub")
def subscriptions_as_dictionaries(r: Any, k: Resolve) -> Any:
    # channels / patterns / shard_channels: name -> handler, names decoded under
    # decode_responses; an unsubscribed name leaves once its confirmation is read.
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(k(K.ch), k(K.ch) + "2")
        pubsub.psubscribe(k(K.ch) + "*")
        pubsub.ssubscribe(k(K.ch) + "s")
        for _ in range(3):
            pubsub.get_message(timeout=5)
        pubsub.get_sharded_message(timeout=5)
        # Copies: redis-py's dictionaries are live (ours are snapshots).
        subscribed = [
            dict(pubsub.channels),
            dict(pubsub.patterns),
            dict(pubsub.shard_channels),
            pubsub.subscribed,
        ]
        pubsub.unsubscribe(k(K.ch))
        pubsub.get_message(timeout=5)
        return [subscribed, pubsub.channels]
    finally:
        pubsub.close()


@subscriptions_as_dictionaries.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(k(K.ch), k(K.ch) + "2")
        await pubsub.psubscribe(k(K.ch) + "*")
        await pubsub.ssubscribe(k(K.ch) + "s")
        for _ in range(4):
            await pubsub.get_message(timeout=5)
        subscribed = [pubsub.channels, pubsub.patterns, pubsub.shard_channels, pubsub.subscribed]
        await pubsub.unsubscribe(k(K.ch))
        await pubsub.get_message(timeout=5)
        return [subscribed, pubsub.channels]


@scenario("pubsub")
def pattern_and_listen(r: Any, k: Resolve) -> Any:
    pubsub = r.pubsub()
    try:
        pubsub.psubscribe(k(K.ch) + "*")
        pubsub.get_message(timeout=5)
        r.publish(k(K.ch) + "x", "1")
        for message in pubsub.listen():
            return message
    finally:
        pubsub.close()


@pattern_and_listen.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        await pubsub.psubscribe(k(K.ch) + "*")
        await pubsub.get_message(timeout=5)
        await r.publish(k(K.ch) + "x", "1")
        async for message in pubsub.listen():
            return message


@scenario("pubsub")
def listen_until_unsubscribed(r: Any, k: Resolve) -> Any:
    # listen() ends at once with nothing subscribed, and once everything is unsubscribed
    # (after the confirmation).
    pubsub = r.pubsub()
    try:
        seen = [list(pubsub.listen())]
        pubsub.subscribe(k(K.ch))
        for message in pubsub.listen():
            seen.append(message)
            if message["type"] == "subscribe":
                r.publish(k(K.ch), "last")
            elif message["type"] == "message":
                pubsub.unsubscribe()
        return seen
    finally:
        pubsub.close()


@listen_until_unsubscribed.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        with trio.fail_after(5):  # a regression fails instead of hanging the suite
            seen: list[Any] = [[m async for m in pubsub.listen()]]
            await pubsub.subscribe(k(K.ch))
            async for message in pubsub.listen():
                seen.append(message)
                if message["type"] == "subscribe":
                    await r.publish(k(K.ch), "last")
                elif message["type"] == "message":
                    await pubsub.unsubscribe()
        return seen


# --- monitor -------------------------------------------------------------------------------


def _monitored(entry: dict[str, Any]) -> Any:
    return [sorted(entry), entry["command"], entry["client_type"]]


@scenario("server", targets=STANDALONE, compare=_monitored)
def monitor_sees_a_command(r: Any, k: Resolve) -> Any:
    with r.monitor() as monitor:
        r.set(k(K.a), 'quoted "value"')
        while True:
            entry = monitor.next_command()
            if entry["command"].startswith("SET"):
                return entry


@monitor_sees_a_command.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.monitor() as monitor:
        await r.set(k(K.a), 'quoted "value"')
        with trio.fail_after(10):
            while True:
                entry = await monitor.next_command()
                if entry["command"].startswith("SET"):
                    return entry


# --- two-word commands through execute_command, callbacks --------------------------------------


@scenario("server")
def set_response_callback_full_name(r: Any, k: Resolve) -> Any:
    r.set_response_callback("CONFIG GET", lambda reply, **_: ("custom", type(reply).__name__))
    try:
        return r.config_get("maxmemory")
    finally:
        r.set_response_callback("CONFIG GET", None)


@set_response_callback_full_name.ours
async def _(r: Any, k: Resolve) -> Any:
    r.set_response_callback("CONFIG GET", lambda reply, **_: ("custom", type(reply).__name__))
    return await r.config_get("maxmemory")


# --- cluster helpers -----------------------------------------------------------------------


def _pair(
    name: str,
    reference: Callable[[Any, Resolve], Any],
    ours: Callable[[Any, Resolve], Awaitable[Any]],
    *,
    compare: Any = None,
    targets: frozenset[str] = CLUSTER,
) -> None:
    SCENARIOS.append(
        Case("cluster helpers", Scenario(name, reference, ours), compare=compare, targets=targets)
    )


def _both(
    name: str,
    call: Callable[[Any, Resolve], Any],
    *,
    compare: Any = None,
    targets: frozenset[str] = CLUSTER,
) -> None:
    """A :func:`_pair` whose call reads the same on both clients (ours is awaited)."""
    _pair(name, call, call, compare=compare, targets=targets)


def _names(nodes: Any) -> Any:
    return sorted((n.name, n.server_type) for n in nodes)


def _first(nodes: Any) -> Any:
    """The same node on both sides (the lists' orders differ)."""
    return min(nodes, key=lambda n: n.name)


def _cluster_wide(info: dict[str, Any]) -> Any:
    """The CLUSTER INFO fields every node reports alike."""
    fields = ("cluster_state", "cluster_slots_assigned", "cluster_known_nodes", "cluster_size")
    return [info[f] for f in fields]


_pair("keyslot", lambda r, k: r.keyslot(k(K.a)), lambda r, k: _value(r.keyslot(k(K.a))))
_both("cluster_keyslot", lambda r, k: r.cluster_keyslot("x"))
_both("cluster_info", lambda r, k: r.cluster_info(), compare=_cluster_wide)
_both(
    "execute_command CLUSTER INFO",
    lambda r, k: r.execute_command("CLUSTER INFO"),
    compare=_cluster_wide,
)
_both("cluster_nodes", lambda r, k: r.cluster_nodes(), compare=lambda d: sorted(d))
_both("cluster_slots", lambda r, k: r.cluster_slots())
_both("execute_command CLUSTER SLOTS", lambda r, k: r.execute_command("CLUSTER SLOTS"))
_both("cluster_shards", lambda r, k: r.cluster_shards(), compare=shape)
_both("cluster_countkeysinslot", lambda r, k: r.cluster_countkeysinslot(r.keyslot(k(K.a))))
_pair("get_nodes", lambda r, k: _names(r.get_nodes()), lambda r, k: _value(_names(r.get_nodes())))
_pair(
    "get_primaries",
    lambda r, k: _names(r.get_primaries()),
    lambda r, k: _value(_names(r.get_primaries())),
)
_pair(
    "get_replicas",
    lambda r, k: _names(r.get_replicas()),
    lambda r, k: _value(_names(r.get_replicas())),
)
_pair(
    "get_node",
    lambda r, k: r.get_node(node_name=r.get_primaries()[0].name).server_type,
    lambda r, k: _value(r.get_node(node_name=r.get_primaries()[0].name).server_type),
)
_pair(
    "get_node unknown",
    lambda r, k: r.get_node("127.0.0.1", 1),
    lambda r, k: _value(r.get_node("127.0.0.1", 1)),
)
_pair(
    "get_node_from_key",
    lambda r, k: r.get_node_from_key(k(K.a)).name,
    lambda r, k: _value(r.get_node_from_key(k(K.a)).name),
)
_pair(
    "ping target_nodes=primaries",
    lambda r, k: r.ping(target_nodes=r.PRIMARIES),
    lambda r, k: r.ping(target_nodes="primaries"),
)
_pair(
    "dbsize target_nodes=get_primaries()",
    lambda r, k: r.dbsize(target_nodes=r.get_primaries()) >= 0,
    lambda r, k: _then(r.dbsize(target_nodes=r.get_primaries()), lambda n: n >= 0),
)
_pair(
    "config_get target_nodes=all",
    lambda r, k: r.config_get("maxmemory", target_nodes=r.ALL_NODES),
    lambda r, k: r.config_get("maxmemory", target_nodes="all"),
    compare=lambda d: sorted(d.values(), key=repr),
)
_pair(
    "info target_nodes=a node",
    lambda r, k: r.info("server", target_nodes=_first(r.get_primaries()))["tcp_port"],
    lambda r, k: _then(
        r.info("server", target_nodes=_first(r.get_primaries())), lambda d: d["tcp_port"]
    ),
)
_both("cluster_myid", lambda r, k: r.cluster_myid(_first(r.get_primaries())))
_both(
    "mget_nonatomic",
    lambda r, k: r.mget_nonatomic(["diff-na-1", "diff-na-2", "diff-na-3", "diff-na-1"]),
)
_pair(
    "mset_nonatomic",
    lambda r, k: [
        r.mset_nonatomic({"diff-na-4": "1", "diff-na-5": "2"}),
        r.mget_nonatomic("diff-na-4", "diff-na-5"),
        r.delete("diff-na-4", "diff-na-5"),
    ],
    lambda r, k: _sequence(
        lambda: r.mset_nonatomic({"diff-na-4": "1", "diff-na-5": "2"}),
        lambda: r.mget_nonatomic("diff-na-4", "diff-na-5"),
        lambda: r.delete("diff-na-4", "diff-na-5"),
    ),
)
_both("pubsub_numsub", lambda r, k: r.pubsub_numsub("diff-a", "diff-b"), targets=ALL)


async def _value(value: Any) -> Any:
    return value


async def _then(awaitable: Awaitable[Any], function: Callable[[Any], Any]) -> Any:
    return function(await awaitable)


async def _sequence(*steps: Callable[[], Awaitable[Any]]) -> list[Any]:
    return [await step() for step in steps]


# --- scan iterators ------------------------------------------------------------------------


def _scan_setup(r: Any, k: Resolve) -> None:
    r.mset({k(K.a): "1", k(K.b): "2"})
    r.hset(k(K.h), mapping={"f1": "1", "f2": "2"})
    r.sadd(k(K.x), "m1", "m2")
    r.zadd(k(K.z), {"m1": 1, "m2": 2})


async def _scan_setup_ours(r: Any, k: Resolve) -> None:
    await r.mset({k(K.a): "1", k(K.b): "2"})
    await r.hset(k(K.h), mapping={"f1": "1", "f2": "2"})
    await r.sadd(k(K.x), "m1", "m2")
    await r.zadd(k(K.z), {"m1": 1, "m2": 2})


@scenario("scan iterators", keys=("a", "b", "h", "x", "z"))
def scan_iterators(r: Any, k: Resolve) -> Any:
    _scan_setup(r, k)
    return [
        sorted(r.scan_iter(match=k(K.a).replace(":a", ":*"))),
        sorted(r.scan_iter(match=k(K.a).replace(":a", ":*"), _type="hash")),
        sorted(r.hscan_iter(k(K.h))),
        sorted(r.sscan_iter(k(K.x))),
        sorted(r.zscan_iter(k(K.z))),
    ]


@scan_iterators.ours
async def _(r: Any, k: Resolve) -> Any:
    await _scan_setup_ours(r, k)
    pattern = k(K.a).replace(":a", ":*")
    return [
        sorted([key async for key in r.scan_iter(match=pattern)]),
        sorted([key async for key in r.scan_iter(match=pattern, _type="hash")]),
        sorted([item async for item in r.hscan_iter(k(K.h))]),
        sorted([item async for item in r.sscan_iter(k(K.x))]),
        sorted([item async for item in r.zscan_iter(k(K.z))]),
    ]


# --- more pub/sub --------------------------------------------------------------------------


_subscribe_and_publish("sharded_pubsub", sharded=True, payload="sharded")


@scenario("pubsub")
def unsubscribe_all(r: Any, k: Resolve) -> Any:
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(k(K.ch), k(K.ch) + "2")
        first = [pubsub.get_message(timeout=5), pubsub.get_message(timeout=5)]
        pubsub.unsubscribe()
        rest = [pubsub.get_message(timeout=5), pubsub.get_message(timeout=5)]
        return [
            sorted(m["channel"] for m in first),
            sorted(m["channel"] for m in rest),
            rest[1]["data"],
        ]
    finally:
        pubsub.close()


@unsubscribe_all.ours
async def _(r: Any, k: Resolve) -> Any:
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(k(K.ch), k(K.ch) + "2")
        first = [await pubsub.get_message(timeout=5), await pubsub.get_message(timeout=5)]
        await pubsub.unsubscribe()
        rest = [await pubsub.get_message(timeout=5), await pubsub.get_message(timeout=5)]
        return [
            sorted(m["channel"] for m in first),
            sorted(m["channel"] for m in rest),
            rest[1]["data"],
        ]


_pair(
    "node flags as attributes",
    lambda r, k: [r.PRIMARIES, r.REPLICAS, r.ALL_NODES, r.RANDOM, r.DEFAULT_NODE],
    lambda r, k: _value([r.PRIMARIES, r.REPLICAS, r.ALL_NODES, r.RANDOM, r.DEFAULT_NODE]),
)
_pair(
    "keys target_nodes=all",
    lambda r, k: sorted(r.keys("{diff:nothing-here}*", target_nodes=r.ALL_NODES)),
    lambda r, k: _then(r.keys("{diff:nothing-here}*", target_nodes="all"), sorted),
)


@scenario("pubsub")
def message_handlers(r: Any, k: Resolve) -> Any:
    received: list[Any] = []
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(**{k(K.ch): received.append})
        pubsub.psubscribe(**{k(K.ch) + "-p*": received.append})
        confirmations = [pubsub.get_message(timeout=5), pubsub.get_message(timeout=5)]
        r.publish(k(K.ch), "one")
        handled = pubsub.get_message(timeout=5)
        r.publish(k(K.ch) + "-px", "two")
        return [confirmations, handled, pubsub.get_message(timeout=5), received]
    finally:
        pubsub.close()


@message_handlers.ours
async def _(r: Any, k: Resolve) -> Any:
    received: list[Any] = []

    async def handler(message: Any) -> None:  # async handlers are awaited
        received.append(message)

    async with r.pubsub() as pubsub:
        await pubsub.subscribe(**{k(K.ch): received.append})
        await pubsub.psubscribe(**{k(K.ch) + "-p*": handler})
        confirmations = [await pubsub.get_message(timeout=5), await pubsub.get_message(timeout=5)]
        await r.publish(k(K.ch), "one")
        handled = await pubsub.get_message(timeout=5)
        await r.publish(k(K.ch) + "-px", "two")
        return [confirmations, handled, await pubsub.get_message(timeout=5), received]
