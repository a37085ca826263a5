"""Adoption: recording the origin's current version of an object that has no manifest yet.

**HEAD-less on a cold GET.** The node that owns the key (or the only live one) does not ask
the origin for a HEAD and then wait for an fsynced KV create before the first ranged GET:
it opens the ranged GET of the chunk that holds the first byte wanted at once
(:meth:`.Filler.open_range`: from S3 in a fill thread, whose response carries what a HEAD gives:
size from ``Content-Range``, ETag, time, type, headers, metadata), builds the manifest
from it, hands the open body to the fill (:meth:`.Filler.start_opened`) and records the
manifest in the catalog (a create-if-absent) **while** the first bytes stream to the
reader.

Why the reader need not wait for the create: a clean manifest adopted from the origin
promises a reader nothing the origin does not — the origin is the truth, and every byte
of this version is fetched ``If-Match`` its ETag. Read-after-write still holds because
the reader looked the key up in the catalog *before* the GET: a write acknowledged
before the read began was seen there. A write that commits after that lookup is
concurrent with the read, and S3 lets such a read return the older version; the create
then loses (create-if-absent) and the write's manifest stays current. A concurrent
adoption by another node also makes the create lose; both name the origin's object with
the same version id (:func:`adopted_version`), so the reads already on this one read the
chunks every node fills for the winner, each fetched once.

Requests on this node for the same key while an adoption is in flight share it
(:class:`.adoptions.Adoptions`); a lookup that does not read (HEAD, a conditional write's
check) waits until its create settled.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import TYPE_CHECKING

import msgspec

from edgecache.common import errors, placement, wire
from edgecache.common.catalog import fill_chunks
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode
    from edgecache.origin import OriginObject

__all__ = ["adopt_reading", "adopted_version", "manifest_from_origin", "wanted_span", "with_tags"]

log = get_logger(__name__)

_FROM = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*(\d*)\s*$")
_SUFFIX = re.compile(r"^\s*bytes\s*=\s*-")


def wanted_span(range_header: str | None, part_number: int | None) -> tuple[int, int | None] | None:
    """The bytes ``(first, last)`` (inclusive; ``last`` ``None``: to the end) a GET with
    ``Range: range_header`` / ``partNumber`` reads, as far as they can be known without
    the object's size: ``(0, None)`` for the whole object or part 1, ``(N, M)`` for
    ``bytes=N-M``; ``None`` for a suffix range (``bytes=-N``) or another part (their start
    needs the size or the part table)."""
    if part_number is not None:
        return (0, None) if part_number == 1 else None
    if not range_header:
        return 0, None
    match = _FROM.match(range_header)
    if match is None:
        # a suffix range needs the size; anything else S3 ignores: the whole object
        return None if _SUFFIX.match(range_header) else (0, None)
    first, last = match.groups()
    if not last:
        return int(first), None
    if int(last) < int(first):
        return 0, None  # invalid: ignored, as S3 does
    return int(first), int(last)


def adopted_version(bucket: str, obj: OriginObject, chunk_bytes: int) -> str:
    """The version id of the origin's object ``obj`` in ``bucket``, chunked in
    ``chunk_bytes``: the same at every node that adopts it, so that two nodes adopting it at
    once (the owner HEAD-less, another with a HEAD) name the same chunks and their fills
    meet, each chunk fetched from the origin once (docs/architecture.md, change 38).

    Shaped as :func:`~edgecache.common.ids.new_id` (26 hex digits): the object's
    Last-Modified in ns, then 40 bits of BLAKE2b over the bucket, key, ETag, size,
    federation stamp and ``chunk_bytes``. Any change of the object in the origin changes
    its ETag or time, hence the id; the same object adopted again later gets the same id
    (its chunks, if still on disk, are its bytes)."""
    stamp = (round(max(obj.last_modified, 0.0) * 1_000_000) * 1000) & 0xFFFF_FFFF_FFFF_FFFF  # exact to 1 us
    named = "\0".join((bucket, obj.key, obj.etag, str(obj.size), str(obj.hlc), obj.site, str(chunk_bytes)))
    return f"{stamp:016x}{hashlib.blake2b(named.encode(), digest_size=5).hexdigest()}"


def manifest_from_origin(node: CacheNode, bucket: str, obj: OriginObject) -> wire.Manifest:
    """A clean manifest of the origin's object ``obj``, as version :func:`adopted_version`:
    unfilled chunks of ``node.chunk_bytes`` (the last one shorter), its tags (``{}`` if
    ``obj`` did not bring them: see :func:`with_tags`) and, at a federated site, its
    ``(hlc, site)``."""
    version = adopted_version(bucket, obj, node.chunk_bytes)
    return wire.Manifest(
        bucket=bucket,
        key=obj.key,
        version=version,
        size=obj.size,
        etag=obj.etag,
        last_modified=obj.last_modified,
        content_type=obj.content_type,
        metadata=obj.metadata,
        headers=obj.headers,
        tags=obj.tags or {},
        chunks=fill_chunks(version, obj.size, node.chunk_bytes),
        state="clean",
        origin_etag=obj.etag,
        validated_at=time.time(),
        hlc=obj.hlc,  # federation: the version's place in the (hlc, site) order, if stamped
        site=obj.site,
    )


async def with_tags(node: CacheNode, bucket: str, obj: OriginObject) -> OriginObject:
    """``obj`` with its tags, asked of the origin if its answer did not bring them (an S3
    HEAD, or a GET of a tagged object)."""
    if obj.tags is not None:
        return obj
    return msgspec.structs.replace(obj, tags=await node.origin.get_tags(bucket, obj.key))


async def adopt_reading(
    node: CacheNode, bucket: str, key: str, first: int, last: int | None = None
) -> wire.Manifest | None:
    """Adopt ``bucket/key`` from the origin HEAD-less for a read of bytes ``first..last``
    (inclusive; ``None``: to the end): one ranged GET of a fill run — from the chunk
    holding ``first``, at most ``cachenode.fill_run_bytes``, never past the chunk holding
    ``last`` — opens at once and starts filling those chunks (see the module docstring). ``None`` when the caller should adopt with a HEAD instead:
    another live node owns the key (it fills the chunks, once for the cluster), or the
    chunk starts at or past the end (an empty object; a range the object cannot satisfy).

    Raises:
        NoSuchBucket, NoSuchKey, ServiceUnavailable, AccessDenied: from the origin.
    """
    pending = node.adoptions.pending(bucket, key)
    if pending is not None:
        return await asyncio.shield(pending)
    owner = placement.owner(bucket, key, node.live.ids())
    if owner and owner != node.node_id:
        return None
    future = node.adoptions.begin(bucket, key)
    try:
        manifest = await _open(node, bucket, key, first, last)
    except BaseException as exc:
        node.adoptions.fail(future, exc)
        raise
    node.adoptions.record(node.catalog, future, manifest)
    return manifest


async def _open(
    node: CacheNode, bucket: str, key: str, first: int, last: int | None
) -> wire.Manifest | None:
    step = node.chunk_bytes
    index = first // step
    start = index * step
    end = start + max(step, node.config.cachenode.fill_run_bytes // step * step) - 1
    if last is not None:
        end = min(end, (last // step + 1) * step - 1)
    try:
        opened = await node.filler.open_range(bucket, key, start, end)  # in a fill thread from S3
    except errors.InvalidRange:
        return None
    try:
        manifest = manifest_from_origin(node, bucket, await with_tags(node, bucket, opened.object))
        whole_chunks = (opened.last + 1 - start) % step == 0 or opened.last + 1 == manifest.size
        if opened.first != start or not whole_chunks:
            await opened.aclose()  # the origin ignored the range
            return None
        run = range(index, opened.last // step + 1)
        if not all(node.filler.idle(manifest.chunks[i]) for i in run):
            # the same object adopted before (its id is derived from it): its chunks are
            # here or being filled; the reader reads them there, as for any manifest
            await opened.aclose()
            return manifest
        node.filler.start_opened(manifest, run, opened)
    except BaseException:
        await opened.aclose()
        raise
    return manifest
