"""Server-side copies: CopyObject and UploadPartCopy on a cache node.

The bytes never pass through the gateway: the node reads the source through its normal read
path (:func:`.readthrough.read`: its disk, a peer, the owner's fill from the origin for an
evicted clean chunk; federated, a version another site holds and has not yet written back is
read at that site, as a GET of it is relayed there: :func:`.sites.read_at_owner`) and writes them into **new chunks of its own** under the copy's
version, replicated as any upload is (:func:`.chunks.write_chunks`). The copy is a new
dirty version with its own write-back intent, committed through the catalog.

Why new chunks rather than shared chunk ids: a chunk belongs to exactly one version, and
replacing or deleting a version releases its chunks (:func:`.objects.release_previous`);
sharing ids between two manifests would let a DELETE of the source make the copy's bytes
evictable while the copy is still dirty, with nothing in the origin to read them back from.
Reference counting would need a second owner of chunk lifetimes beside the catalog; a copy
costs disk bandwidth on one node instead, and is checked byte for byte (MD5, and the
source's full-object checksums) on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.cachenode import chunks, multipart, objects, readthrough, sites
from edgecache.cachenode.chunkstore import ChunkMissing
from edgecache.cachenode.node import CacheNode, now
from edgecache.cachenode.replication import Replicator
from edgecache.common import errors, wire
from edgecache.common.checksums import ALGORITHMS, Digests
from edgecache.common.ids import new_id
from edgecache.common.names import validate_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["MAX_COPY_BYTES", "copy_object", "upload_part_copy"]

MAX_COPY_BYTES = 5 * 1024**3  # S3's largest CopyObject source and UploadPartCopy part


async def source_manifest(node: CacheNode, source: wire.CopySource) -> wire.Manifest:
    """The source's current version, checked against the ETag the gateway's preconditions
    saw.

    Raises:
        NoSuchBucket, NoSuchKey: no such source.
        PreconditionFailed: the source changed since its preconditions were checked.
    """
    manifest = await readthrough.lookup(node, source.bucket, source.key)
    if source.etag is not None and manifest.etag != source.etag:
        raise errors.PreconditionFailed(resource=f"{source.bucket}/{source.key}")
    return manifest


async def _copy_chunks(
    node: CacheNode,
    manifest: wire.Manifest,
    first: int,
    last: int,
    *,
    bucket: str,
    key: str,
    prefix: str,
    compute: str = "",
) -> tuple[list[wire.ChunkRef], Digests, dict[str, str]]:
    """Copy bytes ``first..last`` (inclusive; ``last < first``: none) of ``manifest`` into new
    dirty chunks ``<prefix>.<i>`` here, replicated for ``bucket/key``.

    ``compute``: a checksum algorithm to compute over the copied bytes whatever the source
    holds (a part copied into an upload created with that algorithm).

    Returns:
        The chunks, the digests of the bytes, and the source's full-object checksums when the
        whole object was copied (each verified against the bytes), plus ``compute``'s.

    Raises:
        BadDigest: the bytes do not match the source's MD5 or checksums.
        ServiceUnavailable: a chunk of the source is unavailable, or the disk is full; or
            the source is another site's version and that site did not answer (or holds
            a newer one by now).
    """
    whole = first == 0 and last == manifest.size - 1
    kept = (
        {a: v for a, v in manifest.checksums.items() if a in ALGORITHMS and "-" not in v}
        if whole
        else {}
    )
    # an ETag we computed (not the origin's, which may be no MD5) of a single-part version
    our_md5 = whole and manifest.parts_count is None and manifest.etag != manifest.origin_etag
    digests = Digests({*kept, *([compute] if compute else [])})

    async def body() -> AsyncIterator[bytes]:
        if last < first:
            return
        if site := sites.owner_of(node, manifest):  # another site's version, not yet in the origin
            async for piece in sites.read_at_owner(node, manifest, first, last, site):
                yield piece
            return
        async for piece in readthrough.read(node, manifest, first, last):
            yield piece

    try:
        refs = await chunks.write_chunks(
            node, body(), prefix=prefix, digests=digests, replicator=Replicator(node, bucket, key)
        )
    except ChunkMissing as exc:
        raise errors.ServiceUnavailable(
            f"chunk {exc} of the copy source is unavailable", retry_after_s=1
        ) from exc
    try:
        if our_md5 and digests.md5_hex != manifest.etag:
            raise errors.BadDigest("the copy source's bytes do not match its ETag")
        checksums = digests.verify(kept)
        if compute:
            checksums.setdefault(compute, digests.values()[compute])
    except Exception:
        await multipart.drop(node, [r.id for r in refs])
        raise
    return refs, digests, checksums


async def copy_object(node: CacheNode, request: wire.CopyObject) -> wire.ObjectInfo:
    """CopyObject: make ``bucket/key`` a new version holding a copy of the source.

    Returns:
        The new version's ``ObjectInfo`` (its ETag is the MD5 of the bytes, as for a PUT).

    Raises:
        NoSuchBucket (either bucket), NoSuchKey (source), PreconditionFailed, InvalidRequest
        (source over 5 GiB), ConditionalRequestConflict, BadDigest, ServiceUnavailable.
    """
    validate_key(request.bucket, request.key)
    await node.require_bucket(request.bucket)
    source = await source_manifest(node, request.source)
    if source.size > MAX_COPY_BYTES:
        raise errors.InvalidRequest(
            f"The specified copy source is larger than the maximum allowable size for a copy source: {MAX_COPY_BYTES}"
        )
    version = new_id()
    refs, digests, checksums = await _copy_chunks(
        node, source, 0, source.size - 1, bucket=request.bucket, key=request.key, prefix=version
    )
    attrs = request if request.replace_metadata else source
    manifest = wire.Manifest(
        bucket=request.bucket,
        key=request.key,
        version=version,
        size=digests.size,
        etag=digests.md5_hex,
        last_modified=now(),
        content_type=attrs.content_type,
        metadata=attrs.metadata,
        headers=attrs.headers,
        checksums=checksums,
        chunks=refs,
        nodes=objects.holders_of(node, refs),
        tags=source.tags if request.tags is None else request.tags,  # x-amz-tagging-directive
    )
    try:
        await objects.commit_version(node, manifest, request.condition)
    except objects.VersionKept:
        raise  # the chunks are the current version's
    except Exception:
        await multipart.drop(node, [r.id for r in refs])
        raise
    return objects.info_of(manifest)


async def upload_part_copy(node: CacheNode, request: wire.UploadPartCopy) -> wire.PartInfo:
    """UploadPartCopy: part ``part_number`` of the upload is a copy of the source's bytes
    (``source.first..source.last``, or all of them). Replaces an earlier part of that number.

    Raises:
        NoSuchUpload, NoSuchBucket / NoSuchKey (source), InvalidArgument (part number),
        InvalidRange (``first`` or ``last`` beyond the source), InvalidRequest (over 5 GiB),
        PreconditionFailed, BadDigest, ServiceUnavailable.
    """
    multipart.check_part_number(request.part_number)
    upload = await multipart.require_upload(node, request.bucket, request.key, request.upload_id)
    source = await source_manifest(node, request.source)
    first, last = request.source.first, request.source.last
    if first is None or last is None:
        first, last = 0, source.size - 1
    elif last >= source.size or first > last:
        raise errors.InvalidRange(
            f"Range specified is not valid for source object of size: {source.size}",
            resource=f"{request.source.bucket}/{request.source.key}",
        )
    if last - first + 1 > MAX_COPY_BYTES:
        raise errors.InvalidRequest(
            f"The specified copy range is larger than {MAX_COPY_BYTES} bytes"
        )
    refs, digests, checksums = await _copy_chunks(
        node,
        source,
        first,
        last,
        bucket=request.bucket,
        key=request.key,
        prefix=new_id(),
        compute=upload.checksum_algorithm,
    )
    return await multipart.store_part(
        node, request.upload_id, request.part_number, refs, digests, checksums
    )
