"""Read-through: finding an object's current version, and reading its bytes from wherever
they are — this node's disk, a peer's, or the origin (filling the cache as they stream).

**Lookup.** A manifest in KV ``objects`` is the current version. A clean one older than
``revalidate_after_s`` is checked against the origin's ETag first (changed: a new version;
gone: NoSuchKey; origin unreachable: served stale if ``stale_if_error``). With no manifest,
the origin is asked (HEAD) and a clean manifest with unfilled chunks is recorded.

**Reading a chunk**, in order of preference: this node's store; a fill of it already
running here (follow it); the nodes the manifest names; the object's **owner** (rendezvous
hash over the live nodes), which fills it — so a cold object is fetched from the origin
once across the cluster; and, if the owner is unreachable, a fill here.

**Filling** a chunk is one ranged GET of the origin (``If-Match`` its ETag), written to a
clean chunk and handed, piece by piece as it arrives, to every reader following it: the
first byte reaches the client before the chunk is complete, and time to first byte does
not grow with the object's size. The chunks after it (up to ``fill_concurrency``) are
filled in parallel. A fill that fails leaves no chunk behind and fails its readers
mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from nats.js.errors import KeyWrongLastSequenceError

from edgecache.cachenode.chunkstore import ChunkCorrupt, ChunkMissing
from edgecache.common import errors, kvkeys, placement, stream, subjects, wire
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode
    from edgecache.common.origin import OriginObject

__all__ = ["ChunkFill", "Filler", "chunk_spans", "lookup", "read", "read_chunk_span"]

log = get_logger(__name__)


# -- lookup ------------------------------------------------------------------------------------
def _from_origin(node: CacheNode, bucket: str, obj: OriginObject, version: str) -> wire.Manifest:
    size, step = obj.size, node.chunk_bytes
    chunks = [
        wire.ChunkRef(id=f"{version}.{i}", size=min(step, size - offset))
        for i, offset in enumerate(range(0, size, step))
    ]
    return wire.Manifest(
        bucket=bucket,
        key=obj.key,
        version=version,
        size=size,
        etag=obj.etag,
        last_modified=obj.last_modified,
        content_type=obj.content_type,
        metadata=obj.metadata,
        headers=obj.headers,
        chunks=chunks,
        state="clean",
        origin_etag=obj.etag,
        validated_at=time.time(),
    )


async def _adopt(node: CacheNode, bucket: str, key: str, revision: int) -> wire.Manifest:
    """Record the origin's current version of ``bucket/key`` (CAS on ``revision``; 0: absent).

    Raises:
        NoSuchBucket / NoSuchKey / ServiceUnavailable: from the origin.
    """
    from edgecache.cachenode.node import new_id

    obj = await node.origin.head_object(bucket, key)
    manifest = _from_origin(node, bucket, obj, new_id())
    try:
        await node.put_manifest(manifest, revision=revision)
    except KeyWrongLastSequenceError:
        found = await node.get_manifest(bucket, key)  # another node recorded it first
        if found is not None and not found[0].deleted:
            return found[0]
    return manifest


async def _revalidate(node: CacheNode, manifest: wire.Manifest, revision: int) -> wire.Manifest:
    try:
        obj = await node.origin.head_object(manifest.bucket, manifest.key)
    except errors.ServiceUnavailable:
        if node.config.cachenode.stale_if_error:
            log.warning("revalidate.stale", bucket=manifest.bucket, key=manifest.key)
            return manifest
        raise
    except errors.NoSuchKey:
        with contextlib.suppress(Exception):
            await node.state.objects.delete(kvkeys.object_key(manifest.bucket, manifest.key), last=revision)
        raise
    if obj.etag == manifest.origin_etag:
        fresh = _replace(manifest, validated_at=time.time())
        with contextlib.suppress(KeyWrongLastSequenceError):
            await node.put_manifest(fresh, revision=revision)
        return fresh
    log.info("revalidate.changed", bucket=manifest.bucket, key=manifest.key)
    from edgecache.cachenode.node import new_id

    changed = _from_origin(node, manifest.bucket, obj, new_id())
    try:
        await node.put_manifest(changed, revision=revision)
    except KeyWrongLastSequenceError:
        found = await node.get_manifest(manifest.bucket, manifest.key)
        if found is not None and not found[0].deleted:
            return found[0]
    await node.store.mark_clean(c.id for c in manifest.chunks if node.store.has(c.id))
    return changed


def _replace(manifest: wire.Manifest, **changes: object) -> wire.Manifest:
    import msgspec

    return msgspec.structs.replace(manifest, **changes)


async def lookup(node: CacheNode, bucket: str, key: str) -> wire.Manifest:
    """The current version of ``bucket/key``, from KV or else the origin.

    Raises:
        NoSuchBucket: the bucket does not exist.
        NoSuchKey: no such object, or it was deleted (here or in the origin).
        ServiceUnavailable: the object is not cached and the origin is unreachable.
    """
    found = await node.get_manifest(bucket, key)
    if found is not None:
        manifest, revision = found
        if manifest.deleted:
            await node.require_bucket(bucket)
            raise errors.NoSuchKey(resource=f"{bucket}/{key}")
        stale = time.time() - manifest.validated_at > node.config.cachenode.revalidate_after_s
        if manifest.state == "clean" and stale:
            try:
                return await _revalidate(node, manifest, revision)
            except errors.NoSuchKey as exc:
                exc.resource = f"{bucket}/{key}"
                raise
        return manifest
    try:
        return await _adopt(node, bucket, key, 0)
    except (errors.NoSuchKey, errors.NoSuchBucket) as exc:
        # the origin may lack a bucket created here and not yet written back
        await node.require_bucket(bucket)
        raise errors.NoSuchKey(resource=f"{bucket}/{key}") from exc


# -- filling -----------------------------------------------------------------------------------
class ChunkFill:
    """One chunk being filled from the origin; readers follow its pieces as they arrive."""

    def __init__(self, chunk_id: str, size: int) -> None:
        self.chunk_id = chunk_id
        self.size = size
        self.pieces: list[bytes] = []
        self.received = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def add(self, piece: bytes) -> None:
        """Record the next piece from the origin and wake the readers following the fill."""
        self.pieces.append(piece)
        self.received += len(piece)
        await self._notify()

    async def finish(self, error: BaseException | None = None) -> None:
        """End the fill: complete (committed to disk), or failed with ``error``, which its
        readers then raise."""
        self.done, self.error = True, error
        await self._notify()

    async def follow(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first..last`` (inclusive) of the chunk, as they arrive.

        Raises:
            The fill's error, if it fails before ``last`` arrived.
        """
        index = offset = 0  # next piece to look at, and its offset in the chunk
        while offset <= last:
            if index < len(self.pieces):
                piece = self.pieces[index]
                end = offset + len(piece) - 1
                if end >= first:
                    yield piece[max(first, offset) - offset : min(last, end) - offset + 1]
                index, offset = index + 1, end + 1
                continue
            if self.done:
                raise self.error or errors.InternalError(f"fill of {self.chunk_id} ended short")
            async with self._changed:
                await self._changed.wait_for(lambda: index < len(self.pieces) or self.done)  # noqa: B023


class Filler:
    """This node's fills: one at a time per chunk, at most ``slots`` origin GETs at once.

    A fill is a **run**: one ranged GET covering a chunk and the consecutive chunks after it
    that are neither here nor being filled, up to ``run_bytes`` and never past the last
    chunk the reader asked for. Fewer, larger origin requests cost less (per-request
    latency and billing), and each run still buffers at most the chunk it is writing.
    """

    def __init__(self, node: CacheNode, *, slots: int, run_bytes: int) -> None:
        self._node = node
        self._slots = asyncio.Semaphore(slots)
        self._run_bytes = run_bytes
        self.active: dict[str, ChunkFill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _idle(self, chunk: wire.ChunkRef) -> bool:
        return chunk.id not in self.active and not self._node.store.has(chunk.id)

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
            if size + nxt.size > self._run_bytes or not self._idle(nxt):
                break
            run.append(j)
            size += nxt.size
        fills = [ChunkFill(manifest.chunks[j].id, manifest.chunks[j].size) for j in run]
        for f in fills:
            self.active[f.chunk_id] = f
        task = asyncio.ensure_future(self._run(manifest, run[0], fills))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fills[0]

    def prefetch(self, manifest: wire.Manifest, indexes: list[int], *, until: int) -> None:
        """Start filling the idle chunks among ``indexes`` (runs end at ``until``)."""
        for i in indexes:
            if self._idle(manifest.chunks[i]):
                self.start(manifest, i, until=until)

    async def _run(self, manifest: wire.Manifest, index: int, fills: list[ChunkFill]) -> None:
        node = self._node
        first = sum(c.size for c in manifest.chunks[:index])
        last = first + sum(f.size for f in fills) - 1
        started = time.perf_counter()
        current = 0  # the fill being written
        writer = None
        try:
            async with self._slots:
                node.counters.fills += 1  # one ranged GET of the origin
                writer = node.store.writer(fills[0].chunk_id, dirty=False)
                async for piece in node.origin.get_range(
                    manifest.bucket, manifest.key, first, last, if_match=manifest.origin_etag or None
                ):
                    view = memoryview(piece)
                    while view:
                        if writer is None:
                            raise errors.ServiceUnavailable("origin sent more bytes than asked", retry_after_s=1)
                        fill = fills[current]
                        room = fill.size - fill.received
                        part = piece if len(view) == len(piece) and len(piece) <= room else bytes(view[:room])
                        view = view[len(part) :]
                        await writer.write(part)
                        await fill.add(part)
                        if fill.received == fill.size:
                            await writer.commit()
                            node.counters.fill_bytes += fill.size
                            self.active.pop(fill.chunk_id, None)
                            await fill.finish()
                            current += 1
                            writer = node.store.writer(fills[current].chunk_id, dirty=False) if current < len(fills) else None
                if current < len(fills):
                    raise errors.ServiceUnavailable(
                        f"origin sent {fills[current].received} of {fills[current].size} bytes of {fills[current].chunk_id}",
                        retry_after_s=1,
                    )
            log.debug("fill", chunks=len(fills), bytes=last - first + 1, ms=round((time.perf_counter() - started) * 1000, 1))
        except BaseException as exc:
            if writer is not None:
                await writer.abort()
            if isinstance(exc, errors.PreconditionFailed):
                # the origin's object changed under us: forget this version
                with contextlib.suppress(Exception):
                    found = await node.get_manifest(manifest.bucket, manifest.key)
                    if found is not None and found[0].version == manifest.version:
                        await node.state.objects.delete(
                            kvkeys.object_key(manifest.bucket, manifest.key), last=found[1]
                        )
                exc = errors.ServiceUnavailable("the object changed in the origin; retry", retry_after_s=1)
            log.warning("fill.failed", chunk=fills[current].chunk_id if current < len(fills) else None, error=repr(exc))
            error = exc if isinstance(exc, Exception) else errors.InternalError("fill cancelled")
            for fill in fills[current:]:
                await fill.finish(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            for fill in fills:
                if self.active.get(fill.chunk_id) is fill:
                    del self.active[fill.chunk_id]

    async def close(self) -> None:
        """Cancel the fills still running (their partial chunks are aborted); wait 5 s at most."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


# -- reading -----------------------------------------------------------------------------------
def chunk_spans(chunks: list[wire.ChunkRef], first: int, last: int) -> list[tuple[int, int, int]]:
    """``(index, first, last)`` of each chunk covering object bytes ``first..last``, with the
    inclusive range to take from it, in order."""
    spans = []
    offset = 0
    for index, chunk in enumerate(chunks):
        end = offset + chunk.size - 1
        if offset > last:
            break
        if end >= first:
            spans.append((index, max(first, offset) - offset, min(last, end) - offset))
        offset += chunk.size
    return spans


class _PeerFailed(Exception):
    """A peer could not serve a chunk before sending any byte of it: try another source."""


async def _from_peer(
    node: CacheNode, peer: str, request: wire.ChunkGet, downstream: stream.Downstream | None
) -> AsyncIterator[bytes]:
    """The bytes ``peer`` sends for ``request``; with ``downstream`` (the sender they are
    relayed to), asked for no faster than it can pass them on.

    Raises:
        _PeerFailed: it failed before the first byte (the caller may try elsewhere).
        S3Error: it failed after some bytes (too late to switch sources).
    """
    got = 0
    body: AsyncIterator[bytes] | None = None
    if downstream is not None:
        await downstream.ready()  # its reader's failure is not the peer's: not caught below
    try:
        _, body = await stream.download(
            node.nc,
            subjects.chunk_get(peer),
            request,
            budget=node.credit,
            window=node.config.cachenode.window_frames,
            timeout_s=node.config.nats.request_timeout_s,
            downstream=downstream,
        )
        async for piece in body:
            got += len(piece)
            yield piece
    except errors.S3Error as exc:
        if got:
            raise
        log.warning("chunk.peer_read_failed", chunk=request.chunk_id, peer=peer, error=exc.code, message=exc.message)
        raise _PeerFailed(peer) from exc
    finally:
        if body is not None:  # also when our reader stops early: the peer stops, the credit returns
            await body.aclose()  # type: ignore[attr-defined]


async def read_chunk_span(
    node: CacheNode,
    manifest: wire.Manifest,
    index: int,
    first: int,
    last: int,
    *,
    prefetch: int = 0,
    local_only: bool = False,
    downstream: stream.Downstream | None = None,
) -> AsyncIterator[bytes]:
    """Bytes ``first..last`` (inclusive) of chunk ``index`` of ``manifest``, from the best
    source (see the module docstring). ``prefetch``: how many chunks after this one the
    reader will want (fills may take them in); ``local_only``: do not ask the owner (we
    are it); ``downstream``: the sender the bytes go to — a chunk is read from disk only
    once it has credit, and a peer is asked for no more than that credit.

    Raises:
        ChunkMissing: a dirty chunk is on no reachable node (it cannot come from the origin).
        ServiceUnavailable / PreconditionFailed: a fill from the origin failed.
    """
    chunk = manifest.chunks[index]
    fill = node.filler.active.get(chunk.id)
    if fill is None:
        if downstream is not None:
            await downstream.ready()  # hold no chunk in memory while the reader takes nothing
        try:
            data = await node.store.read(chunk.id, first, last)
            node.counters.hits += 1
            yield data
            return
        except (ChunkMissing, ChunkCorrupt):
            pass
        plain = wire.ChunkGet(chunk_id=chunk.id, first=first, last=last)
        sources = [(n, plain) for n in (chunk.nodes or manifest.nodes) if n != node.node_id]
        owner = placement.owner(manifest.bucket, manifest.key, node.live.ids())
        if manifest.state == "clean" and not local_only and owner and owner != node.node_id:
            sources.append((owner, wire.ChunkGet(
                chunk_id=chunk.id, first=first, last=last, bucket=manifest.bucket,
                key=manifest.key, version=manifest.version, index=index, prefetch=prefetch,
            )))
        for peer, request in sources:
            try:
                async for piece in _from_peer(node, peer, request, downstream):
                    yield piece
                node.counters.hits += 1
                return
            except _PeerFailed:
                continue
        if manifest.state == "dirty":
            raise ChunkMissing(chunk.id)
        fill = node.filler.start(manifest, index, until=index + prefetch)
    node.counters.misses += 1
    pieces = fill.follow(first, last)
    head = await anext(pieces, None)  # the first byte first: prefetching competes with it at the origin
    node.filler.prefetch(manifest, _ahead(node, manifest, index, prefetch), until=index + prefetch)
    if head is not None:
        yield head
        async for piece in pieces:
            yield piece


def _ahead(node: CacheNode, manifest: wire.Manifest, index: int, wanted: int) -> list[int]:
    """The chunks after ``index`` (of the ``wanted`` the reader still needs) whose fills
    should start now: ``fill_concurrency`` runs' worth of bytes ahead, no more."""
    budget = node.config.cachenode.fill_concurrency * node.config.cachenode.fill_run_bytes
    out, total = [], 0
    for j in range(index + 1, min(len(manifest.chunks), index + 1 + wanted)):
        total += manifest.chunks[j].size
        if total > budget:
            break
        out.append(j)
    return out


async def read(
    node: CacheNode,
    manifest: wire.Manifest,
    first: int,
    last: int,
    *,
    downstream: stream.Downstream | None = None,
) -> AsyncIterator[bytes]:
    """Bytes ``first..last`` (inclusive) of ``manifest``'s version, in order, chunk by chunk,
    each piece as soon as it is available. Only the chunks covering the range are filled.
    ``downstream``: the sender the bytes go to (see :func:`read_chunk_span`).

    Raises:
        ChunkMissing, ServiceUnavailable, PreconditionFailed: see :func:`read_chunk_span`.
    """
    spans = chunk_spans(manifest.chunks, first, last)
    last_index = spans[-1][0] if spans else -1
    for index, cfirst, clast in spans:
        pieces = read_chunk_span(
            node, manifest, index, cfirst, clast, prefetch=last_index - index, downstream=downstream
        )
        async for piece in pieces:
            node.counters.bytes_out += len(piece)
            yield piece
            del piece  # a whole chunk: not kept alive while the next one is read
