"""Read-through: finding an object's current version, and reading its bytes from wherever
they are — this node's disk, a peer's, or the origin (filling the cache as they stream).

**Lookup.** A manifest in the catalog (KV ``objects``) is the current version. A clean one
older than ``revalidate_after_s`` is checked against the origin's ETag first (changed: a
new version; gone: NoSuchKey; origin unreachable: served stale if ``stale_if_error``).
With no manifest, the origin is asked (HEAD) and a clean manifest with unfilled chunks is
recorded.

**Reading a chunk**, in order of preference: this node's store; a fill of it already
running here (follow it); the nodes the manifest names; the object's **owner** (rendezvous
hash over the live nodes), which fills it — so a cold object is fetched from the origin
once across the cluster; and, if the owner is unreachable, a fill here (:mod:`.fill`),
which also starts filling the chunks after it (up to ``fill_concurrency`` runs' worth).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from edgecache.cachenode.adoption import adopt_reading, manifest_from_origin, with_tags
from edgecache.cachenode.chunkstore import ChunkCorrupt, ChunkMissing
from edgecache.common import errors, peers, placement, stream, wire
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from edgecache.cachenode.fill import ChunkFill
    from edgecache.cachenode.node import CacheNode

__all__ = ["chunk_spans", "lookup", "read", "read_chunk_span"]

log = get_logger(__name__)


# -- lookup -------------------------------------------------------------------------------
async def _adopt(node: CacheNode, bucket: str, key: str) -> wire.Manifest:
    """Record the origin's current version of ``bucket/key``, if it has no manifest yet.

    Raises:
        NoSuchBucket / NoSuchKey / ServiceUnavailable: from the origin.
    """
    obj = await with_tags(node, bucket, await node.origin.head_object(bucket, key))
    manifest = manifest_from_origin(node, bucket, obj)
    if not await node.catalog.create(manifest):
        found = await node.catalog.get(bucket, key)  # another node recorded it first
        if found is not None and not found.manifest.deleted:
            return found.manifest
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
            await node.catalog.delete(manifest.bucket, manifest.key, revision)
        raise
    if obj.etag == manifest.origin_etag:
        fresh = msgspec.structs.replace(manifest, validated_at=time.time())
        # another node may have done it first
        await node.catalog.replace(fresh, revision, same_version=True)
        return fresh
    log.info("revalidate.changed", bucket=manifest.bucket, key=manifest.key)
    changed = manifest_from_origin(node, manifest.bucket, await with_tags(node, manifest.bucket, obj))
    if not await node.catalog.replace(changed, revision):
        found = await node.catalog.get(manifest.bucket, manifest.key)
        if found is not None and not found.manifest.deleted:
            return found.manifest
    await node.store.mark_clean(c.id for c in manifest.chunks if node.store.has(c.id))
    return changed


async def lookup(
    node: CacheNode, bucket: str, key: str, *, reading: tuple[int, int | None] | None = None
) -> wire.Manifest:
    """The current version of ``bucket/key``, from KV or else the origin.

    ``reading``: the caller reads the object's bytes ``(first, last)`` (inclusive; ``last``
    ``None``: to the end); an object with no manifest is then adopted HEAD-less, its first
    chunks already filling (:mod:`.adoption`). Without it, an adoption in flight on this
    node is waited for.

    Raises:
        NoSuchBucket: the bucket does not exist.
        NoSuchKey: no such object, or it was deleted (here or in the origin).
        ServiceUnavailable: the object is not cached and the origin is unreachable.
    """
    found = await node.catalog.get(bucket, key)
    if found is None and reading is None and await node.adoptions.settle(bucket, key):
        found = await node.catalog.get(bucket, key)
    if found is not None:
        manifest, revision = found
        if manifest.deleted:
            await node.require_bucket(bucket)
            raise errors.NoSuchKey(resource=f"{bucket}/{key}")
        stale = time.time() - manifest.validated_at > node.config.cachenode.revalidate_after_s
        # tags on their way to the origin (tags_state dirty): the origin's copy is older
        if manifest.state == "clean" and manifest.tags_state == "clean" and stale:
            try:
                return await _revalidate(node, manifest, revision)
            except errors.NoSuchKey as exc:
                exc.resource = f"{bucket}/{key}"
                raise
        return manifest
    try:
        if reading is not None and (adopted := await adopt_reading(node, bucket, key, *reading)):
            return adopted
        return await _adopt(node, bucket, key)
    except (errors.NoSuchKey, errors.NoSuchBucket) as exc:
        # the origin may lack a bucket created here and not yet written back
        await node.require_bucket(bucket)
        raise errors.NoSuchKey(resource=f"{bucket}/{key}") from exc


# -- reading ------------------------------------------------------------------------------
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
    lease: str | None = None,
    followed: dict[str, ChunkFill] | None = None,
) -> AsyncIterator[bytes | wire.FileSpan]:
    """Bytes ``first..last`` (inclusive) of chunk ``index`` of ``manifest``, from the best
    source (see the module docstring). ``prefetch``: how many chunks after this one the
    reader will want (fills may take them in); ``local_only``: do not ask the owner (we
    are it); ``downstream``: the sender the bytes go to — a chunk is read from disk only
    once it has credit, and a peer is asked for no more than that credit; ``lease``: the
    reader is on this host: the bytes on this node's disk (committed, or landing from a
    fill) are given as :class:`~edgecache.common.wire.FileSpan` s for it to read itself,
    each chunk pinned against eviction under this lease id (renewed for
    ``cachenode.lease_s`` at each span). ``followed`` (with ``lease``): the fills this
    read has followed since they were running (chunk id → fill), added to here; a chunk
    whose fill ended well since is still sent as that fill's bytes (see :func:`read`).

    Raises:
        ChunkMissing: a dirty chunk is on no reachable node (it cannot come from the origin).
        ServiceUnavailable / PreconditionFailed: a fill from the origin failed.
    """
    chunk = manifest.chunks[index]
    fill = node.filler.active.get(chunk.id)
    done = followed.get(chunk.id) if fill is None and followed is not None else None
    if done is not None and done.error is None and node.store.has(chunk.id):
        fill = done  # its bytes as the fill wrote them, which this read followed (see read())
    if fill is None:
        if downstream is not None:
            await downstream.ready()  # hold no chunk in memory while the reader takes nothing
        if lease and (span := _committed_span(node, lease, chunk, first, last)) is not None:
            node.counters.hits += 1
            yield span
            return
        try:
            data = await node.store.read(chunk.id, first, last)
            node.counters.hits += 1
            yield data
            return
        except (ChunkMissing, ChunkCorrupt):
            pass
        plain = wire.ChunkGet(chunk_id=chunk.id, first=first, last=last)
        # holders that are live first: a lost node (its copy gone with it) costs a failed
        # request each time it is asked; asked last, in case the live view lags behind
        live = node.live.ids()
        holders = sorted((n for n in chunk.nodes or manifest.nodes if n != node.node_id), key=lambda n: n not in live)
        sources = [(n, plain) for n in holders]
        owner = placement.owner(manifest.bucket, manifest.key, node.live.ids())
        if manifest.state == "clean" and not local_only and owner and owner != node.node_id:
            sources.append((owner, wire.ChunkGet(
                chunk_id=chunk.id, first=first, last=last, bucket=manifest.bucket,
                key=manifest.key, version=manifest.version, index=index, prefetch=prefetch,
            )))
        opened = await peers.open_chunk(
            node.nc,
            sources,
            budget=node.credit,
            downstream=downstream,
            window=node.config.cachenode.window_frames,
            timeout_s=node.config.nats.request_timeout_s,
            liveness=Liveness.of(node.config.nats),
        )
        if opened is not None:
            try:
                yield opened.first
                async for piece in opened.body:
                    yield piece
            finally:  # a reader that stops early stops the peer's stream
                with contextlib.suppress(Exception):
                    await opened.body.aclose()  # type: ignore[attr-defined]
            node.counters.hits += 1
            return
        if manifest.state == "dirty":
            raise ChunkMissing(chunk.id)
        fill = node.filler.start(manifest, index, until=index + prefetch)
    node.counters.misses += 1
    if lease:
        spans = fill.spans(first, last)
        head_span = await anext(spans, None)  # as below
        ahead = _ahead(node, manifest, index, prefetch)
        node.filler.prefetch(manifest, ahead, until=index + prefetch)
        if followed is not None:
            _follow(node, manifest, ahead, followed)
        if head_span is not None:
            yield _fill_span(node, lease, fill, *head_span)
            async for offset, n in spans:
                yield _fill_span(node, lease, fill, offset, n)
        return
    pieces = fill.follow(first, last)
    head = await anext(pieces, None)  # the first byte first: prefetching competes with it at the origin
    node.filler.prefetch(manifest, _ahead(node, manifest, index, prefetch), until=index + prefetch)
    if head is not None:
        yield head
        async for piece in pieces:
            yield piece


def _span(
    node: CacheNode, lease: str, chunk_id: str, paths: list[str], offset: int, length: int, size: int, *, committed: bool
) -> wire.FileSpan:
    """A file span for a reader on this host; the chunk is pinned under ``lease`` (renewed)."""
    node.store.leases.extend(lease, (chunk_id,), node.config.cachenode.lease_s)
    return wire.FileSpan(
        chunk_id=chunk_id,
        paths=paths,
        offset=offset,
        length=length,
        chunk_size=size,
        committed=committed,
        lease_id=lease,
        release_subject=node.lease_subject,
    )


def _committed_span(node: CacheNode, lease: str, chunk: wire.ChunkRef, first: int, last: int) -> wire.FileSpan | None:
    """The file span of a chunk committed in this node's store; ``None`` if it is not
    (wholly) here."""
    store = node.store
    if store.size_of(chunk.id) != chunk.size or (paths := store.paths_of(chunk.id)) is None:
        return None
    store.access(chunk.id)
    return _span(node, lease, chunk.id, [str(p.absolute()) for p in paths], first, last - first + 1, chunk.size, committed=True)


def _fill_span(node: CacheNode, lease: str, fill: ChunkFill, offset: int, length: int) -> wire.FileSpan:
    return _span(node, lease, fill.chunk_id, list(fill.paths), offset, length, fill.size, committed=False)


def _follow(node: CacheNode, manifest: wire.Manifest, indexes: list[int], followed: dict[str, ChunkFill]) -> None:
    """Record in ``followed`` the running fills of the chunks ``indexes``."""
    active = node.filler.active
    for j in indexes:
        chunk_id = manifest.chunks[j].id
        if (fill := active.get(chunk_id)) is not None:
            followed[chunk_id] = fill


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
    lease: str | None = None,
) -> AsyncIterator[bytes | wire.FileSpan]:
    """Bytes ``first..last`` (inclusive) of ``manifest``'s version, in order, chunk by chunk,
    each piece as soon as it is available. Only the chunks covering the range are filled.
    ``downstream``, ``lease``: see :func:`read_chunk_span`.

    With ``lease`` (the reader is on this host), the chunks whose fills were running
    while this read went on are sent as those fills' bytes even when a fill has ended
    before the read reached its chunk: file spans of the fill's file, not verified, as
    the bytes of a fill the read follows always are; a fill that failed, or a chunk no
    longer in the store, is read as usual. (A read reaching a committed chunk it did not
    see being filled verifies it, on every read.)

    Raises:
        ChunkMissing, ServiceUnavailable, PreconditionFailed: see :func:`read_chunk_span`.
        ServiceUnavailable: the version is another site's, not yet in the origin (a remote
            record has no chunks here: a GET relays to that site instead, :mod:`.sites`).
    """
    if (site := node.catalog.owner_of(manifest)) is not None:
        raise errors.ServiceUnavailable(
            f"{manifest.bucket}/{manifest.key} is held at site {site}", retry_after_s=1
        )
    spans = chunk_spans(manifest.chunks, first, last)
    last_index = spans[-1][0] if spans else -1
    followed: dict[str, ChunkFill] | None = {} if lease else None
    for index, cfirst, clast in spans:
        if followed is not None:
            _follow(node, manifest, [index, *_ahead(node, manifest, index, last_index - index)], followed)
        pieces = read_chunk_span(
            node, manifest, index, cfirst, clast, prefetch=last_index - index, downstream=downstream, lease=lease,
            followed=followed,
        )
        async for piece in pieces:
            node.counters.bytes_out += piece.length if isinstance(piece, wire.FileSpan) else len(piece)
            yield piece
            del piece  # a whole chunk: not kept alive while the next one is read
