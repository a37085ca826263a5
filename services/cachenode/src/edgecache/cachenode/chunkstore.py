"""The cache node's on-disk chunk store: immutable, checksummed chunks with eviction.

A chunk is an immutable piece of an object (at most ``chunk_bytes``, default 8 MiB; never
empty) named by an id the cache node makes, ``[A-Za-z0-9._-]{1,200}`` except ``.`` and
``..`` (e.g. ``<version>.<index>``). Chunks are **dirty** (not yet in the origin: pinned,
never evicted) or **clean** (evictable). The state is kept by the directory a chunk lives
in, so it survives a restart without any database.

The store is split along its nouns:

- this module: :class:`ChunkStore`, its in-memory index and accounting, and the public API
  (it re-exports the errors, :class:`ChunkWriter`, :data:`TRAILER` and
  :func:`validate_chunk_id`);
- :mod:`edgecache.cachenode.chunkformat`: the on-disk layout and chunk file format (payload
  and a CRC32C trailer) and the blocking file operations on them;
- :mod:`edgecache.cachenode.chunkwriter`: :class:`ChunkWriter`, which streams one chunk;
- :mod:`edgecache.cachenode.recovery`: the scan at :meth:`ChunkStore.open` that settles what
  a crash left behind;
- :mod:`edgecache.cachenode.keyedlock`: the per-chunk-id locks;
- :mod:`edgecache.cachenode.chunkleases`: leases pinning chunks a local reader reads;
- :mod:`edgecache.cachenode.chunkerrors`: the errors;
- :mod:`edgecache.common.s3fifo`: the S3-FIFO policy.

A committed chunk is durable and complete or absent. ``mark_clean`` is a rename ``dirty/ ->
clean/`` followed by an fsync of both directories. If a crash leaves the same id in both (a
re-commit dirty over clean), ``open()`` keeps the dirty one. The access time of a file (set
explicitly on each read, so ``noatime``/``relatime`` mounts do not matter) or else its
modification time orders clean chunks for eviction after a restart.

Accounting: ``used_bytes`` counts payload bytes of committed chunks; the trailers, the
directories, filesystem block rounding and writes in progress are not counted, so leave
some headroom below the disk size.

Eviction is S3-FIFO (:mod:`edgecache.common.s3fifo`) over clean chunks: above
``high_watermark * capacity_bytes``, :meth:`ChunkStore.evict` deletes clean chunks until
``used_bytes <= low_watermark * capacity_bytes`` (or no clean chunk is left to evict).

All blocking file I/O runs in the default thread pool (``asyncio.to_thread``); a whole chunk
is read, and verified, in one call. One ``ChunkStore`` owns a ``root``: two processes on the
same directory are not supported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from edgecache.cachenode.chunkerrors import ChunkCorrupt, ChunkMissing, ChunkStoreFull, raise_os
from edgecache.cachenode.chunkformat import (
    TRAILER,
    InvalidChunk,
    chunk_path,
    read_verified,
    rename_many,
    replace,
    settle_publish,
    tmp_path,
    unlink_many,
    validate_chunk_id,
)
from edgecache.cachenode.chunkleases import Leases
from edgecache.cachenode.chunkwriter import ChunkWriter
from edgecache.cachenode.keyedlock import KeyedLocks
from edgecache.cachenode.recovery import scan
from edgecache.common.durable import fsync_file
from edgecache.common.s3fifo import S3FifoPolicy

__all__ = [
    "TRAILER",
    "ChunkCorrupt",
    "ChunkMissing",
    "ChunkStore",
    "ChunkStoreFull",
    "ChunkStoreStats",
    "ChunkWriter",
    "validate_chunk_id",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


# == Stats and index ============================================================================
@dataclass(frozen=True, slots=True)
class ChunkStoreStats:
    """A snapshot of the store (bytes are payload bytes; counters since ``open``)."""

    capacity_bytes: int
    used_bytes: int  # committed chunks, dirty and clean
    dirty_bytes: int
    chunks: int  # committed chunks, dirty and clean
    evictions: int  # chunks evicted by evict()
    evicted_bytes: int
    corrupt: int  # chunks dropped because they failed verification


class _Entry:
    """One committed chunk. Replaced (new object) by a re-commit; ``dirty`` flips in place."""

    __slots__ = ("dirty", "size")

    def __init__(self, size: int, dirty: bool) -> None:
        self.size = size
        self.dirty = dirty


# == The store ==================================================================================
class ChunkStore:
    """Checksummed chunks on a local disk, dirty (pinned) or clean (evictable).

    Args:
        root: the store's directory (created by :meth:`open`); owned by this instance.
        capacity_bytes: payload bytes the store may hold; the watermarks are fractions of it.
        high_watermark: :meth:`evict` does nothing while ``used_bytes <= high * capacity``.
        low_watermark: :meth:`evict` frees clean chunks down to ``low * capacity``.

    Raises:
        ValueError: ``capacity_bytes <= 0`` or not ``0 < low <= high <= 1``.

    Every method but the constructor needs :meth:`open` first (``RuntimeError`` otherwise).
    Methods taking ids raise ``ValueError`` for an invalid id (see :func:`validate_chunk_id`).
    Use from one event loop; not thread-safe.
    """

    def __init__(
        self,
        root: Path,
        *,
        capacity_bytes: int,
        high_watermark: float = 0.9,
        low_watermark: float = 0.8,
    ) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        if not 0.0 < low_watermark <= high_watermark <= 1.0:
            raise ValueError(
                f"need 0 < low_watermark <= high_watermark <= 1, "
                f"got {low_watermark}, {high_watermark}"
            )
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self._opened = False
        self._index: dict[str, _Entry] = {}
        self._policy = S3FifoPolicy()
        self._locks = KeyedLocks()
        self._readers: dict[str, int] = {}  # chunk id -> reads in flight (pins against eviction)
        self.leases = Leases()  # chunks a reader on this host reads from their files (pinned)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._used = 0
        self._dirty = 0
        self._evictions = 0
        self._evicted_bytes = 0
        self._corrupt = 0

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the directories, delete leftover temp files, and rebuild the index from disk.

        Sizes come from file sizes, dirty/clean from the directory, and the eviction order of
        clean chunks from their access (else modification) times, oldest evicted first. Does
        not read or verify chunk contents (reads do). Calling it again is a no-op.

        Raises:
            OSError: the directory cannot be created or listed.
        """
        if self._opened:
            return
        found, removed = await asyncio.to_thread(scan, self.root)
        for f in found:
            self._index[f.chunk_id] = _Entry(f.size, f.dirty)
            self._used += f.size
            if f.dirty:
                self._dirty += f.size
        for f in sorted((f for f in found if not f.dirty), key=lambda f: f.access_ns):
            self._policy.insert(f.chunk_id, f.size, main=True)
        self._opened = True
        log.info(
            "chunk store opened",
            root=str(self.root),
            chunks=len(self._index),
            used_bytes=self._used,
            dirty_bytes=self._dirty,
            temp_files_removed=removed,
        )

    # -- queries ----------------------------------------------------------------------------
    @property
    def stats(self) -> ChunkStoreStats:
        """A snapshot of the store's sizes and counters."""
        return ChunkStoreStats(
            capacity_bytes=self.capacity_bytes,
            used_bytes=self._used,
            dirty_bytes=self._dirty,
            chunks=len(self._index),
            evictions=self._evictions,
            evicted_bytes=self._evicted_bytes,
            corrupt=self._corrupt,
        )

    def has(self, chunk_id: str) -> bool:
        """Whether ``chunk_id`` is committed here (it may still turn out corrupt on read)."""
        self._check(chunk_id)
        return chunk_id in self._index

    def size_of(self, chunk_id: str) -> int | None:
        """The payload size of ``chunk_id`` in bytes, or ``None`` if it is not here."""
        self._check(chunk_id)
        entry = self._index.get(chunk_id)
        return None if entry is None else entry.size

    def is_dirty(self, chunk_id: str) -> bool | None:
        """Whether ``chunk_id`` is dirty (pinned), or ``None`` if it is not here."""
        self._check(chunk_id)
        entry = self._index.get(chunk_id)
        return None if entry is None else entry.dirty

    def paths_of(self, chunk_id: str) -> list[Path] | None:
        """Where the committed chunk's file is (its state's directory first, then the other
        state's, where :meth:`mark_clean` may move it), or ``None`` if it is not here."""
        self._check(chunk_id)
        entry = self._index.get(chunk_id)
        if entry is None:
            return None
        return [self._path(chunk_id, entry.dirty), self._path(chunk_id, not entry.dirty)]

    def file_path(self, chunk_id: str, *, dirty: bool) -> Path:
        """Where chunk ``chunk_id`` lives once committed in that state (it may not exist)."""
        return self._path(validate_chunk_id(chunk_id), dirty)

    def access(self, chunk_id: str) -> None:
        """Count a read of ``chunk_id`` made outside the store (a short-circuit read) for
        the eviction order."""
        if chunk_id in self._index:
            self._policy.access(chunk_id)

    def dirty_ids(self) -> list[str]:
        """Ids of all dirty chunks (e.g. to reconcile them with manifests after a restart)."""
        self._check()
        return [k for k, e in self._index.items() if e.dirty]

    # -- writing ----------------------------------------------------------------------------
    def writer(self, chunk_id: str, *, dirty: bool) -> ChunkWriter:
        """A streaming writer for ``chunk_id``; nothing is visible until its ``commit()``.

        Args:
            chunk_id: the id; writing an id that exists replaces it at commit.
            dirty: ``True`` for a client write not yet in the origin (pinned until
                :meth:`mark_clean`), ``False`` for a fill from the origin or a peer. Dirty is
                sticky: committing ``dirty=False`` over a dirty chunk keeps it dirty, so a
                re-fill can never unpin an unsynced write.
        """
        self._check(chunk_id)
        return ChunkWriter(
            chunk_id, dirty=dirty, tmp=tmp_path(self.root, chunk_id), publish=self._commit
        )

    async def _commit(self, chunk_id: str, tmp: Path, size: int, dirty: bool) -> None:
        """A writer's commit: :meth:`_publish`, to completion even if the caller is cancelled."""
        await self._shielded(self._publish(chunk_id, tmp, size, dirty))

    async def _publish(self, chunk_id: str, tmp: Path, size: int, dirty: bool) -> None:
        """Move a finished temp file into place and index it (runs shielded from cancellation)."""
        await self._locks.acquire(chunk_id)
        try:
            old = self._index.get(chunk_id)
            synced = dirty  # the writer fsynced only a chunk committed as dirty
            dirty = dirty or (old is not None and old.dirty)  # dirty is sticky
            dest = self._path(chunk_id, dirty)
            old_path = None if old is None else self._path(chunk_id, old.dirty)
            try:
                if dirty and not synced:
                    await asyncio.to_thread(fsync_file, tmp)
                await asyncio.to_thread(replace, tmp, dest)
            except OSError as exc:  # nothing changed
                raise_os(exc)
            # the new file is in place: the index follows the disk from here on
            if old is not None:
                self._used -= old.size
                if old.dirty:
                    self._dirty -= old.size
                elif dirty:
                    self._policy.remove(chunk_id)
            self._index[chunk_id] = _Entry(size, dirty)
            self._used += size
            if dirty:
                self._dirty += size
            else:
                self._policy.insert(chunk_id, size)  # a clean re-fill keeps its place
            try:
                await asyncio.to_thread(settle_publish, dest, old_path, sync=dirty)
            except OSError as exc:  # visible, but not known to be durable: the commit fails
                raise_os(exc)
        finally:
            self._locks.release(chunk_id)

    # -- reading ----------------------------------------------------------------------------
    async def read(self, chunk_id: str, first: int = 0, last: int | None = None) -> bytes:
        """Bytes ``first..last`` (inclusive) of a chunk, after verifying the whole chunk.

        The whole chunk (at most ``chunk_bytes``) is read and its CRC32C checked in one thread
        call, then sliced; a whole-chunk read returns the payload without another copy. Each
        read counts as an access for eviction; a chunk is not evicted while being read (it may
        be right after).

        Args:
            chunk_id: the chunk.
            first: offset of the first byte, ``0 <= first < size``.
            last: offset of the last byte, ``first <= last < size``; ``None``: the last byte.

        Returns:
            ``last - first + 1`` bytes.

        Raises:
            ChunkMissing: the chunk is not here.
            ChunkCorrupt: it failed verification; it has been deleted.
            ValueError: invalid id or range.
            OSError: another error reading the file.
        """
        self._check(chunk_id)
        for _attempt in range(4):
            entry = self._index.get(chunk_id)
            if entry is None:
                raise ChunkMissing(chunk_id)
            end = entry.size - 1 if last is None else last
            if not 0 <= first <= end < entry.size:
                raise ValueError(
                    f"range {first}..{last} outside chunk {chunk_id!r} of {entry.size} B"
                )
            path = self._path(chunk_id, entry.dirty)
            self._readers[chunk_id] = self._readers.get(chunk_id, 0) + 1
            try:
                payload = await asyncio.to_thread(read_verified, path)
            except FileNotFoundError:
                # mark_clean renames the file before it updates the index (under the chunk's
                # lock): wait for a change in progress to finish before judging
                await self._locks.acquire(chunk_id)
                try:
                    same = self._index.get(chunk_id) is entry
                    vanished = same and self._path(chunk_id, entry.dirty) == path and not path.exists()
                finally:
                    self._locks.release(chunk_id)
                if vanished:  # not moved by mark_clean nor replaced: gone from under us
                    log.warning("chunk file vanished", chunk_id=chunk_id, path=str(path))
                    await self._drop(chunk_id, entry)
                    raise ChunkMissing(chunk_id) from None
                continue  # moved or replaced meanwhile: look it up again
            except InvalidChunk as exc:
                self._corrupt += 1
                log.warning("corrupt chunk dropped", chunk_id=chunk_id, reason=str(exc))
                await self._drop(chunk_id, entry)
                raise ChunkCorrupt(f"chunk {chunk_id!r}: {exc}") from None
            finally:
                self._unpin(chunk_id)
            if len(payload) != entry.size:
                if self._index.get(chunk_id) is not entry:
                    continue  # re-committed meanwhile with another size: read it again
                self._corrupt += 1
                log.warning("chunk size differs from index", chunk_id=chunk_id)
                await self._drop(chunk_id, entry)
                raise ChunkCorrupt(f"chunk {chunk_id!r}: {len(payload)} B, expected {entry.size}")
            self._policy.access(chunk_id)
            if first == 0 and end == len(payload) - 1:
                return payload
            return payload[first : end + 1]
        raise ChunkMissing(chunk_id)  # kept moving under us; treat as gone

    def _unpin(self, chunk_id: str) -> None:
        n = self._readers[chunk_id] - 1
        if n:
            self._readers[chunk_id] = n
        else:
            del self._readers[chunk_id]

    async def _drop(self, chunk_id: str, entry: _Entry) -> None:
        """Delete ``chunk_id`` if it is still ``entry`` (not replaced by a re-commit)."""

        async def run() -> None:
            await self._locks.acquire(chunk_id)
            try:
                if self._index.get(chunk_id) is not entry:
                    return
                path = self._path(chunk_id, entry.dirty)
                self._forget(chunk_id)
                await asyncio.to_thread(unlink_many, [path])
            finally:
                self._locks.release(chunk_id)

        await self._shielded(run())

    # -- state changes ----------------------------------------------------------------------
    async def mark_clean(self, chunk_ids: Iterable[str]) -> None:
        """Make dirty chunks clean (evictable), durably: a rename and two directory fsyncs.

        Ids that are missing or already clean are skipped (idempotent). Chunks still being
        written are not affected. Completes even if the caller is cancelled.

        Raises:
            ValueError: an invalid id (nothing is changed).
            OSError: a rename or fsync failed; chunks renamed before it are clean.
        """
        ids = [self._check(c) for c in chunk_ids]

        async def run() -> None:
            held = await self._locks.acquire_many(ids)
            try:
                todo = [c for c in held if (e := self._index.get(c)) is not None and e.dirty]
                moves = [(self._path(c, True), self._path(c, False)) for c in todo]
                moved, error = await asyncio.to_thread(rename_many, moves)
                for chunk_id, status in zip(todo, moved, strict=True):
                    entry = self._index[chunk_id]
                    if isinstance(status, OSError):
                        error = error or status
                    elif not status:  # the file vanished
                        self._forget(chunk_id)
                    else:
                        entry.dirty = False
                        self._dirty -= entry.size
                        self._policy.insert(chunk_id, entry.size)
                if error is not None:
                    raise error
            finally:
                for chunk_id in held:
                    self._locks.release(chunk_id)

        await self._shielded(run())

    async def delete(self, chunk_ids: Iterable[str]) -> None:
        """Delete chunks, dirty or clean. Missing ids are skipped (idempotent).

        A chunk being written is not affected and appears when its writer commits. Deletes
        are not fsynced: a chunk deleted just before a crash may reappear (harmless, it is
        immutable). Completes even if the caller is cancelled.

        Raises:
            ValueError: an invalid id (nothing is deleted).
        """
        ids = [self._check(c) for c in chunk_ids]

        async def run() -> None:
            held = await self._locks.acquire_many(ids)
            try:
                paths = []
                for chunk_id in held:
                    entry = self._index.get(chunk_id)
                    if entry is not None:
                        paths.append(self._path(chunk_id, entry.dirty))
                        self._forget(chunk_id)
                if paths:
                    await asyncio.to_thread(unlink_many, paths)
            finally:
                for chunk_id in held:
                    self._locks.release(chunk_id)

        await self._shielded(run())

    async def purge(self, chunk_ids: Iterable[str]) -> list[str]:
        """Delete the clean chunks among ``chunk_ids`` that nothing uses now: not dirty, not
        being read, not under a short-circuit lease, not being written (a purged version's,
        which no manifest names any more). The others stay, for eviction to take later.

        Returns:
            The ids deleted.

        Raises:
            ValueError: an invalid id (nothing is deleted).
        """
        ids = [self._check(c) for c in chunk_ids]
        gone = [c for c in ids if self._evictable(c)]
        if gone:
            await self.delete(gone)
        return gone

    async def evict(self) -> list[str]:
        """Evict clean chunks if ``used_bytes > high_watermark * capacity_bytes``.

        Frees clean chunks, S3-FIFO order, until ``used_bytes <= low_watermark *
        capacity_bytes`` or no clean chunk can go. Dirty chunks, chunks being read or under a
        live lease (:mod:`.chunkleases`; expired ones are dropped first) and chunks
        being published, marked clean or deleted are never chosen; chunks being written are
        not in the index yet. Safe to call concurrently with everything else.

        Returns:
            The evicted chunk ids (empty if under the high watermark or nothing evictable).
        """
        self._check()
        self.leases.expire()
        if self._used <= self.high_watermark * self.capacity_bytes:
            return []
        need = self._used - int(self.low_watermark * self.capacity_bytes)
        victims = self._policy.select_victims(need, self._evictable)
        if not victims:
            log.warning(
                "over the high watermark with nothing evictable",
                used_bytes=self._used,
                dirty_bytes=self._dirty,
                capacity_bytes=self.capacity_bytes,
            )
            return []
        ids: list[str] = []
        paths: list[Path] = []
        for chunk_id, _size in victims:  # claim synchronously: no await since select_victims
            claimed = self._locks.try_acquire(chunk_id)
            assert claimed, chunk_id  # _evictable checked it
            entry = self._index.pop(chunk_id)
            self._used -= entry.size
            self._evictions += 1
            self._evicted_bytes += entry.size
            ids.append(chunk_id)
            paths.append(self._path(chunk_id, False))

        async def run() -> None:
            try:
                await asyncio.to_thread(unlink_many, paths)
            finally:
                for chunk_id in ids:
                    self._locks.release(chunk_id)

        await self._shielded(run())
        log.debug("evicted chunks", chunks=len(ids), used_bytes=self._used)
        return ids

    def _evictable(self, chunk_id: str) -> bool:
        entry = self._index.get(chunk_id)
        return (
            entry is not None
            and not entry.dirty
            and chunk_id not in self._readers
            and not self.leases.pinned(chunk_id)
            and chunk_id not in self._locks
        )

    # -- internals --------------------------------------------------------------------------
    def _check(self, chunk_id: str | None = None) -> str:
        if not self._opened:
            raise RuntimeError("ChunkStore.open() has not been awaited")
        return "" if chunk_id is None else validate_chunk_id(chunk_id)

    def _path(self, chunk_id: str, dirty: bool) -> Path:
        return chunk_path(self.root, chunk_id, dirty)

    def _forget(self, chunk_id: str) -> None:
        """Remove ``chunk_id`` from the index, the accounting and the policy."""
        entry = self._index.pop(chunk_id, None)
        if entry is None:
            return
        self._used -= entry.size
        if entry.dirty:
            self._dirty -= entry.size
        self._policy.remove(chunk_id)

    async def _shielded(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` to completion even if the caller is cancelled (it still sees the
        cancellation): index and disk must not disagree half-way through an operation."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(_settle(self._tasks))
        return await asyncio.shield(task)


def _settle(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so an abandoned (shielded) failure is not reported lost

    return done
