"""Leases pin chunks against eviction (edgecache.cachenode.chunkleases, used by the chunk
store's eviction) until released or expired; the shared chunk file reader
(edgecache.common.chunkfile) verifies what the node wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.cachenode.chunkleases import Leases
from edgecache.cachenode.chunkstore import ChunkStore
from edgecache.common.chunkfile import InvalidChunk, read_verified


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _store(tmp_path: Path, clock: Clock) -> ChunkStore:
    store = ChunkStore(tmp_path / "store", capacity_bytes=1000)
    await store.open()
    store.leases = Leases(clock=clock)
    for i in range(10):
        async with store.writer(f"c.{i}", dirty=False) as w:
            await w.write(bytes([i]) * 100)
            await w.commit()
    return store


def test_lease_counts_and_release() -> None:
    clock = Clock()
    leases = Leases(clock=clock)
    leases.grant("a", ["x", "y", "x"], 30)
    leases.grant("b", ["y"], 30)
    assert leases.pinned("x") and leases.pinned("y") and len(leases) == 2
    assert leases.release("a") and not leases.release("a")
    assert not leases.pinned("x") and leases.pinned("y")
    with pytest.raises(ValueError):
        leases.grant("b", ["z"], 1)
    clock.now += 31
    assert leases.expire() == 1
    assert not leases.pinned("y") and len(leases) == 0
    assert (leases.granted, leases.released, leases.expired) == (2, 1, 1)


async def test_a_leased_chunk_is_not_evicted(tmp_path: Path) -> None:
    clock = Clock()
    store = await _store(tmp_path, clock)
    store.leases.grant("l1", ["c.0", "c.1"], 30)
    evicted = await store.evict()  # FIFO would take c.0 and c.1 first
    assert "c.0" not in evicted and "c.1" not in evicted and len(evicted) == 2
    assert store.has("c.0") and store.has("c.1")


async def test_an_expired_lease_is_released_and_its_chunks_evictable(tmp_path: Path) -> None:
    clock = Clock()
    store = await _store(tmp_path, clock)
    store.leases.grant("l1", [f"c.{i}" for i in range(10)], 30)
    assert await store.evict() == []  # everything pinned
    clock.now += 29
    assert await store.evict() == []  # still live
    clock.now += 2
    assert len(await store.evict()) == 2  # expired: dropped, then evicted
    assert len(store.leases) == 0 and store.leases.expired == 1


async def test_a_released_lease_unpins(tmp_path: Path) -> None:
    store = await _store(tmp_path, Clock())
    store.leases.grant("l1", [f"c.{i}" for i in range(10)], 30)
    assert await store.evict() == []
    assert store.leases.release("l1")
    assert len(await store.evict()) == 2


async def test_paths_of_and_shared_reader(tmp_path: Path) -> None:
    store = await _store(tmp_path, Clock())
    paths = store.paths_of("c.3")
    assert paths is not None and paths[0].parent.parent.name == "clean" and paths[1].parent.parent.name == "dirty"
    assert read_verified(paths[0], touch=False) == bytes([3]) * 100
    raw = bytearray(paths[0].read_bytes())
    raw[7] ^= 1
    paths[0].write_bytes(raw)
    with pytest.raises(InvalidChunk):
        read_verified(paths[0])
    assert store.paths_of("nope") is None
