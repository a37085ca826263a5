"""HTTP headers ↔ S3 object attributes, both ways.

In: :class:`RequestHeaders` (case-insensitive, latin-1 so bytes round-trip) and the
upload fields of PutObject / UploadPart / CreateMultipartUpload (``Content-Type``,
``x-amz-meta-*``, stored system headers, ``Content-MD5``, ``x-amz-checksum-*``, size).
Out: the headers of a GetObject / HeadObject response from an ``ObjectInfo``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edgecache.common import errors
from edgecache.common.checksums import DIGEST_BYTES, checksum_type_of
from edgecache.common.errors import MetadataTooLarge

if TYPE_CHECKING:
    from edgecache.common import wire

__all__ = [
    "CHECKSUM_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_OBJECT_BYTES",
    "MAX_PART_BYTES",
    "STORED_HEADERS",
    "RequestHeaders",
    "content_range",
    "header_value",
    "http_date",
    "iso8601",
    "object_attributes",
    "object_headers",
    "parse_decimal",
    "parse_http_date",
    "upload_digests",
    "upload_size",
]

GiB = 1024**3
MAX_PART_BYTES = 5 * GiB  # also the largest single PUT
MAX_OBJECT_BYTES = 5 * 1024 * GiB
MAX_METADATA_BYTES = 2048  # user metadata, names + values (S3's limit)

# System headers stored with an object and returned on GET/HEAD (lower case).
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
# Checksum algorithms we verify → digest length in bytes.
CHECKSUM_BYTES = DIGEST_BYTES
# x-amz-checksum-<alg> values S3 knows but we cannot verify.
_UNSUPPORTED_CHECKSUMS = frozenset({"md5", "sha512", "xxhash3", "xxhash64", "xxhash128"})
_META = "x-amz-meta-"
_CHECKSUM = "x-amz-checksum-"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
# response-* query parameters of GetObject/HeadObject → the header they override.
_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


class RequestHeaders(dict[str, str]):
    """Request headers by lower-case name; repeated headers joined with ``,``.

    Built from ASGI ``scope["headers"]`` (names already lower case); values are decoded
    as latin-1, so any byte survives a round trip through ``str``.
    """

    __slots__ = ()

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
        out = cls()
        for name, value in raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            out[key] = f"{out[key]},{text}" if key in out else text
        return out


def object_attributes(h: RequestHeaders) -> tuple[str, dict[str, str], dict[str, str]]:
    """What PutObject / CreateMultipartUpload store besides the bytes.

    Returns:
        ``(content_type, metadata, headers)``: ``Content-Type`` (default
        ``binary/octet-stream``); user metadata from ``x-amz-meta-*`` with the prefix
        removed and names in lower case; stored system headers (:data:`STORED_HEADERS`,
        with ``aws-chunked`` removed from ``Content-Encoding``, any other value as sent).

    Raises:
        MetadataTooLarge: user metadata over 2 KiB (names plus values, in bytes).
    """
    content_type = h.get("content-type") or "binary/octet-stream"
    metadata: dict[str, str] = {}
    stored: dict[str, str] = {}
    size = 0
    for name, value in h.items():
        if name.startswith(_META):
            short = name[len(_META) :]
            metadata[short] = value
            size += len(short) + len(value)
        elif name in STORED_HEADERS:
            if name == "content-encoding" and "aws-chunked" in value.lower():
                # only the framing is ours to remove; any other value is kept as sent
                value = ",".join(
                    e
                    for e in (p.strip() for p in value.split(","))
                    if e and e.lower() != "aws-chunked"
                )
                if not value:
                    continue
            stored[name] = value
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge()
    return content_type, metadata, stored


def upload_digests(h: RequestHeaders) -> tuple[str | None, dict[str, str]]:
    """The integrity claims of an upload's headers.

    Returns:
        ``(content_md5, checksums)``: ``Content-MD5`` as sent (base64) or ``None``, and
        ``x-amz-checksum-<alg>`` values by algorithm (``{"crc32": "DUoRhQ=="}``). Trailing
        checksums (``x-amz-trailer``) are not here: they arrive after the body.

    Raises:
        InvalidDigest: ``Content-MD5`` is not base64 of 16 bytes.
        InvalidRequest: a checksum value of the wrong size, an algorithm we cannot verify,
            or more than one checksum header.
    """
    md5 = h.get("content-md5")
    if md5 is not None:
        try:
            ok = len(base64.b64decode(md5, validate=True)) == 16
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise errors.InvalidDigest()
    checksums: dict[str, str] = {}
    for name, value in h.items():
        if not name.startswith(_CHECKSUM):
            continue
        algorithm = name[len(_CHECKSUM) :]
        if algorithm in _UNSUPPORTED_CHECKSUMS:
            raise errors.InvalidRequest(f"Checksum algorithm {algorithm} is not supported.")
        expected = CHECKSUM_BYTES.get(algorithm)
        if expected is None:  # x-amz-checksum-type, -algorithm, -mode: not values
            continue
        try:
            ok = len(base64.b64decode(value, validate=True)) == expected
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise errors.InvalidRequest(f"Value for x-amz-checksum-{algorithm} header is invalid.")
        checksums[algorithm] = value
    if len(checksums) > 1:
        raise errors.InvalidRequest("Expecting a single x-amz-checksum- header.")
    return md5, checksums


def _is_aws_chunked(h: RequestHeaders) -> bool:
    return h.get("x-amz-content-sha256", "").startswith("STREAMING-") or "aws-chunked" in h.get(
        "content-encoding", ""
    )


def parse_decimal(value: str, *, max_digits: int = 19) -> int | None:
    """``value`` as a non-negative decimal integer, or ``None`` if it is not one (ASCII digits
    only) or has more than ``max_digits`` digits (19: anything a 64-bit length can hold;
    thousands of digits would cost quadratic time, past 4300 a ValueError)."""
    if not value or len(value) > max_digits or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def _length(h: RequestHeaders, name: str) -> int | None:
    value = h.get(name)
    if value is None:
        return None
    number = parse_decimal(value)
    if number is None:
        raise errors.InvalidArgument(f"Invalid {name}: {value[:32]!r}")
    return number


def upload_size(h: RequestHeaders, *, limit: int = MAX_PART_BYTES) -> int | None:
    """The decoded body length of an upload, in bytes, when the headers say it.

    A plain body needs ``Content-Length``; an ``aws-chunked`` body announces its decoded
    length in ``x-amz-decoded-content-length`` (``None`` if absent: the stream's end decides).

    Raises:
        MissingContentLength: a plain body without ``Content-Length``.
        EntityTooLarge: over ``limit`` bytes (5 GiB for PutObject and UploadPart).
        InvalidArgument: a length header that is not a decimal number.
    """
    if _is_aws_chunked(h):
        size = _length(h, "x-amz-decoded-content-length")
    else:
        size = _length(h, "content-length")
        if size is None:
            raise errors.MissingContentLength()
    if size is not None and size > limit:
        raise errors.EntityTooLarge()
    return size


@functools.lru_cache(maxsize=4096)
def http_date(ts: float) -> str:
    """Unix seconds → RFC 7231 date, ``Sun, 06 Nov 1994 08:49:37 GMT`` (remembered: a hit
    sends the same object's ``Last-Modified`` again and again)."""
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    """RFC 7231 (or RFC 850 / asctime) date → Unix seconds; ``None`` if absent or invalid."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (TypeError, ValueError, OverflowError, OSError):  # OverflowError: a huge year
        return None


def iso8601(ts: float) -> str:
    """Unix seconds → ``2009-10-12T17:50:30.000Z`` (S3's XML timestamps)."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def header_value(value: str) -> str:
    """``value`` as a response header: as is when it is latin-1 without control characters
    (so request bytes round-trip), else RFC 2047 encoded (``=?UTF-8?B?…?=``), as S3 does."""
    if _UNSAFE_VALUE.search(value) is None:
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode() + "?="


def content_range(info: wire.ObjectInfo) -> str | None:
    """``bytes first-last/size`` when ``info`` describes a range, else ``None``."""
    if info.range_first is None or info.range_last is None:
        return None
    return f"bytes {info.range_first}-{info.range_last}/{info.size}"


def object_headers(
    info: wire.ObjectInfo, *, query: dict[str, str], checksum_mode: bool
) -> dict[str, str]:
    """The response headers of GetObject / HeadObject for ``info``.

    ``Content-Length`` is the length of what follows (the range, if any); ``Content-Range``
    is set for a range. Checksums are sent only when ``checksum_mode`` (the request's
    ``x-amz-checksum-mode: ENABLED``) and the whole object follows. ``response-*`` query
    parameters override the stored headers.
    """
    out = {
        "content-type": header_value(info.content_type),
        "etag": f'"{info.etag}"',
        "last-modified": http_date(info.last_modified),
        "accept-ranges": "bytes",
    }
    for name, value in info.headers.items():
        if name in STORED_HEADERS:
            out[name] = header_value(value)
    for name, value in info.metadata.items():
        if _TOKEN.fullmatch(name):  # names set over NATS by other services may be anything
            out[_META + name.lower()] = header_value(value)
    crange = content_range(info)
    if crange is not None:
        assert info.range_first is not None and info.range_last is not None
        out["content-range"] = crange
        out["content-length"] = str(info.range_last - info.range_first + 1)
    else:
        out["content-length"] = str(info.size)
        if checksum_mode and info.checksums:
            for algorithm, value in info.checksums.items():
                out[_CHECKSUM + algorithm] = value
            out["x-amz-checksum-type"] = checksum_type_of(next(iter(info.checksums.values())))
    if info.tag_count:
        out["x-amz-tagging-count"] = str(info.tag_count)
    for param, header in _OVERRIDES.items():
        value = query.get(param)
        if value is not None:
            # decoded from the query as UTF-8: send those bytes, as S3 does
            out[header] = header_value(value.encode("utf-8", "surrogatepass").decode("latin-1"))
    return out
