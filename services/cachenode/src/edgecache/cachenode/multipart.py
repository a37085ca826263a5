"""Multipart uploads: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
AbortMultipartUpload, ListParts.

An upload's record and its parts live in KV ``uploads``; a part's bytes are dirty chunks
``<part version>.<index>`` on the node that received it (parts of one upload may land on
different nodes; each ``ChunkRef`` then names its node). Completing stitches the parts'
chunks into one manifest without copying a byte.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from edgecache.cachenode import objects
from edgecache.cachenode.node import Answered, CacheNode, now
from edgecache.common import errors, kvkeys, wire
from edgecache.common.checksums import Digests, object_checksum
from edgecache.common.ids import new_id
from edgecache.common.jetstream import current_values
from edgecache.common.names import validate_key

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = [
    "abort_abandoned",
    "abort_multipart_upload",
    "check_part_number",
    "complete_multipart_upload",
    "create_multipart_upload",
    "drop",
    "list_multipart_uploads",
    "list_parts",
    "require_upload",
    "upload_records",
    "store_part",
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
    await drop(node, [c.id for p in parts.values() for c in p.chunks if c.id not in keep])


async def drop(node: CacheNode, chunk_ids: list[str]) -> None:
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
        checksum_algorithm=request.checksum_algorithm,
        checksum_type=request.checksum_type,
        tags=request.tags,
    )
    await node.state.uploads.put(kvkeys.upload_key(upload_id), wire.encode(record))
    return wire.MultipartUpload(bucket=request.bucket, key=request.key, upload_id=upload_id)


def check_part_number(part_number: int) -> None:
    """Raises InvalidArgument unless ``part_number`` is 1..10000."""
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )


async def require_upload(node: CacheNode, bucket: str, key: str, upload_id: str) -> wire.UploadRecord:
    """The record of an upload in progress. Raises NoSuchUpload (also once it is older
    than ``cachenode.multipart_max_age_s``: :func:`abort_abandoned` is about to abort it)."""
    if not _valid_upload_id(upload_id):
        raise errors.NoSuchUpload(resource=f"{bucket}/{key}")
    record = await _upload(node, bucket, key, upload_id)
    if record.initiated < now() - node.config.cachenode.multipart_max_age_s:
        raise errors.NoSuchUpload("the upload was abandoned", resource=f"{bucket}/{key}")
    return record


async def store_part(
    node: CacheNode,
    upload_id: str,
    part_number: int,
    refs: list[wire.ChunkRef],
    digests: Digests,
    checksums: dict[str, str],
) -> wire.PartInfo:
    """Record a received (or copied) part, replacing any earlier part of that number, and
    drop the replaced part's chunks. Two uploads of one part number racing: the one whose
    record is written last wins, and each drops exactly the chunks it replaced
    (compare-and-set on the part's KV revision)."""
    part_key = kvkeys.part_key(upload_id, part_number)
    record = wire.PartRecord(
        part_number=part_number,
        etag=digests.md5_hex,
        size=digests.size,
        last_modified=now(),
        chunks=refs,
        nodes=objects.holders_of(node, refs),
        md5=digests.md5_hex,
        checksums=checksums,
    )
    while True:
        try:
            old = await node.state.uploads.get(part_key)
        except KeyNotFoundError:
            old = None
        try:
            if old is None:
                await node.state.uploads.create(part_key, wire.encode(record))
            else:
                await node.state.uploads.update(part_key, wire.encode(record), last=old.revision)
        except KeyWrongLastSequenceError:
            continue  # another upload of this part number landed in between: replace it
        break
    previous = wire.decode(old.value, wire.PartRecord) if old is not None and old.value else None
    if previous is not None:
        await drop(node, [c.id for c in previous.chunks])
    return wire.PartInfo(
        part_number=record.part_number,
        etag=record.etag,
        size=record.size,
        last_modified=record.last_modified,
        checksums=checksums,
    )


async def upload_part(node: CacheNode, msg: Msg, request: wire.UploadPart) -> None:
    """Receive one part (a stream), store it as dirty chunks, answer ``PartInfo``.

    A part uploaded again under the same number replaces the earlier one (:func:`store_part`).
    A part of an upload created with a checksum algorithm gets that algorithm's checksum,
    computed here when the client sent none.
    Errors: NoSuchUpload, InvalidArgument (part number outside 1..10000), BadDigest,
    InvalidRequest (a checksum of another algorithm than the upload's).
    """
    check_part_number(request.part_number)
    record = await require_upload(node, request.bucket, request.key, request.upload_id)
    algorithm = record.checksum_algorithm
    prefix = new_id()
    rx, refs, digests, checksums = await objects.receive(
        node, msg, request, prefix=prefix, compute=algorithm
    )
    try:
        # checked once the body is read, so the client's connection stays usable
        other = [a for a in checksums if algorithm and a != algorithm]
        if other:
            raise errors.InvalidRequest(
                f"Checksum Type mismatch occurred, expected checksum Type: {algorithm}, "
                f"actual checksum Type: {other[0]}"
            )
        info = await store_part(node, request.upload_id, request.part_number, refs, digests, checksums)
        await rx.finish(info)
    except Exception as exc:
        await drop(node, [r.id for r in refs])
        await rx.fail(exc)
        raise Answered(exc) from exc
    finally:
        await rx.close()


async def complete_multipart_upload(
    node: CacheNode, request: wire.CompleteMultipartUpload
) -> wire.ObjectInfo:
    """Assemble the listed parts into the object's new dirty version.

    The object's checksum (an upload created with an algorithm) is combined from the
    parts' checksums (:func:`_object_checksums`).

    Raises:
        NoSuchUpload, MalformedXML (no parts), InvalidPartOrder, InvalidPart (missing part,
        ETag or part checksum mismatch), EntityTooSmall (a part but the last under 5 MiB),
        BadDigest (the whole object's checksum sent does not match), InvalidRequest.
    """
    record = await require_upload(node, request.bucket, request.key, request.upload_id)
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
    checksums = _object_checksums(record, request, chosen)
    version = new_id()
    manifest = wire.Manifest(
        bucket=request.bucket,
        key=request.key,
        version=version,
        checksums=checksums,
        size=sum(p.size for p in chosen),
        etag=etag,
        last_modified=now(),
        content_type=record.content_type,
        metadata=record.metadata,
        headers=record.headers,
        parts_count=len(chosen),
        chunks=chunks,
        nodes=sorted({n for c in chunks for n in c.nodes}),
        part_sizes=[p.size for p in chosen],
        tags=record.tags,
    )
    try:
        await objects.commit_version(node, manifest, request.condition)
    except objects.VersionKept:
        # the version is current: the upload ends as if completed, or an abort of it would
        # drop the chunks the version reads
        await _forget(node, request.upload_id, stored, keep={c.id for c in chunks})
        raise
    await _forget(node, request.upload_id, stored, keep={c.id for c in chunks})
    return objects.info_of(manifest)


def _object_checksums(
    record: wire.UploadRecord, request: wire.CompleteMultipartUpload, chosen: list[wire.PartRecord]
) -> dict[str, str]:
    """The completed object's ``{algorithm: base64}`` from its parts' stored checksums,
    ``{}`` for an upload created without an algorithm (whatever the request claims: clients
    such as the AWS CLI v1 send part CRC32s without declaring an algorithm up front).

    Raises:
        InvalidPart: a ``<Part>`` checksum of the request differs from the stored one.
        InvalidRequest: a checksum of another algorithm than the upload's.
        BadDigest: the whole object's checksum header differs from the combined one.
    """
    algorithm = record.checksum_algorithm
    claimed = {a for p in request.parts for a in p.checksums} | set(request.checksums)
    if not algorithm:  # part checksums of such an upload stay the parts' own, as before
        return {}
    if claimed - {algorithm}:
        raise errors.InvalidRequest(
            f"The upload was created using a {algorithm} checksum; the complete request "
            f"carries a checksum of another algorithm."
        )
    for wanted, part in zip(request.parts, chosen, strict=True):
        sent = wanted.checksums.get(algorithm)
        if algorithm not in part.checksums or (sent is not None and sent != part.checksums[algorithm]):
            raise errors.InvalidPart()
    value = object_checksum(
        algorithm, record.checksum_type, [(p.checksums[algorithm], p.size) for p in chosen]
    )
    sent = request.checksums.get(algorithm)
    if sent is not None and sent.partition("-")[0] != value.partition("-")[0]:
        raise errors.BadDigest(
            f"The {algorithm.upper()} you specified did not match the calculated checksum."
        )
    return {algorithm: value}


async def abort_multipart_upload(node: CacheNode, request: wire.AbortMultipartUpload) -> wire.Ok:
    """Drop an upload and its parts. Raises NoSuchUpload."""
    await require_upload(node, request.bucket, request.key, request.upload_id)
    await _forget(node, request.upload_id, await _parts(node, request.upload_id), keep=set())
    return wire.Ok()


async def list_parts(node: CacheNode, request: wire.ListParts) -> wire.ListPartsResult:
    """The parts uploaded so far, by number, after ``part_number_marker``. Raises NoSuchUpload."""
    await require_upload(node, request.bucket, request.key, request.upload_id)
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


async def upload_records(node: CacheNode) -> list[wire.UploadRecord]:
    """Every multipart upload in progress, in every bucket (KV ``uploads``, one pass)."""
    return [
        wire.decode(value, wire.UploadRecord)
        async for value in current_values(node.state.uploads, kvkeys.upload_filter())
    ]


async def abort_abandoned(node: CacheNode) -> int:
    """Abort every upload initiated over ``cachenode.multipart_max_age_s`` ago, plus one
    ``nats.request_timeout_s`` of grace so that a request that found it young has finished:
    its KV entries go, its chunks here are deleted and everywhere released (evictable).
    Any node may run it; two racing abort the same uploads harmlessly.

    Returns:
        How many uploads were aborted.
    """
    cachenode, grace_s = node.config.cachenode, node.config.nats.request_timeout_s
    cutoff = now() - cachenode.multipart_max_age_s - grace_s
    aborted = 0
    for record in await upload_records(node):
        if record.initiated < cutoff:
            await _forget(node, record.upload_id, await _parts(node, record.upload_id), keep=set())
            aborted += 1
    return aborted


async def list_multipart_uploads(
    node: CacheNode, request: wire.ListMultipartUploads
) -> wire.ListMultipartUploadsResult:
    """The uploads in progress in ``request.bucket``: by key (UTF-8 binary order), then by
    initiation time, after ``(key_marker, upload_id_marker)`` (without ``upload_id_marker``
    every upload of ``key_marker`` is skipped, as S3 does), keys under ``delimiter`` rolled
    up into common prefixes. Raises NoSuchBucket, InvalidArgument (``max_uploads`` < 0).
    """
    await node.require_bucket(request.bucket)
    abandoned_before = now() - node.config.cachenode.multipart_max_age_s  # being aborted
    if request.max_uploads < 0:
        raise errors.InvalidArgument("max-uploads must be a non-negative integer")
    records = [
        r for r in await upload_records(node)
        if r.bucket == request.bucket and r.key.startswith(request.prefix) and r.initiated >= abandoned_before
    ]
    records.sort(key=lambda r: (_utf8(r.key), r.initiated, r.upload_id))
    marker = _utf8(request.key_marker)
    if request.upload_id_marker and request.key_marker:
        ids = [r.upload_id for r in records if r.key == request.key_marker]
        after_id = ids.index(request.upload_id_marker) if request.upload_id_marker in ids else -1
        records = [
            r for r in records
            if _utf8(r.key) > marker or (r.key == request.key_marker and ids.index(r.upload_id) > after_id)
        ]
    elif request.key_marker:
        records = [r for r in records if _utf8(r.key) > marker]
    uploads: list[wire.UploadSummary] = []
    prefixes: list[str] = []
    truncated = False
    next_key = next_id = ""
    for r in records:
        common = ""
        if request.delimiter:
            idx = r.key.find(request.delimiter, len(request.prefix))
            if idx >= 0:
                common = r.key[: idx + len(request.delimiter)]
        if common and prefixes and prefixes[-1] == common:
            continue
        if len(uploads) + len(prefixes) >= request.max_uploads:
            truncated = True
            break
        if common:
            prefixes.append(common)
            next_key, next_id = common, ""
        else:
            uploads.append(wire.UploadSummary(key=r.key, upload_id=r.upload_id, initiated=r.initiated))
            next_key, next_id = r.key, r.upload_id
    return wire.ListMultipartUploadsResult(
        uploads=uploads,
        common_prefixes=prefixes,
        is_truncated=truncated,
        next_key_marker=next_key if truncated else "",
        next_upload_id_marker=next_id if truncated else "",
    )


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")
