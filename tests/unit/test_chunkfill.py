"""ChunkFill: readers follow a fill on disk as it lands, holding no copy of the chunk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edgecache.cachenode.chunkstore import ChunkStore
from edgecache.cachenode.fill import FOLLOW_READ_BYTES, ChunkFill
from edgecache.common import errors

MiB = 1024 * 1024


@pytest.fixture
async def store(tmp_path: Path) -> ChunkStore:
    s = ChunkStore(tmp_path / "store", capacity_bytes=1 << 30)
    await s.open()
    return s


async def _fill(
    store: ChunkStore, fill: ChunkFill, data: bytes, piece: int, gate: asyncio.Event | None = None
) -> None:
    """Write ``data`` as the Filler does: piece by piece, telling the fill what landed."""
    writer = store.writer(fill.chunk_id, dirty=False)
    for i in range(0, len(data), piece):
        if gate is not None and i >= len(data) // 2:
            await gate.wait()
        await writer.write(data[i : i + piece])
        fill.received += len(data[i : i + piece])
        fill.landed_at(writer.path, writer.landed)
    await writer.commit()
    fill.finish()


async def _collect(fill: ChunkFill, first: int, last: int) -> tuple[bytes, int]:
    pieces = [p async for p in fill.follow(first, last)]
    return b"".join(pieces), max(len(p) for p in pieces)


@pytest.mark.parametrize("size", [100, 3 * MiB + 17])
async def test_followers_read_what_landed(store: ChunkStore, size: int) -> None:
    data = os.urandom(size)
    fill = ChunkFill("v1.0", size)
    readers = [
        asyncio.ensure_future(_collect(fill, 0, size - 1)),
        asyncio.ensure_future(_collect(fill, size // 3, size - 2)),
    ]
    await _fill(store, fill, data, 64 * 1024)
    whole, largest = await readers[0]
    part, _ = await readers[1]
    assert whole == data
    assert part == data[size // 3 : size - 1]
    assert largest <= FOLLOW_READ_BYTES
    assert (
        await store.read("v1.0") == data
    )  # committed: the file the followers read, renamed into place
    assert fill._fd is None  # noqa: SLF001 - closed with its last user


async def test_a_follower_gets_the_landed_bytes_before_the_chunk_is_complete(
    store: ChunkStore,
) -> None:
    data = os.urandom(4 * MiB)
    fill = ChunkFill("v1.1", len(data))
    gate = asyncio.Event()
    filling = asyncio.ensure_future(_fill(store, fill, data, MiB, gate))
    pieces = fill.follow(0, len(data) - 1)
    first = await asyncio.wait_for(anext(pieces), 5)  # half the chunk landed, the rest waits
    assert first == data[: len(first)]
    assert not fill.done
    gate.set()
    rest = b"".join([p async for p in pieces])
    await filling
    assert first + rest == data


async def test_a_failed_fill_fails_its_followers(store: ChunkStore) -> None:
    fill = ChunkFill("v1.2", 2 * MiB)
    writer = store.writer(fill.chunk_id, dirty=False)
    await writer.write(os.urandom(MiB))
    fill.received = MiB
    fill.landed_at(writer.path, writer.landed)
    follower = fill.follow(0, 2 * MiB - 1)
    assert len(await anext(follower)) == MiB
    await writer.abort()
    fill.finish(errors.ServiceUnavailable("origin went away"))
    with pytest.raises(errors.ServiceUnavailable):
        await anext(follower)
    assert fill._fd is None  # noqa: SLF001 - the descriptor closes with its last user
