"""Where a PubSub's subscriptions go, as pure functions of the cluster's topology (an
immutable :class:`~trio_cluster.routing.topology.Topology`; None for a single node).

* The *classic* connection carries channels and patterns.  In a cluster, as redis-py's
  ``ClusterPubSub``, it goes to the primary of the first channel's (or pattern's) slot, where
  ``publish()`` on that channel also goes, so that PUBLISH counts this subscriber; to another
  primary if that one just failed (the cluster forwards every PUBLISH to every node anyway).
* Each *shard* channel goes to the primary of its slot, one connection per primary; on a
  single node the classic connection carries them too.
* SSUBSCRIBE's channels must share a slot: one command per slot.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Final, Literal

from ..errors import ClusterDownError
from ..routing.rules import key_slot
from ..routing.topology import Address, Topology

__all__ = ["CLASSIC", "LinkKey", "by_slot", "classic_address", "new_links", "shard_link"]

#: The key of the classic connection (a shard connection's key is its primary's address).
CLASSIC: Final = "classic"
LinkKey = Address | Literal["classic"]


def classic_address(
    topology: Topology | None,
    standalone: Address,
    home: bytes | None,
    avoid: Address | None = None,
    choose: Callable[[Sequence[Address]], Address] = random.choice,
) -> Address:
    """Where the classic connection goes: ``standalone`` on a single node; else the primary
    of ``home``'s slot (the first name subscribed), unless that is ``avoid`` (it just
    failed), else a primary picked by ``choose`` (random: many PubSubs spread out).  Raises
    :class:`~trio_cluster.errors.ClusterDownError` when the topology has no primary."""
    if topology is None:
        return standalone
    if home is not None:
        shard = topology.shard_for(key_slot(home))
        if shard is not None and shard.primary != avoid:
            return shard.primary
    primaries = topology.primaries
    preferred = [a for a in primaries if a != avoid] or primaries
    if not preferred:
        raise ClusterDownError("the cluster client knows no primary")
    return choose(preferred)


def shard_link(topology: Topology | None, name: bytes) -> LinkKey | None:
    """The connection that carries shard channel ``name``: the classic one on a single
    node, else its slot's primary (None while no known node serves the slot)."""
    if topology is None:
        return CLASSIC
    shard = topology.shard_for(key_slot(name))
    return shard.primary if shard is not None else None


def new_links(
    topology: Topology | None, names: Iterable[bytes], existing: Collection[LinkKey]
) -> set[LinkKey]:
    """The connections that placing shard channels ``names`` would open, beyond
    ``existing`` (the keys of the connections open or opening).  Names with no known owner
    open nothing."""
    wanted = {shard_link(topology, n) for n in names}
    return {key for key in wanted if key is not None and key not in existing}


def by_slot(names: Iterable[bytes]) -> list[list[bytes]]:
    """``names`` grouped by slot, each group in the given order, groups in the order of
    their first name: the SSUBSCRIBE (or SUNSUBSCRIBE) commands to send."""
    groups: dict[int, list[bytes]] = {}
    for name in names:
        groups.setdefault(key_slot(name), []).append(name)
    return list(groups.values())
