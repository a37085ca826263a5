"""Unit tests of the cache node's chunk store (edgecache.cachenode.chunkstore) and its
S3-FIFO eviction policy (edgecache.cachenode.eviction), on a real temporary directory."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import crc32c
import pytest

from edgecache.cachenode import chunkformat, chunkstore, chunkwriter
from edgecache.cachenode.chunkstore import (
    TRAILER,
    ChunkCorrupt,
    ChunkMissing,
    ChunkStore,
    ChunkStoreFull,
    validate_chunk_id,
)
from edgecache.common.s3fifo import S3FifoPolicy

MiB = 1024 * 1024

OpenStore = Callable[..., Awaitable[ChunkStore]]


@pytest.fixture
def open_store(tmp_path: Path) -> OpenStore:
    """Open a ChunkStore on ``tmp_path / "store"`` (a new instance each call: a restart)."""

    async def factory(capacity_bytes: int = 1 << 30, **kwargs: float) -> ChunkStore:
        store = ChunkStore(tmp_path / "store", capacity_bytes=capacity_bytes, **kwargs)
        await store.open()
        return store

    return factory


async def put(store: ChunkStore, chunk_id: str, data: bytes, *, dirty: bool = False) -> int:
    async with store.writer(chunk_id, dirty=dirty) as w:
        await w.write(data)
        return await w.commit()


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def chunk_file(store: ChunkStore, chunk_id: str, *, dirty: bool) -> Path:
    return store.root / ("dirty" if dirty else "clean") / chunkformat.shard(chunk_id) / chunk_id


def tmp_files(store: ChunkStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


# == Ids ======================================================================================
@pytest.mark.parametrize("chunk_id", ["a", "v1.0", "A-b_c.9", "x" * 200, "01JD3.12", "..a"])
def test_valid_ids(chunk_id: str) -> None:
    assert validate_chunk_id(chunk_id) == chunk_id


@pytest.mark.parametrize(
    "chunk_id", ["", ".", "..", "a/b", "../x", "x" * 201, "é", "a b", "a\x00", "a\n"]
)
async def test_invalid_ids_raise_value_error(open_store: OpenStore, chunk_id: str) -> None:
    store = await open_store()
    with pytest.raises(ValueError):
        store.writer(chunk_id, dirty=False)
    with pytest.raises(ValueError):
        await store.read(chunk_id)
    with pytest.raises(ValueError):
        store.has(chunk_id)
    with pytest.raises(ValueError):
        await store.delete([chunk_id])
    with pytest.raises(ValueError):
        await store.mark_clean(["ok", chunk_id])


async def test_methods_need_open(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, capacity_bytes=100)
    with pytest.raises(RuntimeError):
        store.has("a")
    with pytest.raises(RuntimeError):
        store.writer("a", dirty=True)
    with pytest.raises(RuntimeError):
        await store.evict()


@pytest.mark.parametrize(("low", "high"), [(0.9, 0.8), (0.0, 0.5), (0.5, 1.5)])
def test_bad_watermarks(tmp_path: Path, low: float, high: float) -> None:
    with pytest.raises(ValueError):
        ChunkStore(tmp_path, capacity_bytes=100, high_watermark=high, low_watermark=low)


# == Write, commit, read ======================================================================
async def test_round_trip(open_store: OpenStore) -> None:
    store = await open_store()
    data = payload(100_000)
    async with store.writer("v1.0", dirty=True) as w:
        for i in range(0, len(data), 7_000):
            await w.write(data[i : i + 7_000])
        assert not store.has("v1.0")  # nothing visible before commit
        assert await w.commit() == len(data)
    assert store.has("v1.0")
    assert store.size_of("v1.0") == len(data)
    assert store.is_dirty("v1.0") is True
    assert await store.read("v1.0") == data
    s = store.stats
    assert (s.used_bytes, s.dirty_bytes, s.chunks) == (len(data), len(data), 1)
    assert tmp_files(store) == []


async def test_on_disk_format(open_store: OpenStore) -> None:
    store = await open_store()
    data = payload(5000, seed=3)
    await put(store, "fmt.0", data, dirty=False)
    raw = chunk_file(store, "fmt.0", dirty=False).read_bytes()
    assert len(raw) == len(data) + 20 == len(data) + TRAILER.size
    assert raw[: len(data)] == data
    magic, version, flags, reserved, length, crc = TRAILER.unpack(raw[len(data) :])
    assert (magic, version, flags, reserved, length) == (b"ECCK", 1, 0, 0, len(data))
    assert crc == crc32c.crc32c(data)
    assert chunkformat.shard("fmt.0") == f"{crc32c.crc32c(b'fmt.0') & 0xFF:02x}"


async def test_large_chunk_mixed_piece_sizes(open_store: OpenStore) -> None:
    """Pieces below and above the 1 MiB gather threshold, in any order, land intact."""
    store = await open_store()
    data = os.urandom(8 * MiB + 12345)
    sizes = [1, 100, MiB + 7, 3, 2 * MiB, 65536, MiB - 1, 5]
    async with store.writer("big.0", dirty=False) as w:
        pos, i = 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            await w.write(memoryview(data)[pos : pos + n])
            pos, i = pos + n, i + 1
        assert w.size == len(data)
        await w.commit()
    assert await store.read("big.0") == data
    assert await store.read("big.0", MiB - 3, MiB + 3) == data[MiB - 3 : MiB + 4]


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (0, None, slice(0, 1000)),
        (0, 999, slice(0, 1000)),
        (0, 0, slice(0, 1)),
        (999, 999, slice(999, 1000)),
        (999, None, slice(999, 1000)),
        (10, 20, slice(10, 21)),
        (500, None, slice(500, 1000)),
    ],
)
async def test_ranges(open_store: OpenStore, first: int, last: int | None, expected: slice) -> None:
    store = await open_store()
    data = payload(1000)
    await put(store, "r.0", data)
    got = await store.read("r.0", first, last)
    assert got == data[expected]
    assert isinstance(got, bytes)


@pytest.mark.parametrize(("first", "last"), [(-1, None), (1000, None), (5, 4), (0, 1000)])
async def test_bad_ranges(open_store: OpenStore, first: int, last: int | None) -> None:
    store = await open_store()
    await put(store, "r.0", payload(1000))
    with pytest.raises(ValueError):
        await store.read("r.0", first, last)
    assert store.has("r.0")  # a bad range does not hurt the chunk


async def test_missing(open_store: OpenStore) -> None:
    store = await open_store()
    with pytest.raises(ChunkMissing):
        await store.read("nope")
    with pytest.raises(KeyError):  # ChunkMissing is a KeyError
        await store.read("nope")
    assert not store.has("nope")
    assert store.size_of("nope") is None
    assert store.is_dirty("nope") is None


async def test_empty_commit_is_rejected(open_store: OpenStore) -> None:
    store = await open_store()
    w = store.writer("e.0", dirty=True)
    await w.write(b"")
    with pytest.raises(ValueError):
        await w.commit()
    assert not store.has("e.0")
    assert tmp_files(store) == []
    with pytest.raises(RuntimeError):  # the writer is finished
        await w.write(b"x")


async def test_writer_is_single_use(open_store: OpenStore) -> None:
    store = await open_store()
    w = store.writer("s.0", dirty=False)
    await w.write(b"abc")
    assert await w.commit() == 3
    with pytest.raises(RuntimeError):
        await w.write(b"more")
    with pytest.raises(RuntimeError):
        await w.commit()
    await w.abort()  # no-op once committed
    assert await store.read("s.0") == b"abc"


# == Abort, exceptions, cancellation, disk full ===============================================
async def test_abort_leaves_nothing(open_store: OpenStore) -> None:
    store = await open_store()
    w = store.writer("a.0", dirty=True)
    await w.write(payload(3 * MiB))
    assert len(tmp_files(store)) == 1
    await w.abort()
    assert not store.has("a.0")
    assert tmp_files(store) == []
    assert store.stats.used_bytes == 0


async def test_exception_in_context_leaves_nothing(open_store: OpenStore) -> None:
    store = await open_store()
    with pytest.raises(RuntimeError, match="boom"):
        async with store.writer("a.0", dirty=True) as w:
            await w.write(payload(10_000))
            raise RuntimeError("boom")
    assert not store.has("a.0")
    assert tmp_files(store) == []


async def test_context_exit_without_commit_aborts(open_store: OpenStore) -> None:
    store = await open_store()
    async with store.writer("a.0", dirty=False) as w:
        await w.write(payload(10_000))
    assert not store.has("a.0")
    assert tmp_files(store) == []


async def test_cancelled_writer_leaves_nothing(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()
    entered = threading.Event()
    real_append = chunkwriter.append

    def slow_append(f, data, crc):  # type: ignore[no-untyped-def]
        entered.set()
        threading.Event().wait(0.2)
        return real_append(f, data, crc)

    monkeypatch.setattr(chunkwriter, "append", slow_append)

    async def writing() -> None:
        async with store.writer("c.0", dirty=True) as w:
            await w.write(payload(2 * MiB))
            await w.commit()

    task = asyncio.create_task(writing())
    await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not store.has("c.0")
    assert tmp_files(store) == []


async def test_disk_full_during_write(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()

    def full(f, data, crc):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkwriter, "append", full)
    w = store.writer("f.0", dirty=True)
    with pytest.raises(ChunkStoreFull) as info:
        await w.write(payload(2 * MiB))
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, OSError)
    assert not store.has("f.0")
    assert tmp_files(store) == []
    with pytest.raises(RuntimeError):  # the writer is finished
        await w.commit()


async def test_disk_full_at_commit(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC may only show at fsync (delayed allocation); small writes are gathered too."""
    store = await open_store()

    def full(f, pending, crc, size, *, sync=True):  # type: ignore[no-untyped-def]
        f.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkwriter, "seal", full)
    with pytest.raises(ChunkStoreFull):
        async with store.writer("f.0", dirty=True) as w:
            await w.write(b"small")
            await w.commit()
    assert not store.has("f.0")
    assert tmp_files(store) == []
    assert store.stats.used_bytes == 0


async def test_other_os_errors_pass_through(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()

    def broken(f, data, crc):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(chunkwriter, "append", broken)
    with pytest.raises(OSError) as info:
        await store.writer("f.0", dirty=True).write(payload(2 * MiB))
    assert not isinstance(info.value, ChunkStoreFull)
    assert tmp_files(store) == []


async def test_only_dirty_chunks_are_fsynced(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean chunk can be filled again: it is not fsynced (reads verify it); a dirty one
    is, also when a clean commit lands on a dirty chunk (dirty is sticky)."""
    store = await open_store()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    await put(store, "c.0", payload(100), dirty=False)
    assert synced == []
    await put(store, "d.0", payload(100), dirty=True)
    assert len(synced) >= 2  # the file and its directory
    synced.clear()
    await put(store, "d.0", payload(100), dirty=False)  # stays dirty: made durable anyway
    assert len(synced) >= 2
    assert store.is_dirty("d.0")


# == Corruption ===============================================================================
@pytest.mark.parametrize("dirty", [False, True])
@pytest.mark.parametrize("where", ["payload", "crc", "magic", "truncate", "append"])
async def test_corruption_detected_and_dropped(
    open_store: OpenStore, where: str, dirty: bool
) -> None:
    store = await open_store()
    data = payload(4096)
    await put(store, "k.0", data, dirty=dirty)
    path = chunk_file(store, "k.0", dirty=dirty)
    raw = bytearray(path.read_bytes())
    if where == "payload":
        raw[1234] ^= 0x01
    elif where == "crc":
        raw[-1] ^= 0x80
    elif where == "magic":
        raw[len(data)] ^= 0xFF
    elif where == "truncate":
        del raw[-5:]
    else:
        raw += b"x"
    path.write_bytes(bytes(raw))

    with pytest.raises(ChunkCorrupt):
        await store.read("k.0", 0, 0)  # even a 1-byte range verifies the whole chunk
    assert not store.has("k.0")
    assert not path.exists()
    assert store.stats.corrupt == 1
    assert store.stats.used_bytes == store.stats.dirty_bytes == 0
    with pytest.raises(ChunkMissing):
        await store.read("k.0")


async def test_file_deleted_behind_our_back(open_store: OpenStore) -> None:
    store = await open_store()
    await put(store, "k.0", b"hello")
    chunk_file(store, "k.0", dirty=False).unlink()
    with pytest.raises(ChunkMissing):
        await store.read("k.0")
    assert not store.has("k.0")
    assert store.stats.used_bytes == 0


# == State changes, delete, re-commit =========================================================
async def test_mark_clean_and_delete_are_idempotent(open_store: OpenStore) -> None:
    store = await open_store()
    await put(store, "d.0", b"dirty", dirty=True)
    await put(store, "c.0", b"clean", dirty=False)
    await store.mark_clean(["d.0", "d.0", "c.0", "missing"])
    assert store.is_dirty("d.0") is False
    assert chunk_file(store, "d.0", dirty=False).exists()
    assert not chunk_file(store, "d.0", dirty=True).exists()
    assert store.stats.dirty_bytes == 0
    await store.mark_clean(["d.0"])
    assert await store.read("d.0") == b"dirty"

    await put(store, "x.0", b"pinned", dirty=True)
    await store.delete(["d.0", "x.0", "missing"])  # dirty chunks can be deleted explicitly
    await store.delete(["d.0", "x.0"])
    assert not store.has("d.0") and not store.has("x.0")
    assert store.stats.chunks == 1
    assert store.stats.used_bytes == 5


async def test_a_read_racing_mark_clean_finds_the_chunk_where_it_went(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mark_clean renames the file before it updates the index: a read in between found
    no file under the dirty path, took the chunk for vanished and deleted it (a GET cut
    by the write-back marking its object clean)."""
    store = await open_store()
    await put(store, "w.0", b"being written back", dirty=True)
    renamed, resume = threading.Event(), threading.Event()
    real = chunkstore.rename_many

    def rename_then_wait(moves):  # type: ignore[no-untyped-def]
        result = real(moves)
        renamed.set()
        resume.wait(10)
        return result

    monkeypatch.setattr(chunkstore, "rename_many", rename_then_wait)
    cleaning = asyncio.create_task(store.mark_clean(["w.0"]))
    await asyncio.to_thread(renamed.wait, 10)
    reading = asyncio.create_task(store.read("w.0"))  # the dirty file is gone, the index not yet told
    await asyncio.sleep(0.2)
    resume.set()
    await cleaning
    assert await reading == b"being written back"
    assert store.has("w.0") and not store.is_dirty("w.0")


async def test_recommit_replaces(open_store: OpenStore) -> None:
    store = await open_store()
    await put(store, "r.0", payload(100), dirty=False)
    assert await put(store, "r.0", payload(50, seed=9), dirty=False) == 50
    assert await store.read("r.0") == payload(50, seed=9)
    assert store.size_of("r.0") == 50
    assert (store.stats.used_bytes, store.stats.chunks) == (50, 1)

    # dirty over clean: becomes dirty, and the clean copy goes
    await put(store, "r.0", payload(60), dirty=True)
    assert store.is_dirty("r.0") is True
    assert not chunk_file(store, "r.0", dirty=False).exists()
    assert (store.stats.used_bytes, store.stats.dirty_bytes) == (60, 60)

    # clean over dirty: dirty is sticky, the write stays pinned
    await put(store, "r.0", payload(60), dirty=False)
    assert store.is_dirty("r.0") is True
    assert (store.stats.used_bytes, store.stats.dirty_bytes) == (60, 60)
    assert await store.read("r.0") == payload(60)


async def test_concurrent_writers(open_store: OpenStore) -> None:
    store = await open_store()
    datas = {f"w.{i}": os.urandom(300_000 + i) for i in range(16)}

    async def write_one(chunk_id: str, data: bytes) -> int:
        async with store.writer(chunk_id, dirty=bool(len(data) % 2)) as w:
            for pos in range(0, len(data), 40_000):
                await w.write(data[pos : pos + 40_000])
                await asyncio.sleep(0)
            return await w.commit()

    sizes = await asyncio.gather(*(write_one(k, v) for k, v in datas.items()))
    assert sizes == [len(v) for v in datas.values()]
    reads = await asyncio.gather(*(store.read(k) for k in datas))
    assert reads == list(datas.values())
    assert store.stats.used_bytes == sum(map(len, datas.values()))
    assert store.stats.dirty_bytes == sum(len(v) for v in datas.values() if len(v) % 2)


async def test_concurrent_recommits_of_one_id(open_store: OpenStore) -> None:
    store = await open_store()
    data = payload(200_000)
    await asyncio.gather(*(put(store, "same.0", data) for _ in range(8)))
    assert await store.read("same.0") == data
    assert (store.stats.chunks, store.stats.used_bytes) == (1, len(data))
    assert tmp_files(store) == []


# == Restart ==================================================================================
async def test_restart_keeps_chunks_and_state(open_store: OpenStore) -> None:
    store = await open_store()
    await put(store, "d.0", payload(300), dirty=True)
    await put(store, "d.1", payload(301), dirty=True)
    await put(store, "c.0", payload(302), dirty=False)
    await store.mark_clean(["d.1"])
    unfinished = store.writer("u.0", dirty=True)
    await unfinished.write(payload(1000))  # a write interrupted by the "crash"
    (store.root / "tmp" / "junk.0123456789abcdef.tmp").write_bytes(b"leftover")

    again = await open_store()
    assert tmp_files(again) == []
    assert again.is_dirty("d.0") is True
    assert again.is_dirty("d.1") is False
    assert again.is_dirty("c.0") is False
    assert not again.has("u.0")
    assert sorted(again.dirty_ids()) == ["d.0"]
    assert await again.read("d.0") == payload(300)
    assert await again.read("d.1") == payload(301)
    assert await again.read("c.0") == payload(302)
    s = again.stats
    assert (s.chunks, s.used_bytes, s.dirty_bytes) == (3, 903, 300)


async def test_restart_resolves_dirty_and_clean_copies(open_store: OpenStore) -> None:
    """A crash in a re-commit dirty-over-clean can leave both copies: dirty wins."""
    store = await open_store()
    await put(store, "both.0", payload(100), dirty=False)
    clean = chunk_file(store, "both.0", dirty=False)
    dirty = chunk_file(store, "both.0", dirty=True)
    shutil.copyfile(clean, dirty)
    # and a file too short to be a chunk, and a foreign file, which is left alone
    chunk_file(store, "short.0", dirty=False).write_bytes(b"x" * 20)
    foreign = store.root / "clean" / "00" / "README.txt"
    foreign.write_text("not a chunk")

    again = await open_store()
    assert again.is_dirty("both.0") is True
    assert not clean.exists()
    assert not again.has("short.0")
    assert not chunk_file(store, "short.0", dirty=False).exists()
    assert foreign.exists()
    assert again.stats.chunks == 1


async def test_restart_orders_eviction_by_last_access(open_store: OpenStore) -> None:
    store = await open_store()
    for name in ("a.0", "b.0", "c.0"):
        await put(store, name, payload(100))
    for t, name in enumerate(("a.0", "b.0", "c.0"), start=1):  # written long ago, a first
        os.utime(chunk_file(store, name, dirty=False), ns=(t * 10**9, t * 10**9))
    await store.read("a.0")  # touches a's access time: now the most recent

    # 300 B > 0.9 * 320: evict down to 0.8 * 320 = 256 B, one chunk: the least recently used
    again = await open_store(capacity_bytes=320)
    assert await again.evict() == ["b.0"]


# == Eviction =================================================================================
async def test_no_eviction_below_high_watermark(open_store: OpenStore) -> None:
    store = await open_store(capacity_bytes=1000)
    for i in range(9):
        await put(store, f"e.{i}", payload(100))
    assert store.stats.used_bytes == 900  # == high * capacity: not above it
    assert await store.evict() == []


async def test_eviction_stops_at_low_watermark(open_store: OpenStore) -> None:
    store = await open_store(capacity_bytes=1000)
    for i in range(10):
        await put(store, f"e.{i}", payload(100))
    evicted = await store.evict()
    assert evicted == ["e.0", "e.1"]  # FIFO among chunks never read
    s = store.stats
    assert (s.used_bytes, s.chunks, s.evictions, s.evicted_bytes) == (800, 8, 2, 200)
    for chunk_id in evicted:
        assert not store.has(chunk_id)
        assert not chunk_file(store, chunk_id, dirty=False).exists()
        with pytest.raises(ChunkMissing):
            await store.read(chunk_id)
    assert await store.evict() == []


async def test_eviction_takes_only_clean_chunks(open_store: OpenStore) -> None:
    store = await open_store(capacity_bytes=1000)
    for i in range(10):
        await put(store, f"m.{i}", payload(100), dirty=i % 2 == 0)
    evicted = await store.evict()
    assert evicted == ["m.1", "m.3"]
    for i in range(0, 10, 2):
        assert store.has(f"m.{i}")
    assert store.stats.used_bytes == 800


async def test_dirty_chunks_are_never_evicted(open_store: OpenStore) -> None:
    store = await open_store(capacity_bytes=500)
    for i in range(10):
        await put(store, f"d.{i}", payload(100), dirty=True)
    await put(store, "c.0", payload(100))
    assert store.stats.used_bytes == 1100  # over capacity, all but one pinned
    assert await store.evict() == ["c.0"]
    assert await store.evict() == []
    assert all(store.has(f"d.{i}") for i in range(10))
    assert store.stats.used_bytes == store.stats.dirty_bytes == 1000

    await store.mark_clean([f"d.{i}" for i in range(10)])
    assert len(await store.evict()) == 6  # now clean: 1000 B down to 0.8 * 500 = 400 B
    assert store.stats.used_bytes == 400


async def test_recently_read_chunk_survives_a_scan(open_store: OpenStore) -> None:
    """S3-FIFO: a chunk read once survives a one-pass scan much larger than the cache,
    while a chunk written at the same time and never read is evicted."""
    store = await open_store(capacity_bytes=1000)
    await put(store, "hot.0", payload(100))
    await put(store, "cold.0", payload(100))
    await store.read("hot.0")
    evicted: list[str] = []
    for i in range(50):  # a 5000 B scan through a 1000 B cache
        await put(store, f"scan.{i}", payload(100))
        evicted += await store.evict()
    assert store.has("hot.0")
    assert "cold.0" in evicted
    assert "hot.0" not in evicted
    assert len(evicted) == len(set(evicted))
    assert store.stats.used_bytes <= 900


async def test_chunk_being_read_is_not_evicted(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(capacity_bytes=1000)
    for i in range(10):
        await put(store, f"p.{i}", payload(100, seed=i))
    started, release = threading.Event(), threading.Event()
    real_read = chunkstore.read_verified

    def blocked_read(path: Path) -> bytes:
        started.set()
        release.wait(5)
        return real_read(path)

    monkeypatch.setattr(chunkstore, "read_verified", blocked_read)
    reading = asyncio.create_task(store.read("p.0"))  # p.0 is first in line for eviction
    await asyncio.to_thread(started.wait, 5)
    evicted = await store.evict()
    assert "p.0" not in evicted
    assert evicted == ["p.1", "p.2"]
    release.set()
    assert await reading == payload(100, seed=0)


async def test_evict_concurrent_with_reads_and_writes(open_store: OpenStore) -> None:
    store = await open_store(capacity_bytes=50_000)
    datas = {f"x.{i}": payload(1000, seed=i) for i in range(200)}

    async def writer() -> None:
        for k, v in datas.items():
            await put(store, k, v, dirty=k.endswith("7"))
            await asyncio.sleep(0)

    async def reader() -> None:
        for _ in range(400):
            for k in list(datas)[::13]:
                try:
                    assert await store.read(k) == datas[k]
                except ChunkMissing:
                    pass
            await asyncio.sleep(0)

    async def evictor() -> None:
        for _ in range(300):
            await store.evict()
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader(), evictor())
    await store.evict()
    assert store.stats.used_bytes <= 45_000
    for k, v in datas.items():
        if k.endswith("7"):
            assert await store.read(k) == v  # dirty: all still here
    on_disk = sum(1 for p in (store.root / "clean").rglob("*") if p.is_file())
    on_disk += sum(1 for p in (store.root / "dirty").rglob("*") if p.is_file())
    assert on_disk == store.stats.chunks
    assert tmp_files(store) == []


# == S3-FIFO policy ===========================================================================
def test_policy_small_queue_is_fifo_and_remembers_ghosts() -> None:
    p = S3FifoPolicy(small_fraction=0.1)
    for k in "abcd":
        p.insert(k, 10)
    assert p.select_victims(20, lambda k: True) == [("a", 10), ("b", 10)]
    assert p.queue_of("a") == "ghost"
    p.insert("a", 10)  # back soon after eviction: straight into main
    assert p.queue_of("a") == "main"
    assert p.tracked_bytes == 30


def test_policy_read_promotes_to_main_and_main_reinserts() -> None:
    p = S3FifoPolicy(small_fraction=0.5)
    for k in "abc":
        p.insert(k, 10)
    p.access("a")
    # a was read: moves to main; b goes
    assert p.select_victims(10, lambda k: True) == [("b", 10)]
    assert p.queue_of("a") == "main"
    p.access("a")
    p.access("a")
    # small (c: 10 B) is >= half of 20 B: c goes first; then main: a has freq 2, so it is
    # re-queued twice before it goes
    assert p.select_victims(20, lambda k: True) == [("c", 10), ("a", 10)]
    assert len(p) == 0


def test_policy_remove_is_not_a_ghost_and_pins_are_respected() -> None:
    p = S3FifoPolicy()
    for k in "abc":
        p.insert(k, 10)
    p.remove("a")
    assert p.queue_of("a") is None
    assert p.select_victims(100, lambda k: k != "b") == [("c", 10)]
    assert p.queue_of("b") == "main"  # kept, as if read
    assert p.select_victims(100, lambda k: False) == []  # terminates when nothing can go
    assert p.select_victims(0, lambda k: True) == []


def test_policy_insert_existing_updates_size_in_place() -> None:
    p = S3FifoPolicy()
    p.insert("a", 10)
    p.insert("b", 10)
    p.insert("a", 30)
    assert p.tracked_bytes == 40
    assert p.select_victims(1, lambda k: True) == [("a", 30)]


def test_policy_ghost_is_bounded() -> None:
    p = S3FifoPolicy(ghost_min_entries=4)
    for i in range(100):
        p.insert(str(i), 1)
    p.select_victims(100, lambda k: True)
    assert sum(p.queue_of(str(i)) == "ghost" for i in range(100)) == 4


async def test_purge_deletes_only_clean_chunks_nothing_uses(open_store: OpenStore) -> None:
    store = await open_store()
    for chunk_id, dirty in (("c-free", False), ("c-dirty", True), ("c-leased", False)):
        await put(store, chunk_id, payload(100), dirty=dirty)
    store.leases.grant("lease-1", ["c-leased"], ttl_s=30.0)
    assert await store.purge(["c-free", "c-dirty", "c-leased", "c-absent"]) == ["c-free"]
    assert not store.has("c-free") and not chunk_file(store, "c-free", dirty=False).exists()
    assert store.has("c-dirty") and store.has("c-leased")  # the write's only copy; a reader's
    store.leases.release("lease-1")
    assert await store.purge(["c-leased"]) == ["c-leased"]
