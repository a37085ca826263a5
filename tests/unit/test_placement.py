import hashlib
from collections import Counter

from edgecache.common.placement import owner, ranked


def test_owner_is_stable_and_order_independent() -> None:
    nodes = ["n1", "n2", "n3"]
    assert owner("b", "k", nodes) == owner("b", "k", list(reversed(nodes)))
    assert owner("b", "k", []) is None
    assert ranked("b", "k", nodes)[0] == owner("b", "k", nodes)


def test_spread_is_even_and_a_leaving_node_moves_only_its_objects() -> None:
    nodes = [f"n{i}" for i in range(4)]
    keys = [f"key-{i}" for i in range(4000)]
    before = {k: owner("b", k, nodes) for k in keys}
    counts = Counter(before.values())
    assert all(800 < c < 1200 for c in counts.values()), counts
    after = {k: owner("b", k, nodes[:-1]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "n3" for k in moved)
    assert len(moved) == counts["n3"]


def _skew(counts: Counter[str], nodes: list[str]) -> float:
    """The largest share of any node off the even share, as a fraction of the even share."""
    mean = sum(counts.values()) / len(nodes)
    return max(abs(counts[n] - mean) for n in nodes) / mean


def test_placement_skew_over_10000_keys_is_within_10_percent() -> None:
    """Adding cache nodes multiplies capacity: over 10,000 keys no node owns more (or less)
    than 10 % off its even share, from 2 to 8 nodes with ids of the form a cache node derives
    (``<host>-<hash of its data dir>``)."""
    keys = [f"photos/2026/{i:06d}.jpg" for i in range(10_000)]
    skews = {}
    for size in range(2, 9):
        nodes = [
            f"edge-{hashlib.blake2b(b'cachenode-%d' % i, digest_size=3).hexdigest()}"
            for i in range(size)
        ]
        counts = Counter(owner("bucket", k, nodes) for k in keys)
        skews[size] = _skew(counts, nodes)
    assert max(skews.values()) <= 0.10, skews
