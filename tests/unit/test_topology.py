"""Topology parsing on replies captured from a real server (Redis 7.0, 2 shards x 1 replica):
CLUSTER SHARDS as a RESP3 map and as a RESP2 flat list, CLUSTER SLOTS, failed nodes, unknown
endpoints, and address remapping."""

from __future__ import annotations

from typing import Any

from trio_cluster.routing.topology import SLOTS, Topology, parse_shards, parse_slots

P1, R1, P2, R2 = 38943, 44587, 55167, 51471
LOCAL = "127.0.0.1"
QUERIED = ("10.9.9.9", P1)


def _node3(port: int, role: str, health: str = "online", endpoint: bytes = b"127.0.0.1") -> Any:
    return {
        b"id": b"%040d" % port,
        b"port": port,
        b"ip": b"127.0.0.1",
        b"endpoint": endpoint,
        b"role": role.encode(),
        b"replication-offset": 14,
        b"health": health.encode(),
    }


def _flat(mapping: dict[bytes, Any]) -> list[Any]:
    return [x for pair in mapping.items() for x in pair]


# Captured with ``protocol=3`` (trimmed ids): a list of maps.
SHARDS_RESP3 = [
    {b"slots": [8192, 16383], b"nodes": [_node3(P1, "master"), _node3(R1, "replica")]},
    {b"slots": [0, 8191], b"nodes": [_node3(P2, "master"), _node3(R2, "replica")]},
]
# The same reply with ``protocol=2``: flat lists of alternating keys and values.
SHARDS_RESP2 = [
    [b"slots", shard[b"slots"], b"nodes", [_flat(n) for n in shard[b"nodes"]]]
    for shard in SHARDS_RESP3
]
# CLUSTER SLOTS over RESP3 (the fourth element of each node is a metadata map).
SLOTS_RESP3 = [
    [0, 8191, [b"127.0.0.1", P2, b"id2", {}], [b"127.0.0.1", R2, b"idr2", {}]],
    [8192, 16383, [b"127.0.0.1", P1, b"id1", {}], [b"127.0.0.1", R1, b"idr1", {}]],
]


def _expected() -> dict[tuple[str, int], tuple[tuple[tuple[str, int], ...], tuple[Any, ...]]]:
    return {
        (LOCAL, P2): (((LOCAL, R2),), ((0, 8191),)),
        (LOCAL, P1): (((LOCAL, R1),), ((8192, 16383),)),
    }


def _shape(topology: Topology) -> dict[Any, Any]:
    return {s.primary: (s.replicas, s.ranges) for s in topology.shards}


def test_shards_resp3_and_resp2_parse_the_same() -> None:
    three = parse_shards(SHARDS_RESP3, QUERIED, None)
    two = parse_shards(SHARDS_RESP2, QUERIED, None)
    assert _shape(three) == _shape(two) == _expected()
    assert three.covered == SLOTS
    assert three.shard_for(0).primary == (LOCAL, P2)  # type: ignore[union-attr]
    assert three.shard_for(16383).primary == (LOCAL, P1)  # type: ignore[union-attr]
    assert set(three.nodes) == {(LOCAL, p) for p in (P1, R1, P2, R2)}
    assert three.nodes[:2] == three.primaries


def test_slots_fallback_parses_like_shards() -> None:
    assert _shape(parse_slots(SLOTS_RESP3, QUERIED, None)) == _expected()


def test_failed_replica_is_skipped_and_failed_primary_drops_its_shard() -> None:
    reply = [
        [b"slots", [8192, 16383], b"nodes",
         [_flat(_node3(P1, "master")), _flat(_node3(R1, "replica", "fail"))]],
        [b"slots", [0, 8191], b"nodes",
         [_flat(_node3(P2, "master", "fail")), _flat(_node3(R2, "replica", "loading"))]],
    ]  # fmt: skip
    topology = parse_shards(reply, QUERIED, None)
    assert _shape(topology) == {(LOCAL, P1): ((), ((8192, 16383),))}
    assert topology.covered == SLOTS - 8192
    assert topology.shard_for(5) is None


def test_unknown_endpoint_means_the_queried_host() -> None:
    # Captured with cluster-preferred-endpoint-type unknown-endpoint: SHARDS says "" and
    # SLOTS says NULL; both mean "the host you asked".
    shards = [[b"slots", [0, 16383], b"nodes",
               [_flat(_node3(P1, "master", endpoint=b"")),
                _flat(_node3(R1, "replica", endpoint=b""))]]]  # fmt: skip
    slots = [[0, 16383, [None, P1, b"id", [b"ip", b"127.0.0.1"]],
              [None, R1, b"id", [b"ip", b"127.0.0.1"]]]]  # fmt: skip
    want = {("10.9.9.9", P1): ((("10.9.9.9", R1),), ((0, 16383),))}
    assert _shape(parse_shards(shards, QUERIED, None)) == want
    assert _shape(parse_slots(slots, QUERIED, None)) == want


def test_question_mark_endpoint_falls_back_to_the_ip() -> None:
    # "?" = hostname preferred but none set: the node's IP is what can be reached.
    shards = [[b"slots", [0, 16383], b"nodes",
               [_flat(_node3(P1, "master", endpoint=b"?"))]]]  # fmt: skip
    slots = [[0, 16383, [b"?", P1, b"id", [b"ip", b"127.0.0.1"]]]]
    slots_no_ip = [[0, 16383, [b"?", P1, b"id", []]]]
    assert parse_shards(shards, QUERIED, None).primaries == [(LOCAL, P1)]
    assert parse_slots(slots, QUERIED, None).primaries == [(LOCAL, P1)]
    assert parse_slots(slots_no_ip, QUERIED, None).primaries == [("10.9.9.9", P1)]


def test_remap_applies_to_every_announced_address() -> None:
    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return ("proxy", address[1] + 1)

    for topology in (
        parse_shards(SHARDS_RESP3, QUERIED, remap),
        parse_shards(SHARDS_RESP2, QUERIED, remap),
        parse_slots(SLOTS_RESP3, QUERIED, remap),
    ):
        assert set(topology.nodes) == {("proxy", p + 1) for p in (P1, R1, P2, R2)}


def test_shard_without_slots_is_ignored() -> None:
    reply = [*SHARDS_RESP3, {b"slots": [], b"nodes": [_node3(1234, "master")]}]
    assert _shape(parse_shards(reply, QUERIED, None)) == _expected()
    assert parse_shards([], QUERIED, None).covered == 0
