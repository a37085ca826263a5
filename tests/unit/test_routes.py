"""The cache node's route cache (edgecache.cachenode.routes): owner site per key, with a
TTL, dropped on a change, bounded."""

from __future__ import annotations

from edgecache.cachenode.routes import RouteCache


def test_an_entry_lives_for_its_ttl() -> None:
    now = [100.0]
    routes = RouteCache(5.0, clock=lambda: now[0])
    routes.put("b", "k", "a")
    assert routes.get("b", "k") == "a"
    now[0] = 104.9
    assert routes.get("b", "k") == "a"
    now[0] = 105.0
    assert routes.get("b", "k") is None
    assert len(routes) == 0


def test_a_change_drops_the_key_or_the_whole_bucket() -> None:
    routes = RouteCache(60.0)
    for key in ("k1", "k2"):
        routes.put("b", key, "a")
    routes.put("other", "k1", "a")
    routes.drop("b", "k1")
    assert (routes.get("b", "k1"), routes.get("b", "k2")) == (None, "a")
    routes.drop("b", None)  # the bucket was deleted
    assert (routes.get("b", "k2"), routes.get("other", "k1")) == (None, "a")


def test_the_least_recently_used_go_first_and_ttl_zero_caches_nothing() -> None:
    routes = RouteCache(60.0, max_entries=2)
    routes.put("b", "k1", "a")
    routes.put("b", "k2", "a")
    assert routes.get("b", "k1") == "a"  # k1 used: k2 is now the oldest
    routes.put("b", "k3", "c")
    assert (routes.get("b", "k1"), routes.get("b", "k2"), routes.get("b", "k3")) == ("a", None, "c")
    off = RouteCache(0.0)
    off.put("b", "k", "a")
    assert off.get("b", "k") is None
