"""S3 XML bodies: responses built with ``xml.etree.ElementTree``, requests parsed with
``defusedxml`` only (they are untrusted: no DTDs, no entities, no external references).

Every builder returns UTF-8 bytes with an XML declaration; elements are in the S3
namespace ``http://s3.amazonaws.com/doc/2006-03-01/`` except ``<Error>``, which S3 sends
without one. Timestamps are ISO 8601 with milliseconds; ETags are quoted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from urllib.parse import quote_plus

import defusedxml
import defusedxml.ElementTree as SafeET

from edgecache.common import errors, wire
from edgecache.common.checksums import checksum_type_of
from edgecache.gateway.headers import iso8601, parse_decimal

__all__ = [
    "NS",
    "access_control_policy",
    "complete_multipart_result",
    "copy_object_result",
    "copy_part_result",
    "delete_result",
    "error",
    "get_object_attributes_result",
    "initiate_multipart_result",
    "list_buckets_result",
    "list_multipart_uploads_result",
    "list_objects_result",
    "list_objects_v2_result",
    "list_object_versions_result",
    "list_parts_result",
    "location_constraint",
    "parse_complete_multipart",
    "parse_create_bucket",
    "parse_delete",
    "post_response",
]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_PARTS = 10000
MAX_ETAG_CHARS = 64  # a part's ETag is 32 hex digits (MD5)
MAX_DELETE_KEYS = 1000
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_CHECKSUM_ELEMENTS = {
    "crc32": "ChecksumCRC32",
    "crc32c": "ChecksumCRC32C",
    "crc64nvme": "ChecksumCRC64NVME",
    "sha1": "ChecksumSHA1",
    "sha256": "ChecksumSHA256",
}


# == building ==================================================================================
def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def _add(parent: ET.Element, tag: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    return child


def _bytes(root: ET.Element) -> bytes:
    # ElementTree writes a carriage return as is, and every XML parser reads it as a line
    # feed: as a character reference it survives (S3 does the same). The builders write no
    # carriage return of their own, so every one is a name's.
    return _DECLARATION + ET.tostring(root, encoding="utf-8").replace(b"\r", b"&#13;")


def _checksums(parent: ET.Element, checksums: dict[str, str]) -> None:
    for algorithm, value in checksums.items():
        tag = _CHECKSUM_ELEMENTS.get(algorithm)
        if tag is not None:
            _add(parent, tag, value)


_CHECKSUM_ALGORITHMS = {tag: algorithm for algorithm, tag in _CHECKSUM_ELEMENTS.items()}


def error(code: str, message: str, resource: str, request_id: str) -> bytes:
    """``<Error><Code/><Message/><Resource/><RequestId/></Error>``."""
    root = ET.Element("Error")
    _add(root, "Code", code)
    _add(root, "Message", message)
    _add(root, "Resource", resource)
    _add(root, "RequestId", request_id)
    return _bytes(root)


def list_buckets_result(
    buckets: Iterable[wire.BucketInfo],
    *,
    owner: str,
    region: str = "",
    continuation_token: str = "",
    prefix: str | None = None,
) -> bytes:
    """ListBuckets: ``<ListAllMyBucketsResult>`` with ``Owner`` and one ``Bucket`` each
    (with ``BucketRegion`` when ``region`` is given); ``ContinuationToken`` when the page is
    truncated, ``Prefix`` when the request had one."""
    root = _root("ListAllMyBucketsResult")
    who = _add(root, "Owner")
    _add(who, "ID", owner)
    _add(who, "DisplayName", owner)
    parent = _add(root, "Buckets")
    for bucket in buckets:
        entry = _add(parent, "Bucket")
        _add(entry, "Name", bucket.name)
        _add(entry, "CreationDate", iso8601(bucket.created))
        if region:
            _add(entry, "BucketRegion", region)
    if continuation_token:
        _add(root, "ContinuationToken", continuation_token)
    if prefix is not None:
        _add(root, "Prefix", prefix)
    return _bytes(root)


def location_constraint(region: str) -> bytes:
    """GetBucketLocation: empty for ``us-east-1``, else the region."""
    root = _root("LocationConstraint")
    if region != "us-east-1":
        root.text = region
    return _bytes(root)


def access_control_policy(owner: str) -> bytes:
    """GetBucketAcl / GetObjectAcl of the canned ACL ``private``: ``<AccessControlPolicy>``
    with the owner and one grant, the owner's ``FULL_CONTROL``."""
    root = _root("AccessControlPolicy")
    who = _add(root, "Owner")
    _add(who, "ID", owner)
    _add(who, "DisplayName", owner)
    grant = _add(_add(root, "AccessControlList"), "Grant")
    grantee = ET.SubElement(grant, "Grantee", {"xmlns:xsi": _XSI, "xsi:type": "CanonicalUser"})
    _add(grantee, "ID", owner)
    _add(grantee, "DisplayName", owner)
    _add(grant, "Permission", "FULL_CONTROL")
    return _bytes(root)


def _encoder(url: bool) -> Callable[[str], str]:
    """``encoding-type=url``: S3 form-encodes names (space → ``+``), keeping ``/``."""
    if url:
        return lambda s: quote_plus(s, safe="/")
    return str


def _listing(
    root: ET.Element,
    result: wire.ListObjectsResult,
    enc: Callable[[str], str],
    *,
    owner: str | None,
) -> None:
    for item in result.contents:
        entry = _add(root, "Contents")
        _add(entry, "Key", enc(item.key))
        _add(entry, "LastModified", iso8601(item.last_modified))
        _add(entry, "ETag", f'"{item.etag}"')
        _add(entry, "Size", item.size)
        if owner is not None:
            who = _add(entry, "Owner")
            _add(who, "ID", owner)
            _add(who, "DisplayName", owner)
        _add(entry, "StorageClass", "STANDARD")
    for prefix in result.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", enc(prefix))


def list_objects_v2_result(
    result: wire.ListObjectsResult,
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    start_after: str,
    continuation_token: str,
    encoding_url: bool,
    owner: str | None = None,
) -> bytes:
    """ListObjectsV2: ``<ListBucketResult>`` with ``KeyCount`` and continuation tokens.

    With ``encoding_url``, ``Key``, ``Prefix``, ``Delimiter``, ``StartAfter`` and
    ``CommonPrefixes/Prefix`` are URL-encoded and ``EncodingType`` is ``url``. ``owner``
    (``fetch-owner=true``) adds ``Owner`` to each entry.
    """
    enc = _encoder(encoding_url)
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", enc(prefix))
    if delimiter:
        _add(root, "Delimiter", enc(delimiter))
    _add(root, "MaxKeys", max_keys)
    if encoding_url:
        _add(root, "EncodingType", "url")
    _add(root, "KeyCount", len(result.contents) + len(result.common_prefixes))
    _add(root, "IsTruncated", result.is_truncated)
    if continuation_token:
        _add(root, "ContinuationToken", continuation_token)
    if result.is_truncated and result.next_token:
        _add(root, "NextContinuationToken", result.next_token)
    if start_after:
        _add(root, "StartAfter", enc(start_after))
    _listing(root, result, enc, owner=owner)
    return _bytes(root)


def list_objects_result(
    result: wire.ListObjectsResult,
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    marker: str,
    encoding_url: bool,
    owner: str | None = None,
) -> bytes:
    """ListObjects (v1): ``<ListBucketResult>`` with ``Marker`` and, when truncated with a
    delimiter, ``NextMarker`` (the node's, else the last key or common prefix)."""
    enc = _encoder(encoding_url)
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", enc(prefix))
    _add(root, "Marker", enc(marker))
    if delimiter:
        _add(root, "Delimiter", enc(delimiter))
    _add(root, "MaxKeys", max_keys)
    if encoding_url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", result.is_truncated)
    if result.is_truncated and delimiter:
        last = [c.key for c in result.contents[-1:]] + result.common_prefixes[-1:]
        next_marker = result.next_marker or max(last, default="")
        if next_marker:
            _add(root, "NextMarker", enc(next_marker))
    _listing(root, result, enc, owner=owner)
    return _bytes(root)


def initiate_multipart_result(upload: wire.MultipartUpload) -> bytes:
    """CreateMultipartUpload: ``<InitiateMultipartUploadResult>``."""
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", upload.bucket)
    _add(root, "Key", upload.key)
    _add(root, "UploadId", upload.upload_id)
    return _bytes(root)


def complete_multipart_result(info: wire.ObjectInfo, *, location: str) -> bytes:
    """CompleteMultipartUpload: ``<CompleteMultipartUploadResult>`` (Location, Bucket, Key,
    ETag, the object's checksum and ``ChecksumType``)."""
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", info.bucket)
    _add(root, "Key", info.key)
    _add(root, "ETag", f'"{info.etag}"')
    _checksums(root, info.checksums)
    if info.checksums:
        _add(root, "ChecksumType", checksum_type_of(next(iter(info.checksums.values()))))
    return _bytes(root)


def post_response(info: wire.ObjectInfo, *, location: str) -> bytes:
    """PostObject with ``success_action_status=201``: ``<PostResponse>`` (Location, Bucket,
    Key, ETag); S3 sends it without a namespace."""
    root = ET.Element("PostResponse")
    _add(root, "Location", location)
    _add(root, "Bucket", info.bucket)
    _add(root, "Key", info.key)
    _add(root, "ETag", f'"{info.etag}"')
    return _bytes(root)


def list_parts_result(
    result: wire.ListPartsResult, *, max_parts: int, part_number_marker: int
) -> bytes:
    """ListParts: ``<ListPartsResult>``."""
    root = _root("ListPartsResult")
    _add(root, "Bucket", result.bucket)
    _add(root, "Key", result.key)
    _add(root, "UploadId", result.upload_id)
    _add(root, "StorageClass", "STANDARD")
    _add(root, "PartNumberMarker", part_number_marker)
    if result.is_truncated:
        _add(root, "NextPartNumberMarker", result.next_part_number_marker)
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", result.is_truncated)
    for part in result.parts:
        entry = _add(root, "Part")
        _add(entry, "PartNumber", part.part_number)
        _add(entry, "LastModified", iso8601(part.last_modified))
        _add(entry, "ETag", f'"{part.etag}"')
        _add(entry, "Size", part.size)
        _checksums(entry, part.checksums)
    return _bytes(root)


def delete_result(deleted: Iterable[str], failed: Iterable[tuple[str, errors.S3Error]]) -> bytes:
    """DeleteObjects: ``<DeleteResult>`` with ``Deleted`` keys and per-key ``Error``s."""
    root = _root("DeleteResult")
    for key in deleted:
        _add(_add(root, "Deleted"), "Key", key)
    for key, exc in failed:
        entry = _add(root, "Error")
        _add(entry, "Key", key)
        _add(entry, "Code", exc.code)
        _add(entry, "Message", exc.message)
    return _bytes(root)


# == parsing ===================================================================================
def _parse(body: bytes, root_tag: str) -> ET.Element:
    """Parse untrusted XML whose root must be ``root_tag`` (any namespace).

    Raises:
        MalformedXML: not well-formed, a DTD or entity, or another root.
    """
    try:
        root = SafeET.fromstring(body)
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError) as exc:
        raise errors.MalformedXML() from exc
    if _local(root.tag) != root_tag:
        raise errors.MalformedXML()
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(parent: ET.Element) -> list[tuple[str, ET.Element]]:
    return [(_local(child.tag), child) for child in parent]


def _text(element: ET.Element) -> str:
    return (element.text or "").strip()


def parse_complete_multipart(body: bytes) -> list[wire.CompletedPart]:
    """Parse a ``<CompleteMultipartUpload>`` body into its parts, in the order given.

    Args:
        body: the request body (bytes).

    Returns:
        The parts, ETags stripped of quotes (hex), with their ``Checksum<ALG>`` values.

    Raises:
        MalformedXML: bad XML, another root element, no ``Part``, a ``Part`` without a
            numeric ``PartNumber`` or without an ``ETag``, more than 10000 parts.
        InvalidArgument: a part number outside 1..10000.
        InvalidPartOrder: part numbers not strictly ascending.
    """
    root = _parse(body, "CompleteMultipartUpload")
    parts: list[wire.CompletedPart] = []
    for name, element in _children(root):
        if name != "Part":
            continue
        number: str | None = None
        etag: str | None = None
        checksums: dict[str, str] = {}
        for field, child in _children(element):
            if field == "PartNumber":
                number = _text(child)
            elif field == "ETag":
                etag = _text(child).strip('"').strip()
            elif field in _CHECKSUM_ALGORITHMS:
                checksums[_CHECKSUM_ALGORITHMS[field]] = _text(child)
        if number is None or not number.isascii() or not number.isdigit() or not etag:
            raise errors.MalformedXML()
        if len(etag) > MAX_ETAG_CHARS:  # no part has such an ETag; it would only swell the request
            raise errors.InvalidPart(resource=etag[:MAX_ETAG_CHARS])
        part_number = parse_decimal(number.lstrip("0") or "0", max_digits=6)
        if part_number is None or not 1 <= part_number <= MAX_PARTS:
            raise errors.InvalidArgument(
                "Part number must be an integer between 1 and 10000, inclusive"
            )
        if parts and part_number <= parts[-1].part_number:
            raise errors.InvalidPartOrder()
        parts.append(wire.CompletedPart(part_number=part_number, etag=etag, checksums=checksums))
        if len(parts) > MAX_PARTS:
            raise errors.MalformedXML()
    if not parts:
        raise errors.MalformedXML()
    return parts


def parse_create_bucket(body: bytes) -> str:
    """The ``LocationConstraint`` of a ``<CreateBucketConfiguration>`` body (``""`` if none).

    Raises:
        MalformedXML: bad XML or another root element.
    """
    if not body.strip():
        return ""
    root = _parse(body, "CreateBucketConfiguration")
    for name, element in _children(root):
        if name == "LocationConstraint":
            return _text(element)
    return ""


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """A DeleteObjects ``<Delete>`` body → ``(keys, quiet)``.

    Raises:
        MalformedXML: bad XML, no ``Object``, an ``Object`` without ``Key``, or more than
            1000 objects.
    """
    root = _parse(body, "Delete")
    keys: list[str] = []
    quiet = False
    for name, element in _children(root):
        if name == "Quiet":
            quiet = _text(element).lower() == "true"
        elif name == "Object":
            key = None
            for field, child in _children(element):
                if field == "Key":
                    key = child.text or ""
            if not key:
                raise errors.MalformedXML()
            keys.append(key)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise errors.MalformedXML()
    return keys, quiet


# == server-side copies, upload and version listings ============================================
def copy_object_result(info: wire.ObjectInfo) -> bytes:
    """CopyObject: ``<CopyObjectResult>`` (ETag, LastModified, full-object checksums)."""
    root = _root("CopyObjectResult")
    _add(root, "ETag", f'"{info.etag}"')
    _add(root, "LastModified", iso8601(info.last_modified))
    _checksums(root, info.checksums)
    return _bytes(root)


def copy_part_result(part: wire.PartInfo) -> bytes:
    """UploadPartCopy: ``<CopyPartResult>`` (ETag, LastModified)."""
    root = _root("CopyPartResult")
    _add(root, "ETag", f'"{part.etag}"')
    _add(root, "LastModified", iso8601(part.last_modified))
    _checksums(root, part.checksums)
    return _bytes(root)


def list_multipart_uploads_result(
    result: wire.ListMultipartUploadsResult,
    *,
    bucket: str,
    request: wire.ListMultipartUploads,
    encoding_url: bool,
    owner: str,
) -> bytes:
    """ListMultipartUploads: ``<ListMultipartUploadsResult>``; with ``encoding_url`` the
    keys, prefixes, delimiter and key markers are URL-encoded."""
    enc = _encoder(encoding_url)
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", bucket)
    _add(root, "KeyMarker", enc(request.key_marker))
    _add(root, "UploadIdMarker", request.upload_id_marker)
    if result.is_truncated:
        _add(root, "NextKeyMarker", enc(result.next_key_marker))
        _add(root, "NextUploadIdMarker", result.next_upload_id_marker)
    _add(root, "Prefix", enc(request.prefix))
    if request.delimiter:
        _add(root, "Delimiter", enc(request.delimiter))
    _add(root, "MaxUploads", request.max_uploads)
    if encoding_url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", result.is_truncated)
    for upload in result.uploads:
        entry = _add(root, "Upload")
        _add(entry, "Key", enc(upload.key))
        _add(entry, "UploadId", upload.upload_id)
        for role in ("Initiator", "Owner"):
            who = _add(entry, role)
            _add(who, "ID", owner)
            _add(who, "DisplayName", owner)
        _add(entry, "StorageClass", "STANDARD")
        _add(entry, "Initiated", iso8601(upload.initiated))
    for prefix in result.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", enc(prefix))
    return _bytes(root)


def list_object_versions_result(
    result: wire.ListObjectsResult,
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    version_id_marker: str,
    max_keys: int,
    encoding_url: bool,
    owner: str,
) -> bytes:
    """ListObjectVersions of an unversioned bucket: ``<ListVersionsResult>``, one
    ``<Version>`` per object (``VersionId`` ``null``, ``IsLatest`` true); no delete markers."""
    enc = _encoder(encoding_url)
    root = _root("ListVersionsResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", enc(prefix))
    _add(root, "KeyMarker", enc(key_marker))
    _add(root, "VersionIdMarker", version_id_marker)
    if result.is_truncated:
        last = [c.key for c in result.contents[-1:]] + result.common_prefixes[-1:]
        _add(root, "NextKeyMarker", enc(result.next_marker or max(last, default="")))
        _add(root, "NextVersionIdMarker", "null")
    if delimiter:
        _add(root, "Delimiter", enc(delimiter))
    _add(root, "MaxKeys", max_keys)
    if encoding_url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", result.is_truncated)
    for item in result.contents:
        entry = _add(root, "Version")
        _add(entry, "Key", enc(item.key))
        _add(entry, "VersionId", "null")
        _add(entry, "IsLatest", True)
        _add(entry, "LastModified", iso8601(item.last_modified))
        _add(entry, "ETag", f'"{item.etag}"')
        _add(entry, "Size", item.size)
        who = _add(entry, "Owner")
        _add(who, "ID", owner)
        _add(who, "DisplayName", owner)
        _add(entry, "StorageClass", "STANDARD")
    for p in result.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", enc(p))
    return _bytes(root)


# == object attributes ===========================================================================
OBJECT_ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")


def get_object_attributes_result(info: wire.ObjectInfo, attributes: Iterable[str]) -> bytes:
    """GetObjectAttributes: ``<GetObjectAttributesResponse>`` with the asked-for elements of
    :data:`OBJECT_ATTRIBUTES` (ETag unquoted, as S3 sends it here; ``ObjectParts`` holds
    ``PartsCount`` (boto3: ``TotalPartsCount``) of a multipart object; ``Checksum`` its
    checksum and type)."""
    wanted = set(attributes)
    root = _root("GetObjectAttributesResponse")
    if "ETag" in wanted:
        _add(root, "ETag", info.etag)
    if "Checksum" in wanted and info.checksums:
        checksum = _add(root, "Checksum")
        _checksums(checksum, info.checksums)
        _add(checksum, "ChecksumType", checksum_type_of(next(iter(info.checksums.values()))))
    if "ObjectParts" in wanted and info.parts_count is not None:
        _add(_add(root, "ObjectParts"), "PartsCount", info.parts_count)
    if "StorageClass" in wanted:
        _add(root, "StorageClass", "STANDARD")
    if "ObjectSize" in wanted:
        _add(root, "ObjectSize", info.size)
    return _bytes(root)


# == object tagging ==============================================================================
__all__ += ["parse_tagging", "tagging_result"]  # noqa: PLE0605 - appended with their section


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """A PutObjectTagging ``<Tagging><TagSet><Tag><Key/><Value/></Tag>…</TagSet></Tagging>``
    body → its ``(key, value)`` pairs in order, texts as sent (not stripped); checked
    against S3's tag rules by :func:`edgecache.gateway.tagging.validate`.

    Raises:
        MalformedXML: bad XML, another root, no ``TagSet``, or a ``Tag`` without exactly one
            ``Key`` and one ``Value``.
    """
    root = _parse(body, "Tagging")
    tag_sets = [element for name, element in _children(root) if name == "TagSet"]
    if len(tag_sets) != 1:
        raise errors.MalformedXML()
    pairs: list[tuple[str, str]] = []
    for name, element in _children(tag_sets[0]):
        if name != "Tag":
            raise errors.MalformedXML()
        fields = _children(element)
        keys = [child.text or "" for field, child in fields if field == "Key"]
        values = [child.text or "" for field, child in fields if field == "Value"]
        if len(keys) != 1 or len(values) != 1 or len(fields) != 2:
            raise errors.MalformedXML()
        pairs.append((keys[0], values[0]))
    return pairs


def tagging_result(tags: dict[str, str]) -> bytes:
    """GetObjectTagging's ``<Tagging><TagSet>`` (empty for an untagged object)."""
    root = _root("Tagging")
    tag_set = _add(root, "TagSet")
    for key, value in tags.items():
        tag = _add(tag_set, "Tag")
        _add(tag, "Key", key)
        _add(tag, "Value", value)
    return _bytes(root)
