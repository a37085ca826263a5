"""Multipart uploads: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
AbortMultipartUpload, ListParts.

An upload's record and its parts live in KV ``uploads``; a part's bytes are dirty chunks
``<part version>.<index>`` on the node that received it (parts of one upload may land on
different nodes; each ``ChunkRef`` then names its node). Completing stitches the parts'
chunks into one manifest without copying a byte.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError

from edgecache.cachenode import objects
from edgecache.cachenode.node import Answered, CacheNode, now
from edgecache.common import errors, kvkeys, wire
from edgecache.common.ids import new_id
from edgecache.common.jetstream import current_values
from edgecache.common.names import validate_key

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = [
    "abort_multipart_upload",
    "complete_multipart_upload",
    "create_multipart_upload",
    "list_parts",
    "upload_part",
]

MIN_PART_BYTES = 5 * 1024 * 1024  # every part but the last (S3's rule)
MAX_PART_NUMBER = 10_000


async def _upload(node: CacheNode, bucket: str, key: str, upload_id: str) -> wire.UploadRecord:
    """Raises NoSuchUpload if there is no such upload of ``bucket/key``."""
    try:
        entry = await node.state.uploads.get(kvkeys.upload_key(upload_id))
    except (KeyNotFoundError, ValueError) as exc:
        raise errors.NoSuchUpload(resource=f"{bucket}/{key}") from exc
    record = wire.decode(entry.value, wire.UploadRecord) if entry.value else None
    if record is None or record.bucket != bucket or record.key != key:
        raise errors.NoSuchUpload(resource=f"{bucket}/{key}")
    return record


async def _parts(node: CacheNode, upload_id: str) -> dict[int, wire.PartRecord]:
    parts: dict[int, wire.PartRecord] = {}
    async for value in current_values(node.state.uploads, kvkeys.part_filter(upload_id)):
        part = wire.decode(value, wire.PartRecord)
        parts[part.part_number] = part
    return parts


async def _part(node: CacheNode, upload_id: str, number: int) -> wire.PartRecord | None:
    """One part's record read by key: the authority when the one-pass listing of
    :func:`_parts` disagrees with what a client was told it uploaded."""
    try:
        entry = await node.state.uploads.get(kvkeys.part_key(upload_id, number))
    except KeyNotFoundError:
        return None
    return wire.decode(entry.value, wire.PartRecord) if entry.value else None


async def _forget(node: CacheNode, upload_id: str, parts: dict[int, wire.PartRecord], *, keep: set[str]) -> None:
    """Delete an upload's KV entries and this node's chunks of it, but those in ``keep``;
    replicas of the dropped chunks are released on their nodes."""
    for number in parts:
        await node.state.uploads.purge(kvkeys.part_key(upload_id, number))
    await node.state.uploads.purge(kvkeys.upload_key(upload_id))
    await _drop(node, [c.id for p in parts.values() for c in p.chunks if c.id not in keep])


async def _drop(node: CacheNode, chunk_ids: list[str]) -> None:
    """Delete these chunks here and release their replicas on other nodes."""
    await node.store.delete(i for i in chunk_ids if node.store.has(i))
    await node.release(chunk_ids, local=False)


def _valid_upload_id(upload_id: str) -> bool:
    return bool(upload_id) and upload_id.isalnum() and len(upload_id) <= 64


async def create_multipart_upload(
    node: CacheNode, request: wire.CreateMultipartUpload
) -> wire.MultipartUpload:
    """Start an upload. Raises NoSuchBucket."""
    validate_key(request.bucket, request.key)
    await node.require_bucket(request.bucket)
    upload_id = new_id()
    record = wire.UploadRecord(
        bucket=request.bucket,
        key=request.key,
        upload_id=upload_id,
        initiated=now(),
        content_type=request.content_type,
        metadata=request.metadata,
        headers=request.headers,
    )
    await node.state.uploads.put(kvkeys.upload_key(upload_id), wire.encode(record))
    return wire.MultipartUpload(bucket=request.bucket, key=request.key, upload_id=upload_id)


async def upload_part(node: CacheNode, msg: Msg, request: wire.UploadPart) -> None:
    """Receive one part (a stream), store it as dirty chunks, answer ``PartInfo``.

    A part uploaded again under the same number replaces the earlier one.
    Errors: NoSuchUpload, InvalidArgument (part number outside 1..10000), BadDigest.
    """
    if not 1 <= request.part_number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    if not _valid_upload_id(request.upload_id):
        raise errors.NoSuchUpload(resource=f"{request.bucket}/{request.key}")
    await _upload(node, request.bucket, request.key, request.upload_id)
    prefix = new_id()
    rx, refs, digests, checksums = await objects.receive(node, msg, request, prefix=prefix)
    try:
        part_key = kvkeys.part_key(request.upload_id, request.part_number)
        try:
            old = await node.state.uploads.get(part_key)
            previous = wire.decode(old.value, wire.PartRecord) if old.value else None
        except KeyNotFoundError:
            previous = None
        record = wire.PartRecord(
            part_number=request.part_number,
            etag=digests.md5_hex,
            size=digests.size,
            last_modified=now(),
            chunks=refs,
            nodes=objects.holders_of(node, refs),
            md5=digests.md5_hex,
            checksums=checksums,
        )
        await node.state.uploads.put(part_key, wire.encode(record))
        if previous is not None:
            await _drop(node, [c.id for c in previous.chunks])
        await rx.finish(
            wire.PartInfo(
                part_number=record.part_number,
                etag=record.etag,
                size=record.size,
                last_modified=record.last_modified,
                checksums=checksums,
            )
        )
    except Exception as exc:
        await _drop(node, [r.id for r in refs])
        await rx.fail(exc)
        raise Answered(exc) from exc
    finally:
        await rx.close()


async def complete_multipart_upload(
    node: CacheNode, request: wire.CompleteMultipartUpload
) -> wire.ObjectInfo:
    """Assemble the listed parts into the object's new dirty version.

    Raises:
        NoSuchUpload, MalformedXML (no parts), InvalidPartOrder, InvalidPart (missing part
        or ETag mismatch), EntityTooSmall (a part but the last under 5 MiB).
    """
    if not _valid_upload_id(request.upload_id):
        raise errors.NoSuchUpload(resource=f"{request.bucket}/{request.key}")
    record = await _upload(node, request.bucket, request.key, request.upload_id)
    if not request.parts:
        raise errors.MalformedXML()
    numbers = [p.part_number for p in request.parts]
    if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
        raise errors.InvalidPartOrder()
    stored = await _parts(node, request.upload_id)
    chosen: list[wire.PartRecord] = []
    for i, wanted in enumerate(request.parts):
        etag = wanted.etag.strip('"').lower()
        part = stored.get(wanted.part_number)
        if part is None or part.etag != etag:
            part = await _part(node, request.upload_id, wanted.part_number)
            if part is None or part.etag != etag:
                raise errors.InvalidPart()
            stored[part.part_number] = part
        if i < len(request.parts) - 1 and part.size < MIN_PART_BYTES:
            raise errors.EntityTooSmall()
        chosen.append(part)
    md5s = b"".join(bytes.fromhex(p.md5) for p in chosen)
    etag = f"{hashlib.md5(md5s).hexdigest()}-{len(chosen)}"  # noqa: S324 - S3's multipart ETag
    chunks = [
        wire.ChunkRef(id=c.id, size=c.size, nodes=c.nodes or p.nodes) for p in chosen for c in p.chunks
    ]
    version = new_id()
    previous = await node.catalog.get(request.bucket, request.key)
    manifest = wire.Manifest(
        bucket=request.bucket,
        key=request.key,
        version=version,
        size=sum(p.size for p in chosen),
        etag=etag,
        last_modified=now(),
        content_type=record.content_type,
        metadata=record.metadata,
        headers=record.headers,
        parts_count=len(chosen),
        chunks=chunks,
        nodes=sorted({n for c in chunks for n in c.nodes}),
    )
    await node.catalog.commit(
        manifest,
        wire.ObjectWritten(id=version, at_ns=time.time_ns(), bucket=request.bucket, key=request.key, version=version),
    )
    await objects.release_previous(node, previous)
    await _forget(node, request.upload_id, stored, keep={c.id for c in chunks})
    return objects.info_of(manifest)


async def abort_multipart_upload(node: CacheNode, request: wire.AbortMultipartUpload) -> wire.Ok:
    """Drop an upload and its parts. Raises NoSuchUpload."""
    if not _valid_upload_id(request.upload_id):
        raise errors.NoSuchUpload(resource=f"{request.bucket}/{request.key}")
    await _upload(node, request.bucket, request.key, request.upload_id)
    await _forget(node, request.upload_id, await _parts(node, request.upload_id), keep=set())
    return wire.Ok()


async def list_parts(node: CacheNode, request: wire.ListParts) -> wire.ListPartsResult:
    """The parts uploaded so far, by number, after ``part_number_marker``. Raises NoSuchUpload."""
    if not _valid_upload_id(request.upload_id):
        raise errors.NoSuchUpload(resource=f"{request.bucket}/{request.key}")
    await _upload(node, request.bucket, request.key, request.upload_id)
    parts = sorted(
        (p for p in (await _parts(node, request.upload_id)).values() if p.part_number > request.part_number_marker),
        key=lambda p: p.part_number,
    )
    page = parts[: max(0, request.max_parts)]
    return wire.ListPartsResult(
        bucket=request.bucket,
        key=request.key,
        upload_id=request.upload_id,
        parts=[
            wire.PartInfo(part_number=p.part_number, etag=p.etag, size=p.size, last_modified=p.last_modified, checksums=p.checksums)
            for p in page
        ],
        is_truncated=len(parts) > len(page),
        next_part_number_marker=page[-1].part_number if page and len(parts) > len(page) else 0,
    )
