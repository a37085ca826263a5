"""Which S3 operation an HTTP request is: method + target + query → :class:`Operation`.

Path-style addressing: ``/`` (the service), ``/<bucket>``, ``/<bucket>/<key>``; with
``gateway.domain`` set, virtual-hosted style too: ``Host: <bucket>.<domain>``, ``/<key>``. The
target comes from the ASGI ``raw_path`` (never the framework's normalised path), percent-
decoded exactly once, so ``%2F`` in a key is a ``/`` of the key and ``//`` is kept. The
query comes from the raw ``query_string``.

Sub-resources we do not serve (``PUT ?acl``, ``?versioning``, …) route to the operation
``NotImplemented``; a method a target does not support routes to ``MethodNotAllowed``. The
handlers turn both into S3 errors, after authentication.

The names routed to are the actions of :data:`edgecache.gateway.handlers.ROUTES`; an action
that sends one ``s3.*`` request is named after its request type in ``wire`` (the operation
table), and tests/unit/test_operation_table.py checks that every one is routed to.
"""

from __future__ import annotations

from urllib.parse import unquote, unquote_to_bytes

import msgspec

from edgecache.common.errors import InvalidBucketName, InvalidURI

__all__ = ["SUBRESOURCES", "Operation", "host_bucket", "parse_query", "route", "route_read"]

# Query parameters that select a different operation on the same target (S3 "sub-resources").
# Any other parameter (prefix, max-keys, x-id, X-Amz-Signature, …) only qualifies one.
SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "attributes",
        "cors",
        "delete",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metadataConfiguration",
        "metadataTable",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "partNumber",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "renameObject",
        "replication",
        "requestPayment",
        "restore",
        "retention",
        "select",
        "session",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)
# Sub-resources of newer S3 actions (2025), kept apart so the list above merges cleanly:
# without them ``PUT /b/k?annotation`` would overwrite the object (PutObject) and
# ``PUT /b?abac`` would be a CreateBucket (docs/compatibility.md, checked against botocore).
SUBRESOURCES = SUBRESOURCES | {
    "abac",
    "annotation",
    "metadataAnnotationTable",
    "metadataInventoryTable",
    "metadataJournalTable",
}
_MAX_QUERY_FIELDS = 64
# What may name an existing bucket (legacy us-east-1 names allowed upper case and "_"); a
# name outside this never reaches the cache nodes. New names: names.validate_bucket_name.
_BUCKET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_MAX_BUCKET_CHARS = 255


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """A routed request.

    Attributes:
        name: the S3 API action, e.g. ``"GetObject"``, or ``"NotImplemented"`` /
            ``"MethodNotAllowed"``.
        bucket: the bucket name as sent (``""`` for the service).
        key: the object key, decoded (``""`` for bucket and service operations).
        query: decoded query parameters (the first of repeated names wins; ``?acl`` → ``""``).
        detail: for ``NotImplemented``, what was asked for (e.g. ``"versioning"``).
    """

    name: str
    bucket: str = ""
    key: str = ""
    query: dict[str, str] = {}
    detail: str = ""

    @property
    def resource(self) -> str:
        """``/bucket/key`` as S3 names it in ``<Resource>``."""
        if not self.bucket:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"


def parse_query(query_string: bytes) -> dict[str, str]:
    """Decode a raw query string (``a=1&b&c=%2F``) to ``{"a": "1", "b": "", "c": "/"}``.

    ``+`` is kept as ``+`` (SigV4 clients send a space as ``%20``; S3 does the same). The
    first occurrence of a repeated name wins.

    Raises:
        InvalidURI: more than 64 parameters, or a value that is not UTF-8 once decoded.
    """
    out: dict[str, str] = {}
    if not query_string:
        return out
    parts = query_string.split(b"&")
    if len(parts) > _MAX_QUERY_FIELDS:
        raise InvalidURI("Too many query parameters.")
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition(b"=")
        try:  # unquote only what has an escape: a presigned URL has 8 parameters per request
            key = name.decode("ascii")
            if "%" in key:
                key = unquote(key, errors="strict")
            if key not in out:
                text = value.decode("ascii")
                out[key] = unquote(text, errors="strict") if "%" in text else text
        except UnicodeError as exc:
            raise InvalidURI() from exc
    return out


def host_bucket(host: str, domain: str) -> str:
    """The bucket of a virtual-hosted-style ``Host`` (``bucket.s3.localhost:9000`` with
    ``domain`` ``s3.localhost`` → ``"bucket"``); ``""`` for path-style (no ``domain``, the
    domain itself, an IP address or any other host). Case-insensitive; the port is ignored."""
    if not domain or not host:
        return ""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    suffix = "." + domain.lower().strip(".")
    if name.lower().endswith(suffix) and len(name) > len(suffix):
        return name[: -len(suffix)]
    return ""


def _split_path(raw_path: bytes, bucket_in_host: str = "") -> tuple[str, str]:
    """``b"/bucket/a%2Fb"`` → ``("bucket", "a/b")``; decoded once, UTF-8. With
    ``bucket_in_host`` (virtual-hosted style) the whole path is the key.

    Raises:
        InvalidURI: the path does not start with ``/`` or is not UTF-8 once decoded.
        InvalidBucketName: the bucket holds characters no bucket name can hold, or is
            longer than 255 characters.
    """
    if not raw_path.startswith(b"/"):
        raise InvalidURI()
    if bucket_in_host:
        bucket, key = b"", raw_path[1:]
    else:
        bucket, _, key = raw_path[1:].partition(b"/")
    try:
        names = (
            bucket_in_host or (_unquote(bucket).decode("utf-8") if bucket else ""),
            _unquote(key).decode("utf-8") if key else "",
        )
    except UnicodeDecodeError as exc:
        raise InvalidURI() from exc
    if len(names[0]) > _MAX_BUCKET_CHARS or not _BUCKET_CHARS.issuperset(names[0]):
        raise InvalidBucketName(resource=names[0][:_MAX_BUCKET_CHARS])
    return names


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw) if b"%" in raw else raw


def _unsupported(subresources: set[str]) -> str:
    return min(subresources) if subresources else ""


def route(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    *,
    copy_source: bool = False,
    host_bucket: str = "",
) -> Operation:
    """Map a request to its S3 operation.

    Args:
        method: the HTTP method, upper case.
        raw_path: ASGI ``scope["raw_path"]`` (percent-encoded, no query).
        query_string: ASGI ``scope["query_string"]``.
        copy_source: whether an ``x-amz-copy-source`` header was sent (CopyObject and
            UploadPartCopy are PUTs that must not be taken for uploads).
        host_bucket: the bucket named by a virtual-hosted ``Host`` (see :func:`host_bucket`);
            the path is then all key.

    Returns:
        The operation; ``NotImplemented`` or ``MethodNotAllowed`` for what we do not serve.

    Raises:
        InvalidURI: the path or query cannot be decoded.
        InvalidBucketName: no bucket can have that name.
    """
    bucket, key = _split_path(raw_path, host_bucket)
    query = parse_query(query_string)
    subs = {name for name in query if name in SUBRESOURCES}
    if query.get("versionId") == "null":  # the only version an unversioned bucket has
        subs.discard("versionId")

    def op(name: str, detail: str = "") -> Operation:
        return Operation(name=name, bucket=bucket, key=key, query=query, detail=detail)

    if not bucket:
        return op("ListBuckets") if method == "GET" else op("MethodNotAllowed")

    if not key:
        if method == "GET":
            if not subs:
                return op("ListObjectsV2" if query.get("list-type") == "2" else "ListObjects")
            if subs == {"location"}:
                return op("GetBucketLocation")
            if subs == {"uploads"}:
                return op("ListMultipartUploads")
            if subs == {"versions"}:
                return op("ListObjectVersions")
            if subs == {"acl"}:
                return op("GetBucketAcl")
        elif method == "HEAD":
            return op("HeadBucket")
        elif method == "PUT":
            if not subs:
                return op("CreateBucket")
        elif method == "DELETE":
            if not subs:
                return op("DeleteBucket")
        elif method == "POST":
            if subs == {"delete"}:
                return op("DeleteObjects")
            if not subs:
                return op("PostObject")  # a browser upload: multipart/form-data
        else:
            return op("MethodNotAllowed")
        return op("NotImplemented", _unsupported(subs) or method)

    if method == "GET":
        if not subs or subs == {"partNumber"}:
            return op("GetObject")
        if subs == {"uploadId"}:
            return op("ListParts")
        if subs == {"acl"}:
            return op("GetObjectAcl")
        if subs == {"attributes"}:
            return op("GetObjectAttributes")
        if subs == {"tagging"}:
            return op("GetObjectTagging")
    elif method == "HEAD":
        if not subs or subs == {"partNumber"}:
            return op("HeadObject")
    elif method == "PUT":
        if copy_source:
            if not subs:
                return op("CopyObject")
            if subs == {"partNumber", "uploadId"}:
                return op("UploadPartCopy")
            return op("NotImplemented", _unsupported(subs))
        if not subs:
            return op("PutObject")
        if subs == {"partNumber", "uploadId"}:
            return op("UploadPart")
        if subs == {"tagging"}:
            return op("PutObjectTagging")
    elif method == "POST":
        if subs == {"uploads"}:
            return op("CreateMultipartUpload")
        if subs == {"uploadId"}:
            return op("CompleteMultipartUpload")
    elif method == "DELETE":
        if not subs:
            return op("DeleteObject")
        if subs == {"uploadId"}:
            return op("AbortMultipartUpload")
        if subs == {"tagging"}:
            return op("DeleteObjectTagging")
    else:
        return op("MethodNotAllowed")
    return op("NotImplemented", _unsupported(subs) or method)


# GET/HEAD targets routed lately (route_read): at most _READS entries of at most
# _READ_TARGET_BYTES of path and query each, so a few MiB per worker at worst
_READS = 512
_READ_TARGET_BYTES = 2048
_reads: dict[tuple[str, bytes, bytes, str], Operation] = {}


def route_read(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    *,
    copy_source: bool = False,
    host_bucket: str = "",
) -> Operation:
    """:func:`route`, remembered for GET and HEAD: a hot object's URL (a presigned one has
    six query parameters to split and decode) is routed once, then looked up.

    Routing is a pure function of its arguments, and ``copy_source`` matters only to PUT.
    The :class:`Operation` returned may be shared by several requests: treat it, its
    ``query`` included, as read-only (as every caller does). A target that fails to route
    raises as :func:`route` does, every time (it is not remembered). The memory is bounded:
    at most 512 targets of at most 2 KiB each; the oldest goes first.
    """
    if method not in ("GET", "HEAD") or len(raw_path) + len(query_string) > _READ_TARGET_BYTES:
        return route(
            method, raw_path, query_string, copy_source=copy_source, host_bucket=host_bucket
        )
    key = (method, raw_path, query_string, host_bucket)
    op = _reads.get(key)
    if op is None:
        op = route(method, raw_path, query_string, host_bucket=host_bucket)
        if len(_reads) >= _READS:
            del _reads[next(iter(_reads))]
        _reads[key] = op
    return op
