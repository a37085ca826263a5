"""Filling chunks from the origin: one ranged GET per run of chunks, handed to readers as
it arrives.

A fill is one ranged GET of the origin (``If-Match`` the version's ETag), written to clean
chunks; every reader following it reads each chunk's temp file as the bytes land there
(:class:`ChunkFill`): the first byte reaches the client before the chunk is complete, time
to first byte does not grow with the object's size, and a follower that lags holds no
more of the chunk in memory than one read. A fill that fails leaves no chunk behind and fails its
readers mid-stream; one that finds the object changed in the origin forgets the version
(its manifest goes, through the catalog). Choosing what to fill is
:mod:`.readthrough`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from edgecache.cachenode.threads import run_to_completion
from edgecache.common import errors, wire
from edgecache.common.logging import get_logger
from edgecache.origin.base import BlockingRangeRead, RangeRead

if TYPE_CHECKING:
    from edgecache.cachenode.chunkstore import ChunkStore
    from edgecache.cachenode.chunkwriter import ChunkWriter
    from edgecache.cachenode.counters import Counters
    from edgecache.common.catalog import Catalog
    from edgecache.origin import Origin

__all__ = ["FOLLOW_READ_BYTES", "PUMP_READ_BYTES", "ChunkFill", "Filler"]

log = get_logger(__name__)


FOLLOW_READ_BYTES = 1024 * 1024
"""The most bytes a follower reads from the chunk file at once."""


class ChunkFill:
    """One chunk being filled from the origin; readers follow it **on disk** as it lands.

    The fill writes the chunk's temp file; a follower reads the bytes that have landed in
    it (``pread`` on one descriptor the fill opens, which stays valid when the commit
    renames the file into place), at most :data:`FOLLOW_READ_BYTES` at a time. Nothing of
    the chunk is kept in memory for its followers: however far behind a follower is, it
    holds one read.
    """

    def __init__(self, chunk_id: str, size: int) -> None:
        self.chunk_id = chunk_id
        self.size = size
        self.received = 0  # bytes handed to the writer
        self.landed = 0  # bytes in the file, readable by followers
        self.done = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # what followers wait on for news
        self.paths: list[str] = []  # the temp file once it exists, then where the commit puts it
        self._fd: int | None = None
        self._users = 1  # the fill itself, and each follower

    def _notify(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _news(self) -> None:
        """Wait for the next :meth:`landed_at` or :meth:`finish` (shared by the followers:
        one follower's cancellation leaves the others waiting)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def landed_at(self, path: Path, landed: int) -> None:
        """``landed`` bytes of the chunk are now in ``path`` (its temp file, which exists
        from the writer's first write on): wake the followers. Runs on the event loop (a
        worker thread calls it through ``call_soon_threadsafe``)."""
        if self._fd is None:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self.paths = [str(path), *self.paths]
        if landed <= self.landed:
            return
        self.landed = landed
        self._notify()

    def finish(self, error: BaseException | None = None) -> None:
        """End the fill: complete (committed to disk, every byte landed), or failed with
        ``error``, which its followers then raise."""
        self.done, self.error = True, error
        if error is None:
            self.landed = self.size
        self._notify()
        self._unuse()

    def _unuse(self) -> None:
        self._users -= 1
        if not self._users and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def spans(self, first: int, last: int) -> AsyncIterator[tuple[int, int]]:
        """``(offset, length)`` of the chunk's bytes ``first..last`` (inclusive) as they
        land in :attr:`paths`, at most :data:`FOLLOW_READ_BYTES` each, in order.

        Raises:
            The fill's error, if it fails before ``last`` landed.
        """
        position = first
        while position <= last:
            if self.error is not None:
                raise self.error
            if self.landed > position:
                n = min(last + 1, self.landed, position + FOLLOW_READ_BYTES) - position
                yield position, n
                position += n
                continue
            if self.done:
                raise errors.InternalError(f"fill of {self.chunk_id} ended short")
            await self._news()

    async def follow(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first..last`` (inclusive) of the chunk, read from disk as they land.

        Raises:
            The fill's error, if it fails before ``last`` landed.
        """
        self._users += 1
        try:
            async for offset, n in self.spans(first, last):
                if self._fd is None:  # the fill failed before a byte landed
                    raise self.error or errors.InternalError(f"fill of {self.chunk_id} ended short")
                data = await asyncio.to_thread(os.pread, self._fd, n, offset)
                if len(data) != n:
                    raise errors.InternalError(f"chunk {self.chunk_id}: {len(data)} of {n} landed bytes read")
                yield data
        finally:
            self._unuse()


PUMP_READ_BYTES = 1024 * 1024
"""The most bytes a fill's worker thread reads from the origin at once (the first read of a
chunk: :data:`_FIRST_READ_BYTES`)."""
_FIRST_READ_BYTES = 64 * 1024  # a chunk's first read: its followers start early


def _short(fill: ChunkFill) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(
        f"origin sent {fill.received} of {fill.size} bytes of {fill.chunk_id}", retry_after_s=1
    )


def _pump(
    opened: BlockingRangeRead, writer: ChunkWriter, fill: ChunkFill, loop: asyncio.AbstractEventLoop, stop: threading.Event
) -> None:
    """In a worker thread: read ``fill``'s bytes from ``opened`` into ``writer`` (its temp
    file), telling the followers on ``loop`` after each read; stop early when ``stop`` is set.

    Raises:
        ServiceUnavailable: the stream ended before the chunk did (or its own error).
        InternalError: stopped. ChunkStoreFull, OSError: the chunk store's.
    """
    while fill.received < fill.size:
        if stop.is_set():
            raise errors.InternalError("fill cancelled")
        data = opened.read(min(PUMP_READ_BYTES if fill.received else _FIRST_READ_BYTES, fill.size - fill.received))
        if not data:
            raise _short(fill)
        writer.write_blocking(data)
        fill.received += len(data)
        loop.call_soon_threadsafe(fill.landed_at, writer.path, writer.landed)


class Filler:
    """This node's fills: one at a time per chunk, at most ``slots`` origin GETs at once.

    A fill is a **run**: one ranged GET covering a chunk and the consecutive chunks after it
    that are neither here nor being filled, up to ``run_bytes`` and never past the last
    chunk the reader asked for. Fewer, larger origin requests cost less (per-request
    latency and billing), and each run still buffers at most the chunk it is writing.

    Args:
        store: where the filled chunks are written (clean: evictable).
        origin: where their bytes come from.
        catalog: the manifests; a version that changed in the origin is forgotten there.
        counters: this node's counters (``fills``: origin GETs; ``fill_bytes``).
        slots: origin GETs at once.
        run_bytes: the most bytes one GET covers.
    """

    def __init__(
        self,
        store: ChunkStore,
        origin: Origin,
        catalog: Catalog,
        counters: Counters,
        *,
        slots: int,
        run_bytes: int,
    ) -> None:
        self._store = store
        self._origin = origin
        self._catalog = catalog
        self._counters = counters
        self._slots = asyncio.Semaphore(slots)
        self._run_bytes = run_bytes
        # the worker threads of the fills' blocking reads: one per slot, so that a slow
        # origin never holds the default pool's threads that chunk reads and writes use
        self._pumps = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="fill")
        self.active: dict[str, ChunkFill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def idle(self, chunk: wire.ChunkRef) -> bool:
        """Whether ``chunk`` is neither on this node's disk nor being filled here."""
        return chunk.id not in self.active and not self._store.has(chunk.id)

    def start(self, manifest: wire.Manifest, index: int, *, until: int) -> ChunkFill:
        """The fill of chunk ``index``: the running one, or a new run from ``index`` that
        may take in idle chunks up to ``until`` (inclusive)."""
        chunk = manifest.chunks[index]
        fill = self.active.get(chunk.id)
        if fill is not None:
            return fill
        run, size = [index], chunk.size
        for j in range(index + 1, min(until, len(manifest.chunks) - 1) + 1):
            nxt = manifest.chunks[j]
            if size + nxt.size > self._run_bytes or not self.idle(nxt):
                break
            run.append(j)
            size += nxt.size
        return self._launch(manifest, run, None)

    async def open_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> RangeRead | BlockingRangeRead:
        """Open a ranged GET of the origin as a fill reads it: in one of the fill threads
        (:meth:`Origin.open_range_blocking`) from an origin with blocking reads, else on
        the event loop (:meth:`Origin.open_range`). Close it (``aclose``), read or not.

        Raises:
            What the origin's ``open_range`` raises.
        """
        if not self._origin.blocking_reads:
            return await self._origin.open_range(bucket, key, first, last, if_match=if_match)
        return await run_to_completion(
            functools.partial(self._origin.open_range_blocking, bucket, key, first, last, if_match=if_match),
            executor=self._pumps,
            on_dropped=BlockingRangeRead.close,  # opened after its caller was cancelled
        )

    def start_opened(self, manifest: wire.Manifest, run: range, opened: RangeRead | BlockingRangeRead) -> ChunkFill:
        """The fill of the consecutive chunks ``run`` (idle) from a ranged GET already open
        (:meth:`open_range`; ``opened`` holds exactly their bytes: a cold miss asks for them
        before it knows the manifest); returns the first chunk's. The fill owns ``opened``
        and closes it."""
        return self._launch(manifest, list(run), opened)

    def _launch(
        self, manifest: wire.Manifest, run: list[int], opened: RangeRead | BlockingRangeRead | None
    ) -> ChunkFill:
        fills = [ChunkFill(manifest.chunks[j].id, manifest.chunks[j].size) for j in run]
        for f in fills:  # where the commit will put it (file frames name it)
            f.paths = [str(self._store.file_path(f.chunk_id, dirty=False))]
        for f in fills:
            self.active[f.chunk_id] = f
        task = asyncio.ensure_future(self._run(manifest, run[0], fills, opened))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fills[0]

    def prefetch(self, manifest: wire.Manifest, indexes: list[int], *, until: int) -> None:
        """Start filling the idle chunks among ``indexes`` (runs end at ``until``)."""
        for i in indexes:
            if self.idle(manifest.chunks[i]):
                self.start(manifest, i, until=until)

    async def _run(
        self,
        manifest: wire.Manifest,
        index: int,
        fills: list[ChunkFill],
        opened: RangeRead | BlockingRangeRead | None = None,
    ) -> None:
        first = sum(c.size for c in manifest.chunks[:index])
        last = first + sum(f.size for f in fills) - 1
        started = time.perf_counter()
        try:
            async with self._slots if opened is None else contextlib.nullcontext():  # an open GET holds no slot
                self._counters.fills += 1  # one ranged GET of the origin
                if opened is None and self._origin.blocking_reads:
                    opened = await self.open_range(
                        manifest.bucket, manifest.key, first, last, if_match=manifest.origin_etag or None
                    )
                    if (opened.first, opened.last) != (first, last):
                        raise errors.InvalidRange(
                            f"bytes={first}-{last}: the origin answered {opened.first}-{opened.last}",
                            resource=f"{manifest.bucket}/{manifest.key}",
                        )
                if isinstance(opened, BlockingRangeRead):
                    await self._pour_blocking(opened, fills)
                else:
                    await self._pour(
                        opened if opened is not None else self._origin.get_range(
                            manifest.bucket, manifest.key, first, last, if_match=manifest.origin_etag or None
                        ),
                        fills,
                    )
            log.debug(
                "fill",
                chunks=len(fills),
                bytes=last - first + 1,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        except BaseException as exc:
            if isinstance(exc, errors.PreconditionFailed):
                # the origin's object changed under us: forget this version
                with contextlib.suppress(Exception):
                    found = await self._catalog.get(manifest.bucket, manifest.key)
                    if found is not None and found.manifest.version == manifest.version:
                        await self._catalog.delete(manifest.bucket, manifest.key, found.revision)
                exc = errors.ServiceUnavailable(
                    "the object changed in the origin; retry", retry_after_s=1
                )
            unfilled = [f for f in fills if not f.done]
            log.warning("fill.failed", chunk=unfilled[0].chunk_id if unfilled else None, error=repr(exc))
            error = exc if isinstance(exc, Exception) else errors.InternalError("fill cancelled")
            for fill in unfilled:
                fill.finish(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            if opened is not None:
                with contextlib.suppress(Exception):
                    await opened.aclose()
            for fill in fills:
                if self.active.get(fill.chunk_id) is fill:
                    del self.active[fill.chunk_id]

    async def _pour(self, pieces: AsyncIterator[bytes], fills: list[ChunkFill]) -> None:
        """Write the run's bytes, arriving as ``pieces`` on the event loop, into its chunks
        (committing each as it completes).

        Raises:
            ServiceUnavailable: the origin sent fewer or more bytes than the run holds; what
                ``pieces`` and the chunk store raise.
        """
        current = 0  # the fill being written
        writer: ChunkWriter | None = self._store.writer(fills[0].chunk_id, dirty=False)
        try:
            async for piece in pieces:
                view = memoryview(piece)
                while view:
                    if writer is None:
                        raise errors.ServiceUnavailable("origin sent more bytes than asked", retry_after_s=1)
                    fill = fills[current]
                    room = fill.size - fill.received
                    part = piece if len(view) == len(piece) and len(piece) <= room else bytes(view[:room])
                    view = view[len(part) :]
                    await writer.write(part)
                    if not writer.landed:  # the first bytes of a chunk go to its readers at once
                        await writer.flush()
                    fill.received += len(part)
                    fill.landed_at(writer.path, writer.landed)
                    if fill.received == fill.size:
                        await self._commit(writer, fill)
                        current += 1
                        writer = (
                            self._store.writer(fills[current].chunk_id, dirty=False) if current < len(fills) else None
                        )
            if current < len(fills):
                raise _short(fills[current])
        except BaseException:
            if writer is not None:
                await writer.abort()
            raise

    async def _pour_blocking(self, opened: BlockingRangeRead, fills: list[ChunkFill]) -> None:
        """:meth:`_pour` from a ranged GET opened for worker threads (:meth:`open_range`):
        one fill thread at a time reads a chunk's bytes from the origin's socket into its
        file, in reads of at most :data:`PUMP_READ_BYTES`, and tells the chunk's followers
        (through the event loop) after each; the event loop commits each chunk. None of
        the bytes pass through the event loop. Cancelling waits for the thread to stop at
        its next read.

        Raises:
            ServiceUnavailable: the origin sent fewer bytes than the run holds; what
                :meth:`BlockingRangeRead.read` and the chunk store raise.
        """
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        for fill in fills:
            writer = self._store.writer(fill.chunk_id, dirty=False)
            try:
                await run_to_completion(
                    _pump, opened, writer, fill, loop, stop, executor=self._pumps, on_cancel=stop.set
                )
                await self._commit(writer, fill)
            except BaseException:
                await writer.abort()
                raise

    async def _commit(self, writer: ChunkWriter, fill: ChunkFill) -> None:
        """Publish the completed chunk ``fill`` and tell its followers."""
        await writer.commit()
        self._counters.fill_bytes += fill.size
        self.active.pop(fill.chunk_id, None)
        fill.finish()

    async def close(self) -> None:
        """Cancel the fills still running (their partial chunks are aborted); wait 5 s at most
        (a worker thread blocked in an origin read stops at the origin's read timeout)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._pumps.shutdown(wait=False, cancel_futures=True)
