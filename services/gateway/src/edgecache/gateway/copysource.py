"""The source of a server-side copy (CopyObject, UploadPartCopy), read from its headers:
``x-amz-copy-source``, ``x-amz-copy-source-range``, ``x-amz-copy-source-if-*`` and
``x-amz-metadata-directive``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from edgecache.common import errors, names, wire
from edgecache.gateway import conditions
from edgecache.gateway.headers import RequestHeaders

if TYPE_CHECKING:
    from edgecache.common.client import EdgecacheClient

__all__ = ["checked_source", "copy_source", "copy_source_range", "replaces_metadata"]

_PRECONDITION = "x-amz-copy-source-"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def copy_source(h: RequestHeaders) -> tuple[str, str]:
    """``(bucket, key)`` of ``x-amz-copy-source`` (``[/]bucket/key[?versionId=null]``,
    URL-encoded; the key is decoded once).

    Raises:
        InvalidArgument: no bucket or key, a version id other than ``null`` (the only version
            of an unversioned bucket), or a key that is not UTF-8 once decoded.
    """
    raw = h.get("x-amz-copy-source", "")
    path, _, query = raw.partition("?")
    if query:
        name, _, value = query.partition("=")
        if name != "versionId" or value != "null":
            raise errors.InvalidArgument("Invalid version id specified")
    bucket, _, key = path.removeprefix("/").partition("/")
    try:
        bucket, key = unquote(bucket, errors="strict"), unquote(key, errors="strict")
    except UnicodeDecodeError as exc:
        raise errors.InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey"
        ) from exc
    if not bucket or not key:
        raise errors.InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey"
        )
    names.validate_key(bucket, key)
    return bucket, key


def copy_source_range(h: RequestHeaders) -> tuple[int, int] | None:
    """The inclusive range of ``x-amz-copy-source-range: bytes=first-last`` (``None``: the
    whole source). Whether it fits the source is the node's to say (InvalidRange).

    Raises:
        InvalidArgument: not of the form ``bytes=first-last`` with ``first <= last``.
    """
    value = h.get("x-amz-copy-source-range")
    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise errors.InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first "
            "and last are the zero-based offsets of the first and last bytes to copy"
        )
    return int(match.group(1)), int(match.group(2))


def replaces_metadata(h: RequestHeaders) -> bool:
    """Whether ``x-amz-metadata-directive`` is ``REPLACE`` (default ``COPY``).

    Raises:
        InvalidArgument: any other value.
    """
    directive = h.get("x-amz-metadata-directive", "COPY").strip().upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("Unknown metadata directive.")
    return directive == "REPLACE"


async def checked_source(
    client: EdgecacheClient,
    h: RequestHeaders,
    bucket: str,
    key: str,
    *,
    span: tuple[int, int] | None = None,
) -> wire.CopySource:
    """The copy source, with its ``x-amz-copy-source-if-*`` preconditions checked.

    Without preconditions nothing is asked. With them, the source's metadata is read and
    the conditions evaluated as GET's are (RFC 9110 order), except that every failure —
    "not modified" included — is 412, as S3 answers a copy; the source's ETag is then
    pinned, so that the node refuses the copy if the source changed in between.

    Raises:
        PreconditionFailed, NoSuchBucket, NoSuchKey.
    """
    first, last = span if span is not None else (None, None)
    plain = RequestHeaders(
        {
            name[len(_PRECONDITION) :]: value
            for name, value in h.items()
            if name.startswith(_PRECONDITION + "if-")
        }
    )
    if not plain:
        return wire.CopySource(bucket=bucket, key=key, first=first, last=last)
    head = await client.request(wire.HeadObject(bucket=bucket, key=key))
    if not isinstance(head, wire.ObjectInfo):
        raise errors.InternalError(f"expected ObjectInfo, got {type(head).__name__}")
    try:
        unchanged = conditions.not_modified(plain, head.etag, head.last_modified)
    except errors.PreconditionFailed as exc:
        raise errors.PreconditionFailed(
            exc.message.replace(": If-", ": x-amz-copy-source-If-")
        ) from exc
    if unchanged:
        raise errors.PreconditionFailed(
            "At least one of the pre-conditions you specified did not hold: "
            + (
                "x-amz-copy-source-If-None-Match"
                if "if-none-match" in plain
                else "x-amz-copy-source-If-Modified-Since"
            )
        )
    return wire.CopySource(bucket=bucket, key=key, etag=head.etag, first=first, last=last)
