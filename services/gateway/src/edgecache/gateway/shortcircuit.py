"""Short-circuit reads: a GetObject whose chunks a cache node on this host holds is read
from the node's chunk files by the gateway itself, instead of through nats-server.

The gateway asks with its host id (``wire.GetObject.local_host``). A node on another host,
or one missing a chunk of the range, streams as usual. A node on this host holding every
chunk answers a :class:`~edgecache.common.wire.ReadPlan`; then, for each chunk in order,
the gateway reads the whole chunk file in a thread of its own (one large read), verifies its trailer
and CRC32C (:func:`edgecache.common.chunkfile.read_verified`, the node's own check) and
sends the planned slice. A byte that fails its check is never sent:

- a failure on the **first** chunk (file missing, unreadable, corrupt) happens before
  anything is answered: the GET asks again without ``local_host`` and streams;
- a failure on a **later** chunk continues from that byte with a streamed GET of the rest
  (a ``Range`` of it), provided the object's ETag is unchanged; otherwise the body is cut
  (the connection is dropped, as for a broken stream).

The node re-reads a corrupt chunk itself on the streamed GET, drops it and fetches it again.

**Memory.** A chunk is read whole to be verified, into one of the worker's reusable
buffers (at most ``cachenode.chunk_bytes``, 8 MiB, each); at most
``gateway.short_circuit_buffers`` (default 4) exist per worker process — 32 MiB with the
defaults — and a GET holds one from before its read until the HTTP server has taken the
last of its slice, which is handed over in pieces of at most :data:`SEND_BYTES` (1 MiB) so
the server's own send buffer stays small. A read cancelled mid-way gives its buffer back
only when its thread is done with it.

The lease is released (a message to the node) when the last chunk was read, when the
client goes away, or on any failure; the node drops it by itself after ``lease_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import msgspec

from edgecache.common import errors, wire
from edgecache.common.chunkfile import InvalidChunk, read_verified_into
from edgecache.common.hostid import host_id
from edgecache.common.logging import get_logger
from edgecache.gateway.zerocopy import FilePiece

if TYPE_CHECKING:
    from edgecache.common.client import EdgecacheClient

__all__ = ["SEND_BYTES", "LocalReads", "PlanBody", "get_object", "read_landed", "read_piece"]

log = get_logger(__name__)

SEND_BYTES = 1024 * 1024
"""The largest piece handed to the HTTP server at once."""


class LocalReads:
    """The short-circuit reads of one gateway worker process: its host id, its chunk
    buffers and counters.

    Args:
        buffers: chunk buffers, at most (``gateway.short_circuit_buffers``).
        host: this host's id; default :func:`~edgecache.common.hostid.host_id`.
    """

    def __init__(self, buffers: int = 4, *, host: str | None = None) -> None:
        self.host = host_id() if host is None else host
        self._buffers = max(1, buffers)
        self._slots = asyncio.Semaphore(self._buffers)
        # its own threads (one per buffer): reads never wait behind other blocking work
        self._pool = ThreadPoolExecutor(self._buffers, thread_name_prefix="shortcircuit")
        self._free: list[bytearray] = []  # buffers not in use (made on first need)
        self.plans = 0  # GETs answered with a read plan
        self.completed = 0  # plans whose every byte was read from the files
        self.fallbacks = 0  # plans given up before the first byte: streamed instead
        self.resumed = 0  # plans finished by a streamed GET of the rest
        self.failed_chunks = 0  # chunk files missing, unreadable or failing their check
        self.bytes = 0  # bytes read from chunk files and sent
        self.file_bytes = 0  # of which a fill's landed bytes sent by the HTTP server from the file

    @property
    def in_use(self) -> int:
        """Buffers held by reads now."""
        return self._buffers - self._slots._value  # noqa: SLF001 - asyncio has no public count

    async def read(self, piece: wire.PlanPiece, buffer: bytearray) -> memoryview:
        """:func:`read_piece` in one of this worker's reader threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, read_piece, piece, buffer)

    async def read_held(self, piece: wire.PlanPiece) -> tuple[bytearray, memoryview]:
        """:meth:`read` into a buffer taken for it (waiting while all are in use): the
        buffer and the planned bytes in it. Give the buffer back with :meth:`give_back`
        once its bytes are sent; on an error it is given back here, and when the caller is
        cancelled, once the thread is done writing into it.

        Raises:
            FileNotFoundError, InvalidChunk, OSError: as :func:`read_piece`.
        """
        buffer = await self.take()
        reading = asyncio.ensure_future(self.read(piece, buffer))
        try:
            return buffer, await asyncio.shield(reading)
        except asyncio.CancelledError:  # the thread still writes into the buffer
            reading.add_done_callback(lambda _: self.give_back(buffer))
            raise
        except BaseException:
            self.give_back(buffer)
            raise

    async def read_span(self, span: wire.FileSpan) -> AsyncIterator[bytes]:
        """The bytes of a file frame (:class:`~edgecache.common.wire.FileSpan`), in pieces of
        at most :data:`SEND_BYTES`: a committed chunk is read whole into one of the buffers
        and verified before its first piece (:func:`read_piece`), and the buffer is held
        until its last piece is taken; a fill's landed bytes are read as they are
        (:func:`read_landed`).

        Raises:
            FileNotFoundError, InvalidChunk, OSError: as :func:`read_piece`.
        """
        loop = asyncio.get_running_loop()
        if not span.committed:
            for offset in range(span.offset, span.offset + span.length, SEND_BYTES):
                n = min(SEND_BYTES, span.offset + span.length - offset)
                part = msgspec.structs.replace(span, offset=offset, length=n)
                data = await loop.run_in_executor(self._pool, read_landed, part)
                self.bytes += len(data)
                yield data
            return
        piece = wire.PlanPiece(
            chunk_id=span.chunk_id, paths=span.paths, chunk_size=span.chunk_size, offset=span.offset, length=span.length
        )
        buffer, view = await self.read_held(piece)
        try:
            with view:
                for start in range(0, len(view), SEND_BYTES):
                    data = bytes(view[start : start + SEND_BYTES])
                    self.bytes += len(data)
                    yield data
        finally:
            self.give_back(buffer)

    def close(self) -> None:
        """Stop the reader threads (after the reads in progress)."""
        self._pool.shutdown(wait=False)

    async def take(self) -> bytearray:
        """A buffer, waiting while all are in use. Give it back with :meth:`give_back`."""
        await self._slots.acquire()
        return self._free.pop() if self._free else bytearray()

    def give_back(self, buffer: bytearray) -> None:
        self._free.append(buffer)
        self._slots.release()


def read_piece(piece: wire.PlanPiece, buffer: bytearray) -> memoryview:
    """The planned bytes of one chunk file, read into ``buffer`` after verifying the whole
    chunk (blocking). Returns a view into ``buffer``.

    Raises:
        FileNotFoundError: the file is at none of ``piece.paths``.
        InvalidChunk: it failed its check, or its payload is not ``piece.chunk_size`` bytes.
        OSError: another error reading it.
    """
    for path in piece.paths:
        try:
            payload = read_verified_into(path, buffer)
        except FileNotFoundError:
            continue
        with payload:
            if len(payload) != piece.chunk_size:
                raise InvalidChunk(f"{len(payload)} B, the plan says {piece.chunk_size}")
            return payload[piece.offset : piece.offset + piece.length]
    raise FileNotFoundError(piece.paths[0] if piece.paths else piece.chunk_id)


def read_landed(span: wire.FileSpan) -> bytes:
    """A fill's landed bytes named by ``span`` (blocking): from its temp file, or from where
    the commit renamed it.

    Raises:
        FileNotFoundError: the file is at none of ``span.paths``.
        InvalidChunk: fewer bytes than ``span.length`` are there.
        OSError: another error reading it.
    """
    for path in span.paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        try:
            data = os.pread(fd, span.length, span.offset)
        finally:
            os.close(fd)
        if len(data) != span.length:
            raise InvalidChunk(f"{len(data)} of {span.length} landed bytes at {span.offset} in {path}")
        return data
    raise FileNotFoundError(span.paths[0] if span.paths else span.chunk_id)


class PlanBody:
    """The bytes of a :class:`~edgecache.common.wire.ReadPlan`, piece by piece (an async
    iterator, like a streamed download's body). Call :meth:`prime` first; ``aclose()``
    releases the buffer, the lease and any stream it resumed with. Idempotent."""

    def __init__(self, local: LocalReads, client: EdgecacheClient, request: wire.GetObject, plan: wire.ReadPlan) -> None:
        self._local = local
        self._client = client
        self._request = request
        self._plan = plan
        self._next = 0  # index of the next piece to read
        self._position = plan.info.range_first or 0  # object offset of the next byte
        self._buffer: bytearray | None = None  # held while its data is being sent
        self._data: memoryview | None = None  # the rest of the current piece, in the buffer
        self._leased = True
        self._rest: AsyncIterator[bytes] | None = None  # the streamed remainder
        self._closed = False

    async def prime(self) -> None:
        """Read (and verify) the first piece now.

        Raises:
            FileNotFoundError, InvalidChunk, OSError: it cannot be read; nothing was sent.
        """
        await self._read()

    def __aiter__(self) -> PlanBody:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._data is not None:
                return self._send()
            self._unhold()
            if self._rest is None and self._next < len(self._plan.pieces):
                try:
                    await self._read()
                    return self._send()
                except (OSError, InvalidChunk) as exc:
                    self._local.failed_chunks += 1
                    log.warning("shortcircuit.resume", chunk_id=self._plan.pieces[self._next].chunk_id, reason=str(exc))
                    self._unhold()
                    await self._release_lease()
                    self._rest = await self._resume()
            if self._rest is not None:
                return await anext(self._rest)  # StopAsyncIteration at its end
            await self._release_lease()
            self._local.completed += 1
            raise StopAsyncIteration
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Release the buffer, the lease and the resumed stream. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unhold()
        await self._release_lease()
        if self._rest is not None:
            aclose = getattr(self._rest, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def __del__(self) -> None:  # a body dropped without aclose() (response never started)
        self._unhold()

    async def _read(self) -> None:
        """Read and verify the next piece into a buffer (``_data``)."""
        buffer, data = await self._local.read_held(self._plan.pieces[self._next])
        self._buffer, self._data = buffer, data
        self._next += 1
        self._position += len(data)
        self._local.bytes += len(data)

    def _send(self) -> bytes:
        """The next at most :data:`SEND_BYTES` of the current piece (a copy: the buffer is
        reused once the piece is done)."""
        assert self._data is not None
        piece = bytes(self._data[:SEND_BYTES])
        rest = self._data[SEND_BYTES:]
        self._data.release()
        if len(rest):
            self._data = rest
        else:
            rest.release()
            self._data = None
        return piece

    def _unhold(self) -> None:
        if self._data is not None:
            self._data.release()
            self._data = None
        if self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            self._local.give_back(buffer)

    async def _release_lease(self) -> None:
        if self._leased:
            self._leased = False
            await self._client.release_lease(self._plan)

    async def _resume(self) -> AsyncIterator[bytes]:
        self._local.resumed += 1
        return await _rest(self._client, self._request, self._plan.info, self._position)


async def _rest(client: EdgecacheClient, request: wire.GetObject, info: wire.ObjectInfo, position: int) -> AsyncIterator[bytes]:
    """A streamed GET (no files) of ``info``'s bytes from object offset ``position`` on, of
    the same version.

    Raises:
        InternalError: the object changed meanwhile (the body must be cut).
        S3Error: the node's error.
    """
    last = info.size - 1 if info.range_last is None else info.range_last
    request = msgspec.structs.replace(request, range=f"bytes={position}-{last}", local_host=None)
    rest_info, rest = await client.get_object(request)
    if (rest_info.etag, rest_info.last_modified, rest_info.range_first) != (info.etag, info.last_modified, position):
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
        raise errors.InternalError("the object changed during a short-circuit read")
    return rest


class _StreamFiles:
    """The file frames of one stream: read with the worker's :class:`LocalReads`, or, for
    a fill's landed bytes when :attr:`zero_copy` is on, handed on as
    :class:`~edgecache.gateway.filestream.FilePiece` s of the file for the HTTP server to
    send itself. The lease they share is remembered, to be released when the stream is
    done (:meth:`close`)."""

    def __init__(self, local: LocalReads) -> None:
        self.local = local
        self.lease: wire.FileSpan | None = None
        self.zero_copy = False
        self._open: tuple[str, int] | None = None  # (chunk id, fd) of the file of the last piece

    def read(self, span: wire.FileSpan) -> AsyncIterator[bytes | FilePiece]:
        if self.lease is None:
            self.lease = span
        if self.zero_copy and not span.committed:
            return self._landed(span)
        return self.local.read_span(span)

    async def _landed(self, span: wire.FileSpan) -> AsyncIterator[FilePiece]:
        """The landed bytes of ``span`` as one piece of the fill's file (held open for the
        spans of the same chunk that follow), once the file holds them, as
        :func:`read_landed` checks.

        Raises:
            FileNotFoundError: the file is at none of ``span.paths``.
            InvalidChunk: the file is shorter than the span's end.
        """
        fd = self._fd_of(span)
        size = os.fstat(fd).st_size
        if size < span.offset + span.length:
            raise InvalidChunk(f"{size} B in the file of {span.chunk_id}, the span ends at {span.offset + span.length}")
        self.local.bytes += span.length
        self.local.file_bytes += span.length
        yield FilePiece(fd, span.offset, span.length)

    def _fd_of(self, span: wire.FileSpan) -> int:
        if self._open is not None and self._open[0] == span.chunk_id:
            return self._open[1]
        self.close()
        for path in span.paths:  # the temp file, or where the commit renamed it
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue
            self._open = (span.chunk_id, fd)
            return fd
        raise FileNotFoundError(span.paths[0] if span.paths else span.chunk_id)

    def close(self) -> None:
        """Close the file held open for pieces (their consumer has taken them)."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None


async def _with_files(
    files: _StreamFiles, client: EdgecacheClient, request: wire.GetObject, info: wire.ObjectInfo, body: AsyncIterator[bytes | FilePiece]
) -> AsyncIterator[bytes | FilePiece]:
    """A stream that may carry file frames: its bytes, and if a file cannot be read or
    fails its check, the rest from a streamed GET of the same version (see the module
    docstring). The files' lease is released when the stream is done."""
    local = files.local
    position = info.range_first or 0
    try:
        async for piece in body:
            position += len(piece)
            yield piece
        return
    except (OSError, InvalidChunk) as exc:
        local.failed_chunks += 1
        log.warning("shortcircuit.resume", reason=str(exc))
    finally:
        with contextlib.suppress(Exception):
            await body.aclose()  # type: ignore[attr-defined]
        files.close()
        if files.lease is not None:
            await client.release_lease(files.lease)
    local.resumed += 1
    rest = await _rest(client, request, info, position)
    try:
        async for piece in rest:
            yield piece
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]


async def get_object(
    client: EdgecacheClient,
    local: LocalReads | None,
    request: wire.GetObject,
    *,
    zero_copy: Callable[[wire.ObjectInfo], bool] | None = None,
) -> tuple[wire.ObjectInfo, AsyncIterator[bytes | FilePiece]]:
    """Start a GetObject: from this host's chunk files when a node here holds them all,
    else streamed (see the module docstring). Same contract as
    :meth:`EdgecacheClient.get_object <edgecache.common.client.EdgecacheClient.get_object>`.

    ``zero_copy(info)``: whether the caller sends :class:`~edgecache.gateway.filestream.FilePiece`
    s itself for this object; then a fill's landed bytes come as pieces of its file (held
    open until the next piece is asked for), not read into memory. Committed chunks are
    always read and verified.
    """
    if local is None or not local.host:
        return await client.get_object(request)
    files = _StreamFiles(local)
    reply, body = await client.get_object_or_plan(
        msgspec.structs.replace(request, local_host=local.host), read_file=files.read
    )
    if body is not None:
        assert isinstance(reply, wire.ObjectInfo)
        files.zero_copy = zero_copy is not None and zero_copy(reply)
        return reply, _with_files(files, client, request, reply, body)
    assert isinstance(reply, wire.ReadPlan)
    local.plans += 1
    planned = PlanBody(local, client, request, reply)
    try:
        await planned.prime()
    except (OSError, InvalidChunk) as exc:
        local.failed_chunks += 1
        local.fallbacks += 1
        log.warning("shortcircuit.fallback", chunk_id=reply.pieces[0].chunk_id, reason=str(exc))
        await planned.aclose()
        return await client.get_object(request)
    except BaseException:
        await planned.aclose()
        raise
    return reply.info, planned
