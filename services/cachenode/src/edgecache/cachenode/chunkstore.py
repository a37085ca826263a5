"""The cache node's on-disk chunk store: immutable, checksummed chunks with eviction.

A chunk is an immutable piece of an object (at most ``chunk_bytes``, default 8 MiB; never
empty) named by an id the cache node makes, ``[A-Za-z0-9._-]{1,200}`` except ``.`` and
``..`` (e.g. ``<version>.<index>``). Chunks are **dirty** (not yet in the origin: pinned,
never evicted) or **clean** (evictable). The state is kept by the directory a chunk lives
in, so it survives a restart without any database.

On-disk format (``root`` is ``CacheNodeConfig`` / ``Config.cachenode_dir()``)::

    root/tmp/<id>.<16 hex>.tmp     a write in progress; deleted by open() (never published)
    root/dirty/<ss>/<id>           a dirty chunk
    root/clean/<ss>/<id>           a clean chunk

``<ss>`` is the shard, two lowercase hex digits: ``crc32c(id as ASCII) & 0xFF`` (256
shards per state, all created by :meth:`ChunkStore.open`). A chunk file is the payload
followed by a 20-byte little-endian trailer (``struct`` format ``<4sBBHQI``):

    ======  =====  ==================================================
    offset  bytes  field
    ======  =====  ==================================================
    0       4      magic ``b"ECCK"``
    4       1      format version, 1
    5       1      flags, 0
    6       2      reserved, 0
    8       8      payload length in bytes (= file size - 20)
    16      4      CRC32C (Castagnoli) of the payload
    ======  =====  ==================================================

A write streams into ``tmp/``, appends the trailer, fsyncs the file, renames it into
``dirty/`` or ``clean/`` and fsyncs that directory: a committed chunk is durable and
complete or absent. ``mark_clean`` is a rename ``dirty/ -> clean/`` followed by an fsync of
both directories. If a crash leaves the same id in both (a re-commit dirty over clean),
``open()`` keeps the dirty one. The access time of a file (set explicitly on each read, so
``noatime``/``relatime`` mounts do not matter) or else its modification time orders clean
chunks for eviction after a restart.

Accounting: ``used_bytes`` counts payload bytes of committed chunks; the trailers, the
directories, filesystem block rounding and writes in progress are not counted, so leave
some headroom below the disk size.

Eviction is S3-FIFO (:mod:`edgecache.cachenode.eviction`) over clean chunks: above
``high_watermark * capacity_bytes``, :meth:`ChunkStore.evict` deletes clean chunks until
``used_bytes <= low_watermark * capacity_bytes`` (or no clean chunk is left to evict).

All blocking file I/O runs in the default thread pool (``asyncio.to_thread``); a whole chunk
is read, and verified, in one call. One ``ChunkStore`` owns a ``root``: two processes on the
same directory are not supported.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import struct
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, Self, TypeVar

import crc32c
import structlog

from edgecache.cachenode.eviction import S3FifoPolicy

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

TRAILER = struct.Struct("<4sBBHQI")
"""The 20-byte chunk trailer: magic, version, flags, reserved, payload length, CRC32C."""
_MAGIC = b"ECCK"
_VERSION = 1
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_TMP_SUFFIX = ".tmp"
_SHARDS = [f"{i:02x}" for i in range(256)]
# small pieces handed to write() are gathered up to this many bytes per thread hop
_WRITE_BUFFER_BYTES = 1024 * 1024
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


# == Errors =====================================================================================
class ChunkMissing(KeyError):
    """The chunk is not in the store (never written, deleted, evicted, or dropped as corrupt)."""


class ChunkCorrupt(Exception):
    """The chunk failed verification (checksum, trailer or length) or could not be read (EIO).

    The chunk has been deleted from the store by the time this is raised, so it is refetched.
    """


class ChunkStoreFull(OSError):
    """The disk is full (``ENOSPC`` or ``EDQUOT``) while writing or publishing a chunk.

    The write was aborted; nothing became visible. ``errno`` is the original one; the
    original ``OSError`` is the ``__cause__``.
    """


def validate_chunk_id(chunk_id: str) -> str:
    """Return ``chunk_id`` if it is a valid chunk id.

    Raises:
        ValueError: not 1..200 characters of ``[A-Za-z0-9._-]``, or ``.``/``..``.
    """
    if not isinstance(chunk_id, str) or not _ID_RE.fullmatch(chunk_id) or chunk_id in (".", ".."):
        raise ValueError(f"invalid chunk id {chunk_id!r}")
    return chunk_id


def _shard(chunk_id: str) -> str:
    return _SHARDS[crc32c.crc32c(chunk_id.encode("ascii")) & 0xFF]


def _raise_os(exc: OSError) -> NoReturn:
    """Re-raise ``exc``, as :class:`ChunkStoreFull` if it means a full disk."""
    if exc.errno in _FULL_ERRNOS and not isinstance(exc, ChunkStoreFull):
        raise ChunkStoreFull(exc.errno, f"chunk store disk full: {exc.strerror}") from exc
    raise exc


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


class _KeyedLocks:
    """Per-chunk-id mutual exclusion for publish, mark_clean, delete and eviction.

    ``try_acquire`` is synchronous, so eviction can choose and claim victims without
    yielding to the event loop in between.
    """

    def __init__(self) -> None:
        self._held: dict[str, list[asyncio.Future[None]]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def try_acquire(self, key: str) -> bool:
        if key in self._held:
            return False
        self._held[key] = []
        return True

    async def acquire(self, key: str) -> None:
        while key in self._held:
            waiter = asyncio.get_running_loop().create_future()
            self._held[key].append(waiter)
            await waiter
        self._held[key] = []

    async def acquire_many(self, keys: Iterable[str]) -> list[str]:
        """Acquire every key (deduplicated, in sorted order so that callers never deadlock)."""
        got: list[str] = []
        try:
            for key in sorted(set(keys)):
                await self.acquire(key)
                got.append(key)
        except BaseException:
            for key in got:
                self.release(key)
            raise
        return got

    def release(self, key: str) -> None:
        for waiter in self._held.pop(key):
            if not waiter.done():
                waiter.set_result(None)


# == Blocking helpers (run in threads) =========================================================
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Invalid(Exception):
    """Raised in a reader thread: the file is not a valid chunk."""


def _read_verified(path: Path) -> bytes:
    """Read a chunk file, verify trailer and CRC32C, touch its atime; return the payload.

    Raises:
        FileNotFoundError: no such file.
        _Invalid: bad trailer, length or checksum, or an I/O error (EIO) while reading.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            length = st.st_size - TRAILER.size
            if length <= 0:
                raise _Invalid(f"file of {st.st_size} B is too short")
            payload = f.read(length)
            trailer = f.read(TRAILER.size + 1)
            try:  # eviction order after a restart; best effort
                os.utime(f.fileno(), ns=(time.time_ns(), st.st_mtime_ns))
            except OSError:
                pass
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise _Invalid(f"I/O error: {exc}") from exc
        raise
    if len(payload) != length or len(trailer) != TRAILER.size:
        raise _Invalid("file changed size while being read")
    magic, version, flags, reserved, stored_length, stored_crc = TRAILER.unpack(trailer)
    if (magic, version, flags, reserved) != (_MAGIC, _VERSION, 0, 0):
        raise _Invalid(f"bad trailer {trailer.hex()}")
    if stored_length != length:
        raise _Invalid(f"trailer says {stored_length} B, file holds {length} B")
    crc = crc32c.crc32c(payload)
    if crc != stored_crc:
        raise _Invalid(f"crc32c {crc:08x} != stored {stored_crc:08x}")
    return payload


def _open_tmp(path: Path) -> BinaryIO:
    return open(path, "xb")


def _append(f: BinaryIO, data: bytes | bytearray | memoryview, crc: int) -> int:
    f.write(data)
    return crc32c.crc32c(data, value=crc)


def _finish(f: BinaryIO, pending: bytes | bytearray | memoryview, crc: int, size: int) -> int:
    """Write the last buffered bytes and the trailer, fsync and close; return the CRC32C."""
    try:
        if pending:
            crc = _append(f, pending, crc)
        f.write(TRAILER.pack(_MAGIC, _VERSION, 0, 0, size, crc))
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()
    return crc


def _discard(f: BinaryIO | None, path: Path) -> None:
    try:
        if f is not None:
            f.close()
    except OSError:
        pass
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _replace(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` over ``dest``; on failure remove ``tmp``."""
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _settle_publish(dest: Path, old: Path | None) -> None:
    """Make the rename into ``dest`` durable, then remove ``old`` (the other state's copy)."""
    _fsync_dir(dest.parent)
    if old is not None and old != dest:
        old.unlink(missing_ok=True)
        _fsync_dir(old.parent)


def _rename_many(moves: list[tuple[Path, Path]]) -> tuple[list[bool | OSError], OSError | None]:
    """Rename each ``(src, dst)``, then fsync every directory touched, once each.

    Returns:
        Per move: ``True`` (moved), ``False`` (``src`` missing) or the ``OSError``; and the
        first fsync error, if any.
    """
    done: list[bool | OSError] = []
    dirs: set[Path] = set()
    for src, dst in moves:
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            done.append(False)
            continue
        except OSError as exc:
            done.append(exc)
            continue
        done.append(True)
        dirs.update((src.parent, dst.parent))
    error: OSError | None = None
    for d in dirs:
        try:
            _fsync_dir(d)
        except OSError as exc:
            error = error or exc
    return done, error


def _unlink_many(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the chunk is out of the index; the file is only wasted space
            log.warning("chunk unlink failed", path=str(path), error=str(exc))


@dataclass(slots=True)
class _Found:
    chunk_id: str
    dirty: bool
    size: int  # payload bytes
    access_ns: int


def _scan(root: Path) -> tuple[list[_Found], int]:
    """Create the layout, empty ``tmp/``, list chunks. Returns (chunks, temp files removed)."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for state in ("dirty", "clean"):
        for shard in _SHARDS:
            (root / state / shard).mkdir(parents=True, exist_ok=True)
    removed = 0
    with os.scandir(tmp) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    found: dict[str, _Found] = {}
    for state in ("dirty", "clean"):  # dirty first: it wins over a clean copy of the same id
        dirty = state == "dirty"
        for shard in _SHARDS:
            shard_dir = root / state / shard
            with os.scandir(shard_dir) as it:
                for entry in it:
                    name = entry.name
                    if (
                        not entry.is_file(follow_symlinks=False)
                        or not _ID_RE.fullmatch(name)
                        or name in (".", "..")
                        or _shard(name) != shard
                    ):
                        log.warning("foreign file in chunk store left alone", path=entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    size = st.st_size - TRAILER.size
                    if size <= 0 or (not dirty and name in found):
                        # too short to be a chunk we published, or a clean copy left behind
                        # by a re-commit as dirty interrupted by a crash
                        os.unlink(entry.path)
                        continue
                    found[name] = _Found(name, dirty, size, max(st.st_atime_ns, st.st_mtime_ns))
    for state in ("dirty", "clean"):
        _fsync_dir(root / state)
    _fsync_dir(root)
    return list(found.values()), removed


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
        self._locks = _KeyedLocks()
        self._readers: dict[str, int] = {}  # chunk id -> reads in flight (pins against eviction)
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
        found, removed = await asyncio.to_thread(_scan, self.root)
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
        return ChunkWriter(self, chunk_id, dirty=dirty)

    async def _publish(self, chunk_id: str, tmp: Path, size: int, dirty: bool) -> None:
        """Move a finished temp file into place and index it (runs shielded from cancellation)."""
        await self._locks.acquire(chunk_id)
        try:
            old = self._index.get(chunk_id)
            dirty = dirty or (old is not None and old.dirty)  # dirty is sticky
            dest = self._path(chunk_id, dirty)
            old_path = None if old is None else self._path(chunk_id, old.dirty)
            try:
                await asyncio.to_thread(_replace, tmp, dest)
            except OSError as exc:  # nothing changed
                _raise_os(exc)
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
                await asyncio.to_thread(_settle_publish, dest, old_path)
            except OSError as exc:  # visible, but not known to be durable: the commit fails
                _raise_os(exc)
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
                payload = await asyncio.to_thread(_read_verified, path)
            except FileNotFoundError:
                if self._index.get(chunk_id) is entry and self._path(chunk_id, entry.dirty) == path:
                    # not moved by mark_clean nor replaced: the file vanished under us
                    log.warning("chunk file vanished", chunk_id=chunk_id, path=str(path))
                    await self._drop(chunk_id, entry)
                    raise ChunkMissing(chunk_id) from None
                continue  # moved or replaced meanwhile: look it up again
            except _Invalid as exc:
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
                await asyncio.to_thread(_unlink_many, [path])
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
                moved, error = await asyncio.to_thread(_rename_many, moves)
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
                    await asyncio.to_thread(_unlink_many, paths)
            finally:
                for chunk_id in held:
                    self._locks.release(chunk_id)

        await self._shielded(run())

    async def evict(self) -> list[str]:
        """Evict clean chunks if ``used_bytes > high_watermark * capacity_bytes``.

        Frees clean chunks, S3-FIFO order, until ``used_bytes <= low_watermark *
        capacity_bytes`` or no clean chunk can go. Dirty chunks, chunks being read and chunks
        being published, marked clean or deleted are never chosen; chunks being written are
        not in the index yet. Safe to call concurrently with everything else.

        Returns:
            The evicted chunk ids (empty if under the high watermark or nothing evictable).
        """
        self._check()
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
                await asyncio.to_thread(_unlink_many, paths)
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
            and chunk_id not in self._locks
        )

    # -- internals --------------------------------------------------------------------------
    def _check(self, chunk_id: str | None = None) -> str:
        if not self._opened:
            raise RuntimeError("ChunkStore.open() has not been awaited")
        return "" if chunk_id is None else validate_chunk_id(chunk_id)

    def _path(self, chunk_id: str, dirty: bool) -> Path:
        return self.root / ("dirty" if dirty else "clean") / _shard(chunk_id) / chunk_id

    def _tmp_path(self, chunk_id: str) -> Path:
        return self.root / "tmp" / f"{chunk_id}.{secrets.token_hex(8)}{_TMP_SUFFIX}"

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


# == The writer =================================================================================
class ChunkWriter:
    """Streams one chunk into a temp file; :meth:`commit` publishes it atomically.

    Get one from :meth:`ChunkStore.writer`. Use as ``async with store.writer(id, dirty=True)
    as w:``; leaving the block without ``commit()``, or with an exception, aborts. Not for
    concurrent use: await each call before the next. Any failure of ``write``/``commit``
    (including cancellation) aborts the write; the writer is then finished.
    """

    def __init__(self, store: ChunkStore, chunk_id: str, *, dirty: bool) -> None:
        self._store = store
        self.chunk_id = chunk_id
        self.dirty = dirty
        self._tmp = store._tmp_path(chunk_id)
        self._file: BinaryIO | None = None
        self._buf = bytearray()
        self._crc = 0
        self._size = 0
        self._finished = False  # committed, aborted or failed
        self._handed_off = False  # commit passed the temp file to ChunkStore._publish
        self._discarded = False
        self._busy = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            await self.abort()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the chunk (small pieces are gathered up to 1 MiB per disk write).

        Raises:
            ChunkStoreFull: the disk is full; the write was aborted.
            OSError: another I/O error; the write was aborted.
            RuntimeError: the writer is finished, or another call is in progress.
        """
        self._enter()
        try:
            n = data.nbytes if isinstance(data, memoryview) else len(data)
            if not n:
                return
            if self._file is None:
                self._file = await self._thread(_open_tmp, self._tmp)
            if not self._buf and n >= _WRITE_BUFFER_BYTES:
                self._crc = await self._thread(_append, self._file, data, self._crc)
            else:
                self._buf += data
                if len(self._buf) >= _WRITE_BUFFER_BYTES:
                    buf, self._buf = self._buf, bytearray()
                    self._crc = await self._thread(_append, self._file, buf, self._crc)
            self._size += n
        except OSError as exc:
            await self._fail()
            _raise_os(exc)
        except BaseException:
            await self._fail()
            raise
        finally:
            self._busy = False

    async def commit(self) -> int:
        """fsync the chunk and publish it atomically (replacing any chunk of the same id).

        When this returns the chunk is durable, visible and counted. If the caller is
        cancelled while the chunk is being published, the publish still completes.

        Returns:
            The chunk's size in bytes.

        Raises:
            ValueError: nothing was written (empty chunks are not stored: a 0-byte object
                has no chunks); the write was aborted.
            ChunkStoreFull: the disk is full; the write was aborted (if the rename succeeded
                and only the directory fsync failed, the chunk is visible but the commit
                still fails).
            OSError: another I/O error; as for ``ChunkStoreFull``.
            RuntimeError: the writer is finished, or another call is in progress.
        """
        self._enter()
        try:
            if self._size == 0:
                raise ValueError(f"chunk {self.chunk_id!r} is empty; empty chunks are not stored")
            assert self._file is not None
            pending, self._buf = self._buf, bytearray()
            await self._thread(_finish, self._file, pending, self._crc, self._size)
            self._file = None  # closed by _finish
            self._handed_off = True  # the temp file now belongs to _publish
            self._finished = True
            await self._store._shielded(
                self._store._publish(self.chunk_id, self._tmp, self._size, self.dirty)
            )
            return self._size
        except OSError as exc:
            await self._fail()
            _raise_os(exc)
        except BaseException:
            await self._fail()
            raise
        finally:
            self._busy = False

    async def abort(self) -> None:
        """Discard what was written; nothing becomes visible. No-op once finished.

        Raises:
            RuntimeError: another call is in progress.
        """
        if self._finished:
            return
        if self._busy:
            raise RuntimeError(f"concurrent call on the writer for chunk {self.chunk_id!r}")
        await self._fail()

    def _enter(self) -> None:
        if self._finished:
            raise RuntimeError(f"writer for chunk {self.chunk_id!r} is finished")
        if self._busy:
            raise RuntimeError(f"concurrent call on the writer for chunk {self.chunk_id!r}")
        self._busy = True

    async def _thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in a thread; if cancelled, wait for the thread before re-raising so the
        temp file is never closed or unlinked under a running write."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            if not fut.cancelled():
                fut.exception()  # retrieved: the cancellation is what the caller gets
            raise

    async def _fail(self) -> None:
        """Finish the writer; close and remove the temp file unless ``_publish`` owns it."""
        self._finished = True
        self._buf = bytearray()
        if self._handed_off or self._discarded:
            return
        self._discarded = True
        f, self._file = self._file, None
        await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(_discard, f, self._tmp)))
