"""The cache node's half of the admin API: purge, warm and the list of multipart uploads,
asked by the admin API (in the federator) on ``edgecache.admin.*`` in the queue group
``cachenode``, and the ``ChunksPurged`` event every node acts on.

**Purge** drops what a clean object has cached: its manifest is removed through the
catalog (which publishes the :class:`~edgecache.common.wire.Invalidation` every gateway's
memory tier drops it on), then ``ChunksPurged`` tells every node to delete the chunks. The
next GET finds no manifest, adopts the origin's version and fills it. A dirty object (not
yet written back) is never purged: its chunks are the only copy.

**Warm** fills every chunk of an object the way a GET would (the owner fills from the
origin; see :mod:`.readthrough`) and sends nothing back but a :class:`~wire.WarmResult`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from edgecache.cachenode import multipart, readthrough
from edgecache.common import errors, stream, subjects, wire
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode

__all__ = ["HANDLERS", "dispatch", "list_uploads", "on_chunks_purged", "purge", "warm"]

log = get_logger(__name__)

_CAS_ATTEMPTS = (
    3  # a purge that keeps losing its compare-and-set reports the object as it last saw it
)


async def purge(node: CacheNode, request: wire.PurgeObject) -> wire.PurgeResult:
    """Drop the cached copies of a clean object (see the module docstring).

    Returns:
        ``purged``, ``dirty`` (kept: not yet in the origin) or ``absent`` (no manifest, or a
        tombstone).
    """
    bucket, key = request.bucket, request.key
    for _ in range(_CAS_ATTEMPTS):
        found = await node.catalog.get(bucket, key)
        if found is None or found.manifest.deleted:
            return wire.PurgeResult(bucket=bucket, key=key, outcome="absent")
        manifest, revision = found
        if manifest.state == "dirty" or manifest.tags_state == "dirty":  # tags: on their way too
            return wire.PurgeResult(bucket=bucket, key=key, outcome="dirty", size=manifest.size)
        if await node.catalog.delete(bucket, key, revision):  # publishes the invalidation
            ids = [c.id for c in manifest.chunks]
            if ids:
                event = wire.ChunksPurged(id=new_id(), at_ns=time.time_ns(), chunk_ids=ids)
                await node.nc.publish(subjects.EVENTS_CHUNKS_PURGED, wire.encode(event))
            return wire.PurgeResult(
                bucket=bucket, key=key, outcome="purged", size=manifest.size, chunks=len(ids)
            )
    # the manifest changed under us each time: a new version is being written; it is dirty
    return wire.PurgeResult(bucket=bucket, key=key, outcome="dirty", size=manifest.size)


async def warm(node: CacheNode, request: wire.WarmObject) -> wire.WarmResult:
    """Fill every chunk of ``bucket/key`` that this node does not hold (see the module
    docstring).

    Raises:
        NoSuchBucket, NoSuchKey: no such object here or in the origin.
        ServiceUnavailable: the origin failed.
    """
    manifest = await readthrough.lookup(node, request.bucket, request.key)
    fetched = 0
    for index, chunk in enumerate(manifest.chunks):
        if node.store.has(chunk.id):
            continue
        fetched += 1
        async for _piece in readthrough.read_chunk_span(node, manifest, index, 0, chunk.size - 1):
            pass
    return wire.WarmResult(
        bucket=manifest.bucket,
        key=manifest.key,
        size=manifest.size,
        chunks=len(manifest.chunks),
        fetched=fetched,
    )


async def list_uploads(node: CacheNode, request: wire.ListUploads) -> wire.UploadList:
    """Multipart uploads in progress (KV ``uploads``), oldest first."""
    uploads = [r for r in await multipart.upload_records(node) if not request.bucket or r.bucket == request.bucket]
    uploads.sort(key=lambda u: (u.initiated, u.upload_id))
    limit = max(0, request.limit)
    return wire.UploadList(uploads=uploads[:limit], is_truncated=len(uploads) > limit)


_Operation = Callable[["CacheNode", Any], Awaitable[msgspec.Struct]]

#: Admin subject → (request type, operation).
HANDLERS: dict[str, tuple[type[msgspec.Struct], _Operation]] = {
    subjects.ADMIN_PURGE: (wire.PurgeObject, purge),
    subjects.ADMIN_WARM: (wire.WarmObject, warm),
    subjects.ADMIN_UPLOADS: (wire.ListUploads, list_uploads),
}


async def dispatch(node: CacheNode, msg: Msg) -> None:
    """Decode one ``edgecache.admin.*`` request, run it, answer it; errors become
    ``wire.Error`` (a malformed request: InvalidRequest)."""
    request_type, operation = HANDLERS[msg.subject]
    outcome = "ok"
    try:
        request = wire.decode(msg.data, request_type)
        reply = await operation(node, request)
        await node.nc.publish(msg.reply, wire.encode(reply))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        outcome = "InvalidRequest"
        await stream.send_error(node.nc, msg.reply, errors.InvalidRequest(f"bad request: {exc}"))
    except errors.S3Error as exc:
        outcome = exc.code
        await stream.send_error(node.nc, msg.reply, exc)
    except Exception as exc:
        outcome = "InternalError"
        log.exception("admin.failed", subject=msg.subject)
        await stream.send_error(node.nc, msg.reply, exc)
    finally:
        log.info("admin", subject=msg.subject, outcome=outcome)


async def on_chunks_purged(node: CacheNode, msg: Msg) -> None:
    """``ChunksPurged``: delete the clean copies of these chunks held here (one being read
    or leased stays, for eviction to take later)."""
    event = wire.decode(msg.data, wire.ChunksPurged)
    held = [c for c in event.chunk_ids if node.store.has(c)]
    if held:
        await node.store.purge(held)
