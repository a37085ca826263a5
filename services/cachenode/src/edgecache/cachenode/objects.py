"""PutObject, GetObject, HeadObject, DeleteObject on a cache node."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from edgecache.cachenode import adoption, chunks, readthrough, shortcircuit, sites
from edgecache.cachenode.chunkstore import ChunkMissing
from edgecache.cachenode.node import Answered, CacheNode, now
from edgecache.cachenode.replication import Replicator
from edgecache.common import errors, stream, wire
from edgecache.common.backoff import Backoff
from edgecache.common.checksums import Digests, verify_content_md5
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger
from edgecache.common.names import validate_key
from edgecache.common.ranges import parse_range

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.common.catalog import Entry

__all__ = [
    "VersionKept",
    "commit_version",
    "delete_object",
    "get_object",
    "head_object",
    "info_of",
    "part_sizes",
    "put_object",
    "requested_span",
    "verify_upload",
]


log = get_logger(__name__)

_INTENT_RETRY = Backoff(base_s=0.05, max_s=1.0).delays(5)  # about 2 s in all
# refused before anything was written: the chunks belong to no version
_REFUSED = (errors.PreconditionFailed, errors.NoSuchKey, errors.ConditionalRequestConflict)


class VersionKept(errors.ServiceUnavailable):
    """A new version's manifest became current, but a later step of its commit failed (its
    write-back intent, its change-log record, a timed-out write that landed after all).
    The version stays, with its chunks; its intent was appended again if JetStream took it,
    else a cache node appends it when it starts (``Catalog.recover``). The client gets 503
    (it may retry): whether the write took effect is the same question as after a timeout.
    """


def info_of(m: wire.Manifest, *, first: int | None = None, last: int | None = None) -> wire.ObjectInfo:
    """The client-facing metadata of a manifest (``first``/``last``: the range sent)."""
    return wire.ObjectInfo(
        bucket=m.bucket,
        key=m.key,
        size=m.size,
        etag=m.etag,
        last_modified=m.last_modified,
        content_type=m.content_type,
        metadata=m.metadata,
        headers=m.headers,
        checksums=m.checksums,
        parts_count=m.parts_count,
        range_first=first,
        range_last=last,
        tag_count=len(m.tags),
    )


def verify_upload(
    request: wire.PutObject | wire.UploadPart, digests: Digests, trailers: dict[str, str]
) -> dict[str, str]:
    """Check an upload against what its request and trailers claimed.

    ``digests`` computed the algorithms of ``request.checksums``; a trailing checksum of
    another algorithm (announced only at the end of an aws-chunked body) was verified by
    the sender — the gateway's decoder — and is stored as given.

    Returns:
        The ``x-amz-checksum-*`` values to store with the object.

    Raises:
        IncompleteBody: fewer or more bytes than ``request.size``.
        BadDigest / InvalidDigest: ``Content-MD5`` or a checksum does not match.
    """
    if request.size is not None and digests.size != request.size:
        raise errors.IncompleteBody(
            f"received {digests.size} bytes, Content-Length said {request.size}"
        )
    verify_content_md5(request.content_md5, digests.md5_digest)
    computed = {a: v for a, v in trailers.items() if a in request.checksums}
    stored = digests.verify({**request.checksums, **computed})
    stored.update({a: v for a, v in trailers.items() if a not in request.checksums})
    return stored


async def receive(
    node: CacheNode,
    msg: Msg,
    request: wire.PutObject | wire.UploadPart,
    *,
    prefix: str,
    compute: str = "",
) -> tuple[stream.UploadReceiver, list[wire.ChunkRef], Digests, dict[str, str]]:
    """Open the upload stream of ``msg`` and write its bytes into dirty chunks.

    Args:
        compute: a checksum algorithm to compute and store even when the client sent no
            value of it (a part of a multipart upload created with that algorithm).

    Returns:
        The open receiver (the caller answers on it and closes it), the chunks, the digests
        and the verified checksums. On error the chunks are gone and the receiver is closed
        after answering the error.
    """
    rx = node.upload_receiver(msg, size=request.size)
    refs: list[wire.ChunkRef] = []
    try:
        digests = Digests({*request.checksums, *([compute] if compute else [])})
        await rx.open()
        replicator = Replicator(node, request.bucket, request.key)
        refs = await chunks.write_chunks(node, aiter(rx), prefix=prefix, digests=digests, replicator=replicator)
        checksums = verify_upload(request, digests, rx.end.checksums if rx.end else {})
        if compute:
            checksums.setdefault(compute, digests.values()[compute])
    except Exception as exc:
        await node.store.delete([r.id for r in refs])
        await node.release([r.id for r in refs], local=False)
        await rx.fail(exc)
        await rx.close()
        raise Answered(exc) from exc
    return rx, refs, digests, checksums


async def put_object(node: CacheNode, msg: Msg, request: wire.PutObject) -> None:
    """Store an upload as a new dirty version, then acknowledge with its ``ObjectInfo``.

    The acknowledgement goes out only after the chunks are committed to disk, the manifest
    is in KV and the write intent is in ``WRITEBACK``.
    """
    validate_key(request.bucket, request.key)
    await node.require_bucket(request.bucket)
    version = new_id()
    rx, refs, digests, checksums = await receive(node, msg, request, prefix=version)
    try:
        manifest = wire.Manifest(
            bucket=request.bucket,
            key=request.key,
            version=version,
            size=digests.size,
            etag=digests.md5_hex,
            last_modified=now(),
            content_type=request.content_type,
            metadata=request.metadata,
            headers=request.headers,
            checksums=checksums,
            chunks=refs,
            nodes=holders_of(node, refs),
            tags=request.tags,
        )
        await commit_version(node, manifest, request.condition)
        await rx.finish(info_of(manifest))
    except Exception as exc:
        if not isinstance(exc, VersionKept):  # else the chunks are the current version's
            await node.store.delete([r.id for r in refs])
            await node.release([r.id for r in refs], local=False)
        await rx.fail(exc)
        raise Answered(exc) from exc
    finally:
        await rx.close()


async def commit_version(node: CacheNode, manifest: wire.Manifest, condition: wire.WriteCondition | None) -> None:
    """Make ``manifest`` (a new dirty version) current with its write-back intent, then
    release the version it replaced. With ``condition`` (a conditional write) the key's
    current entry is read first — adopting the origin's copy if there is no entry, so that
    an object only in the origin counts — and the commit is a compare-and-set on it.

    A commit that fails once the manifest may have been written is settled by reading the
    key back: if ``manifest`` is current, its chunks must stay (:class:`VersionKept`);
    only otherwise may the caller drop them. Dropping them under a current manifest left
    a version that no GET could read and no write-back could finish.

    Raises:
        PreconditionFailed, NoSuchKey, ConditionalRequestConflict: see ``Catalog.commit_if``.
        VersionKept: the version is current, but its commit did not complete.
    """
    intent = wire.ObjectWritten(
        id=manifest.version, at_ns=time.time_ns(), bucket=manifest.bucket, key=manifest.key, version=manifest.version
    )
    previous = await node.catalog.get(manifest.bucket, manifest.key)
    try:
        if condition is None:
            await node.catalog.commit(manifest, intent)
        else:
            if previous is None:
                try:
                    await readthrough.lookup(node, manifest.bucket, manifest.key)
                except errors.NoSuchKey:
                    pass
                previous = await node.catalog.get(manifest.bucket, manifest.key)
            await node.catalog.commit_if(manifest, intent, condition, previous)
    except _REFUSED:
        raise
    except Exception as exc:
        if not await _is_current(node, manifest):
            raise
        await release_previous(node, previous)
        appended = await _append_intent(node, intent)
        log.error("commit.incomplete", bucket=manifest.bucket, key=manifest.key, version=manifest.version, error=repr(exc), intent_appended=appended)
        raise VersionKept(
            "The new version was stored but its commit did not complete; it may be retried.",
            resource=f"{manifest.bucket}/{manifest.key}",
            retry_after_s=1,
        ) from exc
    await release_previous(node, previous)


async def _is_current(node: CacheNode, manifest: wire.Manifest) -> bool:
    """Whether ``manifest``'s version is the key's current one; ``True`` when the catalog
    cannot tell (keeping unreferenced chunks costs disk; dropping referenced ones, the
    object)."""
    try:
        entry = await node.catalog.get(manifest.bucket, manifest.key)
    except Exception:  # noqa: BLE001 - JetStream unavailable: assume the worst
        return True
    return entry is not None and entry.manifest.version == manifest.version


async def _append_intent(node: CacheNode, intent: wire.Intent) -> bool:
    """Append ``intent`` (de-duplicated by its id), retrying for about 2 s; whether it is in."""
    for delay in (*_INTENT_RETRY, None):
        try:
            await node.catalog.publish_intent(intent)
            return True
        except Exception:  # noqa: BLE001 - JetStream unavailable
            if delay is None:
                return False
            await asyncio.sleep(delay)
    return False


def holders_of(node: CacheNode, refs: list[wire.ChunkRef]) -> list[str]:
    """Every node holding a chunk of ``refs`` (this node for an empty object)."""
    return sorted({n for r in refs for n in r.nodes} or {node.node_id})


async def release_previous(node: CacheNode, previous: Entry | None) -> None:
    """A superseded version's chunks stop being pinned: the writeback service skips
    superseded versions, so they are only a cache now (evictable)."""
    if previous is not None and previous.manifest.state == "dirty" and previous.manifest.chunks:
        await node.release([c.id for c in previous.manifest.chunks])


def part_sizes(m: wire.Manifest) -> list[int]:
    """The size of each part of ``m``'s version, in order: one part for a single-part
    version. Manifests written before ``part_sizes`` existed get them from their chunk ids
    (each part's chunks share a prefix of their own: ``<part version>.<index>``).

    Raises:
        InvalidRequest: a multipart version whose part boundaries are unknown.
    """
    if m.part_sizes:
        return m.part_sizes
    if m.parts_count is None:
        return [m.size]
    sizes: list[int] = []
    last_prefix = None
    for c in m.chunks:
        prefix = c.id.rpartition(".")[0]
        if prefix != last_prefix:
            sizes.append(0)
            last_prefix = prefix
        sizes[-1] += c.size
    if len(sizes) != m.parts_count:
        raise errors.InvalidRequest("the part boundaries of this object are not known")
    return sizes


def requested_span(m: wire.Manifest, range_header: str | None, part_number: int | None) -> tuple[int, int] | None:
    """The inclusive byte range a GET or HEAD asks of ``m`` (``None``: the whole object),
    by ``Range`` header or by part number.

    Raises:
        InvalidRange: the range selects nothing. InvalidPartNumber: no such part.
    """
    if part_number is None:
        return parse_range(range_header, m.size)
    sizes = part_sizes(m)
    if not 1 <= part_number <= len(sizes):
        raise errors.InvalidPartNumber(resource=f"{m.bucket}/{m.key}")
    first = sum(sizes[: part_number - 1])
    if sizes[part_number - 1] == 0:
        return None  # an empty object: nothing to range over
    return first, first + sizes[part_number - 1] - 1


async def get_object(node: CacheNode, msg: Msg, request: wire.GetObject) -> None:
    """Stream an object (or the requested range): ``ObjectInfo``, frames, ``End`` — or, to a
    requester on this host, a ``ReadPlan`` of the chunk files (:mod:`.shortcircuit`).

    An error before the first byte is answered as the reply; one mid-stream cuts the stream
    with an ``Error`` (the gateway then cuts the HTTP connection).
    """
    tx = node.download_sender(msg)
    try:
        site = sites.cached_owner(node, request.bucket, request.key)
        reading = adoption.wanted_span(request.range, request.part_number)
        manifest = None if site else await readthrough.lookup(node, request.bucket, request.key, reading=reading)
        if manifest is not None:
            site = sites.owner_of(node, manifest)
        if site:  # another site holds this version (federation): read it there
            await sites.relay_get(node, tx, request, site, record=manifest)
            return
        assert manifest is not None
        span = requested_span(manifest, request.range, request.part_number)
        first, last = span if span else (0, manifest.size - 1)
        info = info_of(manifest, first=span[0] if span else None, last=span[1] if span else None)
        if await shortcircuit.answer(node, msg, request, manifest, info):  # a local requester reads the files
            return
        await tx.start(info)
        if manifest.size:
            # a requester on this host reads the bytes on our disk itself (file frames)
            lease = new_id() if shortcircuit.on_this_host(node, request) else None
            async for piece in readthrough.read(node, manifest, first, last, downstream=tx, lease=lease):
                if isinstance(piece, wire.FileSpan):
                    await tx.send_span(piece)
                else:
                    await tx.send(piece)
                del piece  # a whole chunk: not kept alive while the next one is read
        await tx.end()
    except ChunkMissing as exc:
        error = errors.ServiceUnavailable(f"chunk {exc} is unavailable", retry_after_s=1)
        await tx.fail(error)
        raise Answered(error) from exc
    except Exception as exc:
        await tx.fail(exc)
        raise Answered(exc) from exc
    finally:
        await tx.close()


async def head_object(node: CacheNode, request: wire.HeadObject) -> wire.ObjectInfo:
    """The object's metadata (and the range a GET with ``request.range`` would send); of
    a version another site holds, that site's answer (:mod:`.sites`)."""
    site = sites.cached_owner(node, request.bucket, request.key)
    if site:
        return await sites.relay_head(node, request, site)
    manifest = await readthrough.lookup(node, request.bucket, request.key)
    if site := sites.owner_of(node, manifest):
        return sites.with_our_tags(await sites.relay_head(node, request, site), manifest)
    span = requested_span(manifest, request.range, request.part_number)
    return info_of(manifest, first=span[0] if span else None, last=span[1] if span else None)


async def delete_object(node: CacheNode, request: wire.DeleteObject) -> wire.Ok:
    """Delete a key: a dirty tombstone now, the origin's copy by write-back. Succeeds for a
    key that does not exist, as S3 does."""
    validate_key(request.bucket, request.key)
    await node.require_bucket(request.bucket)
    previous = await node.catalog.get(request.bucket, request.key)
    if previous is not None and previous.manifest.deleted and previous.manifest.state == "clean":
        return wire.Ok()
    version = new_id()
    tombstone = wire.Manifest(
        bucket=request.bucket,
        key=request.key,
        version=version,
        size=0,
        etag="",
        last_modified=now(),
        deleted=True,
        nodes=[node.node_id],
    )
    await node.catalog.commit(
        tombstone,
        wire.ObjectDeleted(
            id=version, at_ns=time.time_ns(), bucket=request.bucket, key=request.key, version=version
        ),
    )
    await release_previous(node, previous)
    return wire.Ok()
