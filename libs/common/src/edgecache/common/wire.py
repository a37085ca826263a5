"""Every type that crosses NATS or sits in JetStream, as msgspec Structs encoded as JSON.

Each type is tagged (``"type"`` field) with a versioned name, e.g. ``"putobject.v1"``.
Schema evolution: new fields get defaults and go last; a field is never retyped; an
incompatible change is a new tag (``.v2``) decoded beside the old one.

Units: sizes in bytes, times in seconds since the Unix epoch (float) unless the name says
``_ns``; byte ranges are inclusive (``first..last``); checksums are base64 as S3 sends
them (``checksums`` maps the algorithm in lower case — ``crc32``, ``crc32c``, ``crc64nvme``, ``sha1``,
``sha256`` — to its base64 value); ETags are hex without quotes.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar, get_args

import msgspec

__all__ = [
    "OPERATIONS",
    "REPLY_DECODER",
    "REQUESTS",
    "REQUEST_DECODER",
    "AbortMultipartUpload",
    "BucketCreated",
    "BucketDeleted",
    "BucketInfo",
    "BucketList",
    "BucketRecord",
    "ChunkGet",
    "ChunkPut",
    "ChunkRef",
    "ChunksReleased",
    "CompleteMultipartUpload",
    "CompletedPart",
    "CopyObject",
    "CopySource",
    "CreateBucket",
    "CreateMultipartUpload",
    "Credit",
    "DeleteBucket",
    "DeleteObject",
    "DeleteObjectTagging",
    "GetObjectTagging",
    "ObjectTagged",
    "PutObjectTagging",
    "Tagging",
    "End",
    "FileSpan",
    "Error",
    "Event",
    "GetObject",
    "HeadBucket",
    "HeadObject",
    "Heartbeat",
    "Invalidation",
    "Intent",
    "LeaseRelease",
    "ListBuckets",
    "ListObjects",
    "ListObjectsResult",
    "ListMultipartUploads",
    "ListMultipartUploadsResult",
    "ListParts",
    "ListPartsResult",
    "Manifest",
    "MultipartUpload",
    "NodeStats",
    "ObjectClean",
    "ObjectDeleted",
    "ObjectInfo",
    "ObjectSummary",
    "ObjectWritten",
    "Ok",
    "PartInfo",
    "PartRecord",
    "PlanPiece",
    "PutObject",
    "ReadPlan",
    "Reply",
    "Request",
    "SiteChange",
    "UploadPart",
    "UploadPartCopy",
    "UploadSummary",
    "WriteCondition",
    "UploadRecord",
    "decode",
    "encode",
]

T = TypeVar("T")

_OPTS = {"frozen": True, "kw_only": True, "tag_field": "type", "omit_defaults": True}


# == Requests: the public s3.* API ===========================================================
# The operation table. Each request type is one S3 operation: it is named after the S3
# action (``PutObject``), its ``operation`` ClassVar is its subject token (``s3.<operation>``,
# built by ``subjects.s3``) and its tag is ``<operation>.v<n>``. The ``Request`` union below
# lists them all; ``subjects.S3_OPERATIONS``, the client's subjects, the cache node's
# handlers and the gateway's routes are derived from it (tests/unit/test_operation_table.py).
class CreateBucket(msgspec.Struct, **_OPTS, tag="createbucket.v1"):
    """``s3.createbucket`` → :class:`Ok`. Errors: InvalidBucketName, BucketAlreadyOwnedByYou."""

    operation: ClassVar[str] = "createbucket"

    bucket: str


class DeleteBucket(msgspec.Struct, **_OPTS, tag="deletebucket.v1"):
    """``s3.deletebucket`` → :class:`Ok`. Errors: NoSuchBucket, BucketNotEmpty."""

    operation: ClassVar[str] = "deletebucket"

    bucket: str


class HeadBucket(msgspec.Struct, **_OPTS, tag="headbucket.v1"):
    """``s3.headbucket`` → :class:`BucketInfo`. Errors: NoSuchBucket."""

    operation: ClassVar[str] = "headbucket"

    bucket: str


class ListBuckets(msgspec.Struct, **_OPTS, tag="listbuckets.v1"):
    """``s3.listbuckets`` → :class:`BucketList`."""

    operation: ClassVar[str] = "listbuckets"


class PutObject(msgspec.Struct, **_OPTS, tag="putobject.v1"):
    """``s3.putobject``: an upload stream (see docs/protocol.md) → :class:`ObjectInfo`.

    ``size`` is the body length in bytes when known up front (``None``: unknown, the
    stream's ``End`` decides). ``content_md5`` is base64 as in the ``Content-MD5`` header.
    ``headers`` holds the other stored system headers (``Cache-Control``,
    ``Content-Disposition``, ``Content-Encoding``, ``Content-Language``, ``Expires``).
    Errors: NoSuchBucket, BadDigest, InvalidDigest, IncompleteBody.
    """

    operation: ClassVar[str] = "putobject"

    bucket: str
    key: str
    size: int | None = None
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    content_md5: str | None = None
    checksums: dict[str, str] = {}
    condition: WriteCondition | None = None  # If-Match / If-None-Match (conditional write)
    tags: dict[str, str] = {}  # x-amz-tagging, validated (see GetObjectTagging)


class GetObject(msgspec.Struct, **_OPTS, tag="getobject.v1"):
    """``s3.getobject``: a download stream → :class:`ObjectInfo`, frames, :class:`End`.

    ``range`` is the raw HTTP ``Range`` header (``bytes=first-last``, ``bytes=first-``,
    ``bytes=-suffix``); the reply's ``range_first``/``range_last`` say what is sent.
    ``local_host`` (opt-in short-circuit read): the requester's host id
    (:func:`edgecache.common.hostid.host_id`); a node on the same host holding every chunk
    of the range may answer :class:`ReadPlan` instead of the stream, and one that streams
    may send **file frames** (:class:`FileSpan`) for the bytes on its own disk, including
    those of a fill still landing.
    Errors: NoSuchBucket, NoSuchKey, InvalidRange.
    """

    operation: ClassVar[str] = "getobject"

    bucket: str
    key: str
    range: str | None = None
    local_host: str | None = None
    part_number: int | None = None  # GetObject ?partNumber=N: the bytes of part N (not with range)


class HeadObject(msgspec.Struct, **_OPTS, tag="headobject.v1"):
    """``s3.headobject`` → :class:`ObjectInfo`. Errors: NoSuchBucket, NoSuchKey, InvalidRange."""

    operation: ClassVar[str] = "headobject"

    bucket: str
    key: str
    range: str | None = None
    part_number: int | None = None  # as GetObject's


class DeleteObject(msgspec.Struct, **_OPTS, tag="deleteobject.v1"):
    """``s3.deleteobject`` → :class:`Ok` (also when the key did not exist). Errors: NoSuchBucket."""

    operation: ClassVar[str] = "deleteobject"

    bucket: str
    key: str


class ListObjects(msgspec.Struct, **_OPTS, tag="listobjects.v1"):
    """``s3.listobjects`` → :class:`ListObjectsResult`, keys in UTF-8 binary order.

    Serves both ListObjectsV2 (``continuation_token``, ``start_after``) and ListObjects v1
    (``marker``): the listing starts after ``max(start_after, marker, token)``.
    Errors: NoSuchBucket, InvalidArgument (bad token or max_keys).
    """

    operation: ClassVar[str] = "listobjects"

    bucket: str
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = 1000
    start_after: str = ""
    marker: str = ""
    continuation_token: str = ""


class CreateMultipartUpload(msgspec.Struct, **_OPTS, tag="multipart.init.v1"):
    """``s3.multipart.init`` → :class:`MultipartUpload`. Errors: NoSuchBucket."""

    operation: ClassVar[str] = "multipart.init"

    bucket: str
    key: str
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    checksum_algorithm: str = ""  # lower case (``crc32``…), "" for none
    checksum_type: str = ""  # "COMPOSITE" or "FULL_OBJECT" with an algorithm, else ""
    tags: dict[str, str] = {}  # x-amz-tagging: the object's tags once completed


class UploadPart(msgspec.Struct, **_OPTS, tag="multipart.upload.v1"):
    """``s3.multipart.upload``: an upload stream → :class:`PartInfo`.

    ``part_number`` is 1..10000. Errors: NoSuchUpload, InvalidArgument, BadDigest.
    """

    operation: ClassVar[str] = "multipart.upload"

    bucket: str
    key: str
    upload_id: str
    part_number: int
    size: int | None = None
    content_md5: str | None = None
    checksums: dict[str, str] = {}


class CompletedPart(msgspec.Struct, frozen=True, kw_only=True):
    part_number: int
    etag: str  # hex, quotes stripped
    checksums: dict[str, str] = {}  # ChecksumCRC32… of the request's <Part>, by algorithm


class CompleteMultipartUpload(msgspec.Struct, **_OPTS, tag="multipart.complete.v1"):
    """``s3.multipart.complete`` → :class:`ObjectInfo` (ETag ``md5(part md5s)-N``).

    Errors: NoSuchUpload, InvalidPart, InvalidPartOrder, EntityTooSmall (a part other than
    the last under 5 MiB), MalformedXML (no parts).
    """

    operation: ClassVar[str] = "multipart.complete"

    bucket: str
    key: str
    upload_id: str
    parts: list[CompletedPart]
    condition: WriteCondition | None = None  # If-Match / If-None-Match (conditional write)
    # the whole object's x-amz-checksum-<alg> header, if sent (checked: BadDigest)
    checksums: dict[str, str] = {}


class AbortMultipartUpload(msgspec.Struct, **_OPTS, tag="multipart.abort.v1"):
    """``s3.multipart.abort`` → :class:`Ok`. Errors: NoSuchUpload."""

    operation: ClassVar[str] = "multipart.abort"

    bucket: str
    key: str
    upload_id: str


class ListParts(msgspec.Struct, **_OPTS, tag="multipart.listparts.v1"):
    """``s3.multipart.listparts`` → :class:`ListPartsResult`. Errors: NoSuchUpload."""

    operation: ClassVar[str] = "multipart.listparts"

    bucket: str
    key: str
    upload_id: str
    max_parts: int = 1000
    part_number_marker: int = 0


class WriteCondition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A conditional write (``If-Match`` / ``If-None-Match: *`` on PutObject,
    CompleteMultipartUpload, CopyObject): checked against the key's current manifest and
    committed by compare-and-set on its KV revision (``Catalog.commit_if``).

    ``if_match``: the ETag (hex, unquoted) the current version must have (else 412
    PreconditionFailed; no object: 404 NoSuchKey). ``if_none_match``: the key must hold no
    object (else 412). A concurrent change of the key between the check and the commit:
    409 ConditionalRequestConflict.
    """

    if_match: str | None = None
    if_none_match: bool = False


class CopySource(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The source of CopyObject / UploadPartCopy (``x-amz-copy-source``), and the
    ``x-amz-copy-source-if-*`` preconditions on it. ``etag`` (hex, unquoted): the source's
    ETag when the gateway checked the preconditions; the node refuses (412
    PreconditionFailed) a source whose ETag changed since. ``first``/``last``: the inclusive
    byte range to copy (``x-amz-copy-source-range``; ``None``: the whole object)."""

    bucket: str
    key: str
    etag: str | None = None
    first: int | None = None
    last: int | None = None


class CopyObject(msgspec.Struct, **_OPTS, tag="copyobject.v1"):
    """``s3.copyobject`` → :class:`ObjectInfo` of the new version (``bucket/key``).

    The node copies the source's bytes into new chunks of its own (read through its normal
    read path, never through the gateway): the copy is a new dirty version with its own
    write-back intent, independent of the source's chunks. ``replace_metadata``
    (``x-amz-metadata-directive: REPLACE``): store ``content_type``, ``metadata`` and
    ``headers``; otherwise the source's are kept.
    Errors: NoSuchBucket, NoSuchKey (source), PreconditionFailed, InvalidRequest (source over
    5 GiB), ConditionalRequestConflict.
    """

    operation: ClassVar[str] = "copyobject"

    bucket: str
    key: str
    source: CopySource
    replace_metadata: bool = False
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    condition: WriteCondition | None = None
    # x-amz-tagging-directive REPLACE: these tags (x-amz-tagging); None (COPY): the source's
    tags: dict[str, str] | None = None


class UploadPartCopy(msgspec.Struct, **_OPTS, tag="multipart.copy.v1"):
    """``s3.multipart.copy`` → :class:`PartInfo`: part ``part_number`` of the upload is a
    copy of the source (or of its bytes ``source.first..source.last``), made node-locally.
    Errors: NoSuchUpload, NoSuchKey / NoSuchBucket (source), InvalidRange (range beyond the
    source), InvalidRequest (a part over 5 GiB), PreconditionFailed.
    """

    operation: ClassVar[str] = "multipart.copy"

    bucket: str
    key: str
    upload_id: str
    part_number: int
    source: CopySource


class ListMultipartUploads(msgspec.Struct, **_OPTS, tag="multipart.listuploads.v1"):
    """``s3.multipart.listuploads`` → :class:`ListMultipartUploadsResult`: uploads in
    progress in ``bucket``, by key (UTF-8 binary order) then initiation time, after
    (``key_marker``, ``upload_id_marker``). Errors: NoSuchBucket."""

    operation: ClassVar[str] = "multipart.listuploads"

    bucket: str
    prefix: str = ""
    delimiter: str = ""
    key_marker: str = ""
    upload_id_marker: str = ""
    max_uploads: int = 1000


class PutObjectTagging(msgspec.Struct, **_OPTS, tag="objecttagging.put.v1"):
    """``s3.objecttagging.put`` → :class:`Ok`: the tags of ``bucket/key`` become ``tags``
    (already validated: at most 10, keys 1-128 and values 0-256 characters). A change of
    the object that readers see (invalidated) and a write-back intent of its own.
    Errors: NoSuchBucket, NoSuchKey."""

    operation: ClassVar[str] = "objecttagging.put"

    bucket: str
    key: str
    tags: dict[str, str] = {}


class GetObjectTagging(msgspec.Struct, **_OPTS, tag="objecttagging.get.v1"):
    """``s3.objecttagging.get`` → :class:`Tagging` (empty for an untagged object).
    Errors: NoSuchBucket, NoSuchKey."""

    operation: ClassVar[str] = "objecttagging.get"

    bucket: str
    key: str


class DeleteObjectTagging(msgspec.Struct, **_OPTS, tag="objecttagging.delete.v1"):
    """``s3.objecttagging.delete`` → :class:`Ok`: as PutObjectTagging with no tags.
    Errors: NoSuchBucket, NoSuchKey."""

    operation: ClassVar[str] = "objecttagging.delete"

    bucket: str
    key: str


Request = (
    CreateBucket
    | DeleteBucket
    | HeadBucket
    | ListBuckets
    | PutObject
    | GetObject
    | HeadObject
    | DeleteObject
    | ListObjects
    | CreateMultipartUpload
    | UploadPart
    | CompleteMultipartUpload
    | AbortMultipartUpload
    | ListParts
    | CopyObject
    | UploadPartCopy
    | ListMultipartUploads
    | PutObjectTagging
    | GetObjectTagging
    | DeleteObjectTagging
)

#: Every request type, in the order of the ``Request`` union.
REQUESTS: tuple[type[Request], ...] = get_args(Request)
#: Request type by operation name (``"multipart.init"`` → :class:`CreateMultipartUpload`).
OPERATIONS: dict[str, type[Request]] = {t.operation: t for t in REQUESTS}


# == Replies ==================================================================================
class Ok(msgspec.Struct, **_OPTS, tag="ok.v1"):
    """Success with nothing to say."""


class Error(msgspec.Struct, **_OPTS, tag="error.v1"):
    """An S3 error: ``code`` is the S3 error code (``errors.from_code`` rebuilds it)."""

    code: str
    message: str = ""
    resource: str = ""
    retry_after_s: int | None = None


class BucketInfo(msgspec.Struct, **_OPTS, tag="bucket.v1"):
    name: str
    created: float  # s since epoch


class BucketList(msgspec.Struct, **_OPTS, tag="bucketlist.v1"):
    buckets: list[BucketInfo]


class ObjectInfo(msgspec.Struct, **_OPTS, tag="object.v1"):
    """An object's metadata; on GET also what part of it follows (``range_*`` inclusive)."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    checksums: dict[str, str] = {}
    parts_count: int | None = None
    range_first: int | None = None
    range_last: int | None = None
    tag_count: int = 0  # how many tags the object has (x-amz-tagging-count)


class ObjectSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    key: str
    size: int
    etag: str
    last_modified: float


class ListObjectsResult(msgspec.Struct, **_OPTS, tag="listobjects.result.v1"):
    """A page of a listing. ``next_token`` is opaque; pass it back as ``continuation_token``."""

    contents: list[ObjectSummary]
    common_prefixes: list[str] = []
    is_truncated: bool = False
    next_token: str = ""
    next_marker: str = ""


class MultipartUpload(msgspec.Struct, **_OPTS, tag="multipart.upload.info.v1"):
    bucket: str
    key: str
    upload_id: str


class PartInfo(msgspec.Struct, **_OPTS, tag="part.v1"):
    part_number: int
    etag: str
    size: int
    last_modified: float
    checksums: dict[str, str] = {}


class ListPartsResult(msgspec.Struct, **_OPTS, tag="listparts.result.v1"):
    bucket: str
    key: str
    upload_id: str
    parts: list[PartInfo]
    is_truncated: bool = False
    next_part_number_marker: int = 0


class UploadSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    key: str
    upload_id: str
    initiated: float  # s since epoch


class ListMultipartUploadsResult(msgspec.Struct, **_OPTS, tag="listuploads.result.v1"):
    """A page of ListMultipartUploads; resume with ``next_key_marker`` and
    ``next_upload_id_marker`` when ``is_truncated``."""

    uploads: list[UploadSummary]
    common_prefixes: list[str] = []
    is_truncated: bool = False
    next_key_marker: str = ""
    next_upload_id_marker: str = ""


class Tagging(msgspec.Struct, **_OPTS, tag="tagging.v1"):
    """The tags of an object (GetObjectTagging), in the order they were set."""

    tags: dict[str, str] = {}


# == Stream control (docs/protocol.md) ========================================================
class Credit(msgspec.Struct, **_OPTS, tag="credit.v1"):
    """The receiver of a stream allows ``frames`` more data frames.

    The first credit of an upload also names ``subject``, where frames and ``End`` go.
    """

    frames: int
    subject: str = ""


class End(msgspec.Struct, **_OPTS, tag="end.v1"):
    """End of a byte stream: ``frames`` data frames, ``size`` bytes, CRC-32 (zlib) of them all.

    ``checksums`` carries trailing checksums (``x-amz-checksum-*`` trailers) on uploads.
    """

    frames: int
    size: int
    crc32: int
    checksums: dict[str, str] = {}


class PlanPiece(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk file of a :class:`ReadPlan` and the part of it to send.

    ``paths``: absolute paths where the chunk file may be, in order (the first that
    exists; a chunk marked clean meanwhile moves to the second). The file is a chunk file
    (:mod:`edgecache.common.chunkfile`) whose payload is ``chunk_size`` bytes; send payload
    bytes ``offset`` .. ``offset + length - 1``.
    """

    chunk_id: str
    paths: list[str]
    chunk_size: int
    offset: int
    length: int


class ReadPlan(msgspec.Struct, **_OPTS, tag="readplan.v1"):
    """``s3.getobject`` with ``local_host``, answered by a node on the requester's host: the
    bytes of ``info``'s range (the whole object when ``range_first`` is ``None``) are the
    ``pieces``, in order, read from the node's chunk files, verified (trailer CRC32C) by the
    reader. The chunks are pinned against eviction until ``lease_id`` is released (a
    :class:`LeaseRelease` published to ``release_subject``) or ``lease_s`` seconds pass.
    No stream follows; to get the bytes streamed instead, ask again without ``local_host``.
    """

    info: ObjectInfo
    pieces: list[PlanPiece]
    lease_id: str
    lease_s: float
    release_subject: str


class FileSpan(msgspec.Struct, **_OPTS, tag="filespan.v1"):
    """The body of a **file frame** (a stream frame with header ``Ec-File``), sent only to a
    requester on the node's host (``GetObject.local_host``): the next ``length`` bytes of
    the stream are payload bytes ``offset`` .. ``offset + length - 1`` of chunk
    ``chunk_id``, in the first of ``paths`` that exists.

    ``committed``: the file is a chunk file (:mod:`edgecache.common.chunkfile`) of
    ``chunk_size`` payload bytes; read it whole and verify its trailer CRC32C before sending
    any byte of it. Otherwise the bytes are a fill's, landed in its temp file (``paths[0]``,
    payload from offset 0, no trailer yet; ``paths[1]`` is where the commit renames it):
    read them as they are. Every chunk a stream names is pinned against eviction under one
    lease, ``lease_id``, renewed for the node's ``cachenode.lease_s`` at each file frame;
    release it (:class:`LeaseRelease` to ``release_subject``) when the stream is read or
    given up. A file frame counts as one frame of credit and ``length`` bytes of the
    ``End``'s size; the ``End``'s CRC-32 covers the bytes sent in frames only.
    """

    chunk_id: str
    paths: list[str]
    offset: int
    length: int
    chunk_size: int
    committed: bool
    lease_id: str
    release_subject: str


class LeaseRelease(msgspec.Struct, **_OPTS, tag="lease.release.v1"):
    """Published (no reply) to a :class:`ReadPlan`'s ``release_subject``: the reader is done
    with the plan's files."""

    lease_id: str


class SiteHeartbeatAck(msgspec.Struct, **_OPTS, tag="site.heartbeat.ack.v1"):
    """The hub federator's answer to a site's :class:`SiteHeartbeat` (federation; replies
    are decoded as one union, so it is defined here). ``relink``: the hub knows the link
    broke (its own server restarted) although the site may not: the site restarts its
    ``FEDERATION`` source of the hub at once."""

    relink: bool = False


__all__ += ["SiteHeartbeatAck"]  # noqa: PLE0605 - appended with its block

Reply = (
    Ok
    | Error
    | BucketInfo
    | BucketList
    | ObjectInfo
    | ListObjectsResult
    | MultipartUpload
    | PartInfo
    | ListPartsResult
    | Credit
    | End
    | ReadPlan
    | ListMultipartUploadsResult
    | Tagging
    | SiteHeartbeatAck
)


# == Internal: chunk transfer =================================================================
class ChunkGet(msgspec.Struct, **_OPTS, tag="chunk.get.v1"):
    """``edgecache.chunk.<node>.get``: a download stream of bytes ``first..last`` (inclusive)
    of one chunk (``last`` ``None``: to its end) → ``Ok``, frames, ``End``. Errors: NoSuchKey.

    With ``bucket``/``key``/``version``/``index`` set, the asked node is the object's owner:
    if it lacks the chunk it fills it from the origin (and starts filling the ``prefetch``
    chunks after it), streaming bytes as they arrive.
    """

    chunk_id: str
    first: int = 0
    last: int | None = None
    bucket: str = ""
    key: str = ""
    version: str = ""
    index: int = -1
    prefetch: int = 0


class ChunkPut(msgspec.Struct, **_OPTS, tag="chunk.put.v1"):
    """``edgecache.chunk.<node>.put``: an upload stream of one dirty chunk of ``size`` bytes
    that the receiving node keeps (pinned) as a replica → ``Ok``."""

    chunk_id: str
    size: int


# == State in JetStream =======================================================================
class ChunkRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One chunk of an object. ``nodes``: the cache nodes holding it, when they differ from
    the manifest's (multipart parts may land on different nodes); empty: ``Manifest.nodes``."""

    id: str
    size: int  # bytes
    nodes: list[str] = []


class Manifest(msgspec.Struct, **_OPTS, tag="manifest.v1"):
    """KV ``objects``: the current version of one object, or a tombstone (``deleted``).

    ``state`` is ``dirty`` until the writeback service has put this version in the origin.
    ``chunks`` are in order; their sizes add up to ``size``. ``nodes`` hold every chunk.
    """

    bucket: str
    key: str
    version: str
    size: int
    etag: str
    last_modified: float
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    checksums: dict[str, str] = {}
    parts_count: int | None = None
    chunks: list[ChunkRef] = []
    nodes: list[str] = []
    state: Literal["dirty", "clean"] = "dirty"
    deleted: bool = False
    origin_etag: str = ""
    validated_at: float = 0.0  # s since epoch, last time the origin confirmed this version
    part_sizes: list[int] = []  # bytes of each part of a multipart version, in order (partNumber reads)
    # federation (docs/architecture.md, Federation): the version's hybrid logical clock (ns)
    # and the site that wrote it; the larger (hlc, site) wins. 0/"": not federated. A
    # manifest whose ``site`` is another site's is a *remote record*: no chunks here while
    # it is dirty (read it at ``site``), refilled from the origin once clean.
    hlc: int = 0
    site: str = ""
    tags: dict[str, str] = {}  # the object's tags (S3 object tagging), in the order set
    # ``dirty``: ``tags`` changed after this version reached the origin and an ObjectTagged
    # intent is taking them there (the manifest is then kept: no TTL, dirty-marked)
    tags_state: Literal["dirty", "clean"] = "clean"
    # federation: the stamp of the last tag change of this version, ordered like versions
    # by (tags_hlc, tags_site); 0/"": the tags came with the version (its hlc, site)
    tags_hlc: int = 0
    tags_site: str = ""


class BucketRecord(msgspec.Struct, **_OPTS, tag="bucketrecord.v1"):
    """KV ``buckets``. ``deleted``: a tombstone kept until the writeback service has deleted
    the bucket in the origin, so the origin's copy is not adopted back meanwhile."""

    name: str
    created: float
    deleted: bool = False
    # federation: the (hlc, site) stamp of the creation or deletion this record holds,
    # ordered as versions are (a later creation replaces an earlier deletion, and the
    # reverse); 0/"": not federated, or adopted from the origin
    hlc: int = 0
    site: str = ""


class UploadRecord(msgspec.Struct, **_OPTS, tag="uploadrecord.v1"):
    """KV ``uploads``: one multipart upload in progress."""

    bucket: str
    key: str
    upload_id: str
    initiated: float
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    checksum_algorithm: str = ""  # as CreateMultipartUpload.checksum_algorithm
    checksum_type: str = ""  # as CreateMultipartUpload.checksum_type
    tags: dict[str, str] = {}  # as CreateMultipartUpload.tags


class PartRecord(msgspec.Struct, **_OPTS, tag="partrecord.v1"):
    """KV ``uploads``: one uploaded part (the last upload of a part number wins)."""

    part_number: int
    etag: str
    size: int
    last_modified: float
    chunks: list[ChunkRef]
    nodes: list[str]
    md5: str  # hex of the part's MD5, for the multipart ETag
    checksums: dict[str, str] = {}


# == Events and intents =======================================================================
class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of everything published as an event or appended to ``WRITEBACK``.

    ``id`` is also sent as ``Nats-Msg-Id`` so JetStream de-duplicates re-publishes.
    """

    id: str
    at_ns: int  # send time, ns since the Unix epoch


class ObjectWritten(Event, tag="object.written.v1"):
    """A put (or completed multipart upload) of ``version`` was acknowledged.
    Produced by cachenode on ``WRITEBACK``; consumed by writeback."""

    bucket: str
    key: str
    version: str


class ObjectDeleted(Event, tag="object.deleted.v1"):
    """A delete was acknowledged; ``version`` is the tombstone's. cachenode → writeback."""

    bucket: str
    key: str
    version: str


class BucketCreated(Event, tag="bucket.created.v1"):
    """cachenode → writeback: create the bucket in the origin."""

    bucket: str


class BucketDeleted(Event, tag="bucket.deleted.v1"):
    """cachenode → writeback: delete the (empty) bucket in the origin."""

    bucket: str


class ObjectTagged(Event, tag="object.tagged.v1"):
    """cachenode → writeback: the tags of ``version`` (already in the origin) changed; put
    the manifest's current tags on the origin's object. ``id`` is new for each change."""

    bucket: str
    key: str
    version: str


Intent = ObjectWritten | ObjectDeleted | BucketCreated | BucketDeleted | ObjectTagged


class ObjectClean(Event, tag="object.clean.v1"):
    """writeback → everyone (``edgecache.events.object.clean``): ``version`` is in the origin
    (or, if ``deleted``, gone from it); its chunks may now be evicted."""

    bucket: str
    key: str
    version: str
    deleted: bool = False
    origin_etag: str = ""


class Invalidation(Event, tag="invalidation.v1"):
    """cachenode → every gateway (``edgecache.events.invalidate``): what ``bucket/key`` holds
    changed (a new version, a delete, a change found in the origin); ``key`` ``None``: the
    whole bucket (it was deleted). Published before the change is acknowledged.

    ``publisher`` (an id the publisher draws at start), ``publisher_started_ns`` and ``seq``
    (1, 2, 3, … per publisher) let a subscriber prove it missed none of a publisher's
    events; one that cannot must drop everything it caches.
    """

    bucket: str
    key: str | None
    publisher: str
    publisher_started_ns: int
    seq: int
    version: str = ""  # the new version; "" for a delete


class SiteChange(Event, tag="site.change.v1"):
    """A site's catalog → every other site (JetStream, ``edgecache.fed.changes.<site>``): the
    current version of ``bucket/key`` at ``site`` changed (``key`` ``None``: the bucket was
    deleted). Appended with a JetStream acknowledgement before the change is acknowledged,
    so it survives a broken hub link and is replayed when the link returns.

    ``hlc`` (hybrid logical clock, ns) and ``site`` order concurrent writes of one key:
    the larger ``(hlc, site)`` wins everywhere (docs/architecture.md, Federation).
    ``state`` ``dirty``: only ``site`` holds the bytes (read them there);
    ``clean``: the version is in the origin.

    ``kind`` ``tags``: ``site`` changed the tags of ``version`` (whichever site wrote the
    version: ``manifest.site``); ``(hlc, site)`` is then the tag stamp, which orders the tag
    changes of one version the same way, and ``manifest`` is the version's record with its
    new tags.
    """

    site: str
    bucket: str
    key: str | None
    version: str = ""  # "" for a delete
    hlc: int = 0
    state: Literal["dirty", "clean"] = "dirty"
    deleted: bool = False
    size: int = 0
    etag: str = ""
    # the version's manifest as the writing site holds it, without ``chunks`` and ``nodes``
    # (its metadata, for HEAD, listings and the refill from the origin); ``None`` for a
    # delete or a bucket deletion
    manifest: Manifest | None = None
    # ``version``: the version itself changed (new, clean, deleted); ``tags``: only the tags
    # of ``version`` changed at ``site`` — ``hlc`` is then the tag stamp
    # (``Manifest.tags_hlc``) and ``manifest`` holds the new tags
    kind: Literal["version", "tags"] = "version"


class ChunksReleased(Event, tag="chunks.released.v1"):
    """cachenode → every node (``edgecache.events.chunks.released``): these chunks belong to
    no version that still needs them pinned (superseded, deleted, aborted or failed
    uploads); whoever holds them may evict them."""

    chunk_ids: list[str]


class NodeStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one cache node since it started (bytes, counts)."""

    capacity_bytes: int = 0
    used_bytes: int = 0
    dirty_bytes: int = 0
    chunks: int = 0
    hits: int = 0
    misses: int = 0
    fills: int = 0
    fill_bytes: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0


class Heartbeat(Event, tag="heartbeat.v1"):
    """cachenode → federator, every ``heartbeat_s``; kept in KV ``nodes`` with a TTL."""

    node_id: str
    host: str
    started: float
    stats: NodeStats


REQUEST_DECODER: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)
REPLY_DECODER: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)
_ENCODER = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    """JSON bytes of any wire type."""
    return _ENCODER.encode(value)


def decode(data: bytes, type_: type[T]) -> T:
    """Decode ``data`` as ``type_``; raises ``msgspec.ValidationError``/``DecodeError``."""
    return msgspec.json.decode(data, type=type_)


# == Admin: the admin API (federator) asks the cache nodes (docs/operations.md) ==============
__all__ += [  # noqa: PLE0605 - appended here so the admin types stay in one block
    "ChunksPurged",
    "ListUploads",
    "PurgeObject",
    "PurgeResult",
    "UploadList",
    "WarmObject",
    "WarmResult",
]


class PurgeObject(msgspec.Struct, **_OPTS, tag="admin.purge.v1"):
    """``edgecache.admin.purge`` → :class:`PurgeResult`: drop the cached copies of
    ``bucket/key`` if it is clean, so the next GET fills from the origin.
    Errors: InvalidRequest (a malformed request)."""

    bucket: str
    key: str


class PurgeResult(msgspec.Struct, **_OPTS, tag="admin.purge.result.v1"):
    """What a purge did. ``outcome``: ``purged`` (the manifest was removed, every memory tier
    invalidated and every node told to delete the chunks), ``dirty`` (not yet written back:
    kept, reported as skipped), ``absent`` (nothing cached). ``size``: the object's bytes."""

    bucket: str
    key: str
    outcome: Literal["purged", "dirty", "absent"]
    size: int = 0
    chunks: int = 0


class WarmObject(msgspec.Struct, **_OPTS, tag="admin.warm.v1"):
    """``edgecache.admin.warm`` → :class:`WarmResult`: fill every chunk of ``bucket/key``
    into the cache (from the origin where no node holds it), sending no byte back.
    Errors: NoSuchBucket, NoSuchKey, ServiceUnavailable (the origin failed)."""

    bucket: str
    key: str


class WarmResult(msgspec.Struct, **_OPTS, tag="admin.warm.result.v1"):
    """What a warm did: ``size`` bytes in ``chunks`` chunks, of which ``fetched`` were not on
    the node that answered (filled from the origin now, or read from the peer holding them)."""

    bucket: str
    key: str
    size: int
    chunks: int
    fetched: int


class ListUploads(msgspec.Struct, **_OPTS, tag="admin.uploads.v1"):
    """``edgecache.admin.uploads`` → :class:`UploadList`: multipart uploads in progress (KV
    ``uploads``), of ``bucket`` or of every bucket (``""``), at most ``limit``."""

    bucket: str = ""
    limit: int = 1000


class UploadList(msgspec.Struct, **_OPTS, tag="admin.uploads.result.v1"):
    """Multipart uploads in progress, oldest first; ``is_truncated``: more than ``limit``."""

    uploads: list[UploadRecord]
    is_truncated: bool = False


class ChunksPurged(Event, tag="chunks.purged.v1"):
    """cachenode → every node (``edgecache.events.chunks.purged``): these chunks belong to a
    clean version that was purged; whoever holds them clean deletes them now (a dirty copy
    is kept)."""

    chunk_ids: list[str]


# == Federation: sites and the hub (docs/operations.md, "Two sites and a hub") ==============
__all__ += ["SiteHeartbeat", "SiteStatus"]  # noqa: PLE0605 - appended with their block


class SiteHeartbeat(Event, tag="site.heartbeat.v1"):
    """A site's federator → the hub federator (``edgecache.fed.heartbeat.<site>``, a request
    answered with :class:`SiteHeartbeatAck`), every ``federator.site_heartbeat_s``; kept in the hub's KV ``sites``
    with a TTL. The first one makes the hub source the site's ``CHANGES``.

    ``backlog``: other sites' changes in this site's ``FEDERATION`` not yet applied here
    (its apply consumer's pending and unacknowledged messages); ``lag``: messages its
    ``FEDERATION`` lags behind the hub's (-1: unknown)."""

    site: str
    nodes: list[Heartbeat] = []
    backlog: int = 0
    lag: int = 0
    applied: int = 0  # other sites' changes applied since the federator started
    failed_applies: int = 0  # FED_APPLY requests that got no answer or an error, retried
    # the hub did not answer since the site's last answered heartbeat: the link broke and
    # is back, so the sources across it are restarted at once, not once they look stalled
    relinked: bool = False


class SiteStatus(msgspec.Struct, **_OPTS, tag="site.status.v1"):
    """The hub federator's answer to ``edgecache.fed.status``: the last heartbeat of every
    site in KV ``sites`` (live sites only), by name."""

    sites: list[SiteHeartbeat]
