"""The chunk store's writer: streams one chunk into a temp file, then has the store publish it.

The file operations are :mod:`edgecache.cachenode.chunkformat`'s, run in the default thread
pool; publishing (the rename into place and the index update) is the store's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

from edgecache.cachenode.chunkerrors import raise_os
from edgecache.cachenode.chunkformat import append, discard, open_tmp, seal
from edgecache.cachenode.threads import run_to_completion

__all__ = ["ChunkWriter", "Publish"]

_T = TypeVar("_T")

# small pieces handed to write() are gathered up to this many bytes per thread hop
_WRITE_BUFFER_BYTES = 1024 * 1024

Publish = Callable[[str, Path, int, bool], Awaitable[None]]
"""``publish(chunk_id, tmp, size, dirty)``: move the sealed temp file into place and index it,
to completion even if the caller is cancelled. It owns ``tmp`` from the call on."""


class ChunkWriter:
    """Streams one chunk into a temp file; :meth:`commit` publishes it atomically.

    Get one from :meth:`ChunkStore.writer <edgecache.cachenode.chunkstore.ChunkStore.writer>`.
    Use as ``async with store.writer(id, dirty=True) as w:``; leaving the block without
    ``commit()``, or with an exception, aborts. Not for concurrent use: await each call before
    the next. Any failure of ``write``/``commit`` (including cancellation) aborts the write; the
    writer is then finished.

    Args:
        chunk_id: the chunk's id, already validated.
        dirty: the state asked for at commit (the store may keep a dirty chunk dirty).
        tmp: the temp file to write, created on the first byte.
        publish: what :meth:`commit` hands the sealed temp file to.
    """

    def __init__(self, chunk_id: str, *, dirty: bool, tmp: Path, publish: Publish) -> None:
        self.chunk_id = chunk_id
        self.dirty = dirty
        self._tmp = tmp
        self._publish = publish
        self._file: BinaryIO | None = None
        self._buf = bytearray()
        self._crc = 0
        self._size = 0
        self._landed = 0  # bytes in the file (not in _buf)
        self._finished = False  # committed, aborted or failed
        self._handed_off = False  # commit passed the temp file to publish
        self._discarded = False
        self._busy = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def landed(self) -> int:
        """Bytes of the payload in the temp file itself (readable by another reader of
        :attr:`path`); the rest of :attr:`size` is still gathered in memory."""
        return self._landed

    @property
    def path(self) -> Path:
        """The temp file, which exists once :attr:`landed` is above 0, until the commit
        renames it into place or an abort removes it."""
        return self._tmp

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
        async with self._call():
            n = data.nbytes if isinstance(data, memoryview) else len(data)
            if not n:
                return
            if self._file is None:
                self._file = await self._thread(open_tmp, self._tmp)
            if not self._buf and n >= _WRITE_BUFFER_BYTES:
                self._crc = await self._thread(append, self._file, data, self._crc)
                self._landed += n
            else:
                self._buf += data
                if len(self._buf) >= _WRITE_BUFFER_BYTES:
                    buf, self._buf = self._buf, bytearray()
                    self._crc = await self._thread(append, self._file, buf, self._crc)
                    self._landed += len(buf)
            self._size += n

    def write_blocking(self, data: bytes | bytearray | memoryview) -> None:
        """:meth:`write` for a worker thread: append ``data`` to the file at once (it has
        :attr:`landed` when this returns), nothing gathered in memory, no hop to the event
        loop. The thread owns the writer for the call: no other call may run meanwhile.
        A failure does not finish the writer: the caller aborts it.

        Raises:
            ChunkStoreFull: the disk is full.
            OSError: another I/O error.
            RuntimeError: the writer is finished, busy, or holds bytes a :meth:`write`
                gathered and did not :meth:`flush`.
        """
        if self._finished or self._busy or self._buf:
            raise RuntimeError(f"write_blocking on the writer for chunk {self.chunk_id!r} in this state")
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if not n:
            return
        self._busy = True
        try:
            if self._file is None:
                self._file = open_tmp(self._tmp)
            self._crc = append(self._file, data, self._crc)
        except OSError as exc:
            raise_os(exc)
        finally:
            self._busy = False
        self._size += n
        self._landed += n

    async def flush(self) -> None:
        """Write the gathered bytes to the file now (they :attr:`landed`).

        Raises:
            ChunkStoreFull, OSError, RuntimeError: as :meth:`write`.
        """
        async with self._call():
            if self._buf and self._file is not None:
                buf, self._buf = self._buf, bytearray()
                self._crc = await self._thread(append, self._file, buf, self._crc)
                self._landed += len(buf)

    async def commit(self) -> int:
        """Seal the chunk (fsynced if dirty) and publish it atomically (replacing any chunk
        of the same id).

        When this returns the chunk is visible and counted, and durable if it is dirty (a
        clean chunk may be lost or torn by a power loss: reads verify it). If the caller is
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
        async with self._call():
            if self._size == 0:
                raise ValueError(f"chunk {self.chunk_id!r} is empty; empty chunks are not stored")
            assert self._file is not None
            pending, self._buf = self._buf, bytearray()
            await self._thread(seal, self._file, pending, self._crc, self._size, sync=self.dirty)
            self._file = None  # closed by seal
            self._landed = self._size
            self._handed_off = True  # the temp file now belongs to publish
            self._finished = True
            await self._publish(self.chunk_id, self._tmp, self._size, self.dirty)
            return self._size

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

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One call of ``write``/``commit``: refused if finished or busy; any failure in it
        (a full disk raised as ``ChunkStoreFull``) finishes the writer."""
        if self._finished:
            raise RuntimeError(f"writer for chunk {self.chunk_id!r} is finished")
        if self._busy:
            raise RuntimeError(f"concurrent call on the writer for chunk {self.chunk_id!r}")
        self._busy = True
        try:
            yield
        except OSError as exc:
            await self._fail()
            raise_os(exc)
        except BaseException:
            await self._fail()
            raise
        finally:
            self._busy = False

    async def _thread(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` in a thread; if cancelled, wait for the thread before re-raising so the
        temp file is never closed or unlinked under a running write."""
        return await run_to_completion(functools.partial(fn, *args, **kwargs))

    async def _fail(self) -> None:
        """Finish the writer; close and remove the temp file unless ``publish`` owns it."""
        self._finished = True
        self._buf = bytearray()
        if self._handed_off or self._discarded:
            return
        self._discarded = True
        f, self._file = self._file, None
        await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(discard, f, self._tmp)))
