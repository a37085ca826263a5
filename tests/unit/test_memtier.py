"""The gateway's memory tier and the invalidation listener that keeps it coherent."""

from __future__ import annotations

import os
import time

from edgecache.common import wire
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.memtier import MemoryTier


def info(key: str, size: int, bucket: str = "b") -> wire.ObjectInfo:
    return wire.ObjectInfo(bucket=bucket, key=key, size=size, etag="e", last_modified=0.0)


def put(tier: MemoryTier, key: str, data: bytes, bucket: str = "b") -> bool:
    fill = tier.start_fill(bucket, key)
    assert fill is not None
    return tier.admit(fill, info(key, len(data), bucket), data)


def test_hit_after_admission_and_gate_respected() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    assert tier.lookup("b", "k") is None
    assert put(tier, "k", b"x" * 1_000)
    assert not put(tier, "big", b"x" * 1_001)
    found = tier.lookup("b", "k")
    assert found is not None and found.data == b"x" * 1_000
    assert tier.lookup("b", "big") is None
    assert (tier.stats.hits, tier.stats.misses, tier.stats.admitted) == (1, 2, 1)


def test_a_partial_body_is_never_admitted() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    fill = tier.start_fill("b", "k")
    assert fill is not None
    assert not tier.admit(fill, info("k", 100), b"x" * 99)
    assert tier.lookup("b", "k") is None


def test_eviction_keeps_it_under_capacity_and_resists_a_scan() -> None:
    tier = MemoryTier(capacity_bytes=100_000, gate_bytes=10_000)
    for i in range(5):  # a hot set, read again and again
        put(tier, f"hot{i}", os.urandom(10_000))
    for _ in range(3):
        for i in range(5):
            assert tier.lookup("b", f"hot{i}") is not None
    for i in range(100):  # a one-pass scan of 100 objects
        put(tier, f"scan{i}", os.urandom(10_000))
        assert tier.stats.used_bytes <= tier.capacity_bytes
    assert all(tier.lookup("b", f"hot{i}") is not None for i in range(5))
    assert tier.stats.evicted >= 90


def test_invalidation_drops_the_key_and_refuses_fills_that_started_before_it() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    put(tier, "k", b"old")
    late = tier.start_fill("b", "k")  # a GET that read the old version ...
    tier.invalidate("b", "k")  # ... while the new one was written
    assert tier.lookup("b", "k") is None
    assert late is not None and not tier.admit(late, info("k", 3), b"old")
    assert put(tier, "k", b"new")  # a fill that started after the event is fine
    assert tier.lookup("b", "k").data == b"new"  # type: ignore[union-attr]
    assert tier.stats.refused == 1


def test_bucket_invalidation_and_clear() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    put(tier, "a", b"1")
    put(tier, "b", b"2")
    put(tier, "c", b"3", bucket="other")
    late = tier.start_fill("b", "z")
    tier.invalidate_bucket("b")
    assert tier.lookup("b", "a") is None and tier.lookup("b", "b") is None
    assert tier.lookup("other", "c") is not None
    assert late is not None and not tier.admit(late, info("z", 1), b"z")
    late = tier.start_fill("other", "d")
    tier.clear()
    assert tier.lookup("other", "c") is None and tier.stats.used_bytes == 0
    assert late is not None and not tier.admit(late, info("d", 1, "other"), b"d")


def test_forgotten_invalidations_refuse_old_fills() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000, forget_after=2)
    old = tier.start_fill("b", "k")
    for i in range(3):  # "k" itself is not among them, but the oldest is forgotten
        tier.invalidate("b", f"other{i}")
    assert old is not None and not tier.admit(old, info("k", 1), b"k")


def test_capacity_zero_turns_it_off() -> None:
    tier = MemoryTier(capacity_bytes=0, gate_bytes=1_000)
    assert not tier.enabled and tier.start_fill("b", "k") is None


# == the listener ===============================================================================
def event(seq: int, key: str | None = "k", publisher: str = "n1", started: int = 1) -> wire.Invalidation:
    return wire.Invalidation(
        id=f"e{seq}", at_ns=0, bucket="b", key=key, version="v", publisher=publisher,
        publisher_started_ns=started, seq=seq,
    )


def listener(tier: MemoryTier) -> InvalidationListener:
    x = InvalidationListener(tier)
    x._since_ns = time.time_ns()  # as start() does
    return x


def test_events_drop_what_they_name() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    x = listener(tier)
    put(tier, "k", b"1")
    put(tier, "j", b"2")
    x.apply(event(7))  # a publisher that started before we subscribed: any first seq
    assert tier.lookup("b", "k") is None and tier.lookup("b", "j") is not None
    x.apply(event(8, key=None))  # the bucket
    assert tier.lookup("b", "j") is None
    assert tier.stats.cleared == 0


def test_a_gap_in_a_publishers_sequence_clears_everything() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    x = listener(tier)
    x.apply(event(1, key="a"))
    put(tier, "k", b"1")
    x.apply(event(3, key="a"))  # 2 was lost
    assert tier.lookup("b", "k") is None and tier.stats.cleared == 1


def test_a_new_publishers_first_event_must_be_its_first() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    x = listener(tier)
    put(tier, "k", b"1")
    later = time.time_ns() + 1
    x.apply(event(1, key="a", publisher="n2", started=later))
    assert tier.lookup("b", "k") is not None
    x.apply(event(2, key="a", publisher="n3", started=later))  # n3's 1 never came
    assert tier.lookup("b", "k") is None and tier.stats.cleared == 1


def test_disconnect_clears_and_stops_serving_until_reconnected() -> None:
    tier = MemoryTier(capacity_bytes=10_000, gate_bytes=1_000)
    x = listener(tier)
    x.in_sync, x._sub = True, object()  # as start() leaves it  # type: ignore[assignment]
    put(tier, "k", b"1")
    x.disconnected()
    assert not x.in_sync and tier.lookup("b", "k") is None
    x.reconnected()
    assert x.in_sync
