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
