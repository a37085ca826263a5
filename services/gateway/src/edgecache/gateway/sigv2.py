"""Server-side AWS Signature Version 2 verification for S3 requests.

Still sent by real clients: boto3's default ``generate_presigned_url`` and ``aws s3
presign`` (AWS CLI v1) for us-east-1, s3cmd with ``signature_v2``, old SDKs. Two forms
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/RESTAuthentication.html):

- header: ``Authorization: AWS <AccessKeyId>:<Signature>``, the time in ``Date`` or
  ``x-amz-date``, within ``max_skew_s`` of now;
- query string: ``AWSAccessKeyId``, ``Expires`` (Unix seconds) and ``Signature``; refused
  once ``Expires`` has passed, or when it lies more than a week past now.

``Signature = Base64(HMAC-SHA1(secret, StringToSign))`` where ``StringToSign`` is::

    Method \\n Content-MD5 \\n Content-Type \\n Date-or-Expires \\n
    CanonicalizedAmzHeaders CanonicalizedResource

SigV2 does not sign the body: it is passed through as ``UNSIGNED-PAYLOAD`` (its length
is still checked, and a ``Content-MD5`` or ``x-amz-checksum-*`` still is by the node), or
checked against a sent hex ``x-amz-content-sha256``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from edgecache.common import errors
from edgecache.gateway.chunked import UNSIGNED_PAYLOAD_TRAILER
from edgecache.gateway.sigv4 import (
    MAX_EXPIRES_S,
    UNSIGNED_PAYLOAD,
    AuthContext,
    request_time,
    secret_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["SCHEME", "SUBRESOURCES", "policy_signature", "string_to_sign", "verify"]

SCHEME = "AWS"
# Query parameters that are part of the CanonicalizedResource (AWS's list, as botocore's).
SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory",
        "lifecycle", "location", "logging", "metrics", "notification", "object-lock",
        "partNumber", "policy", "replication", "requestPayment", "response-cache-control",
        "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires", "restore",
        "select", "select-type", "storageClass", "tagging", "torrent", "uploadId", "uploads",
        "versionId", "versioning", "versions", "website",
    }
)  # fmt: skip
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SPACES = re.compile(r"[ \t\r\n]+")
_MAX_EXPIRES_DIGITS = 12  # Unix seconds; longer is nonsense, not a far future


def verify(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    credentials: Mapping[str, str],
    now: float,
    max_skew_s: int = 900,
    host_bucket: str = "",
) -> AuthContext:
    """Verify a request signed with SigV2 in its ``Authorization`` header or its query.

    Args:
        method: the HTTP method, e.g. ``"GET"``.
        raw_path: the path exactly as sent, percent-encoded, no query.
        query_string: the raw query, no ``?``.
        headers: ASGI ``(name, value)`` byte pairs, names lower case.
        credentials: access key id -> secret access key.
        now: the current time, Unix seconds.
        max_skew_s: the largest difference allowed between ``now`` and a header
            signature's ``Date``, seconds.
        host_bucket: the bucket named by a virtual-hosted ``Host``, else ``""`` (the
            signed resource then starts with ``/<host_bucket>``).

    Returns:
        The verified request: ``content_sha256`` is ``UNSIGNED-PAYLOAD``, a sent hex
        ``x-amz-content-sha256``, or ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``; no signing key.

    Raises:
        AccessDenied: no date, an expired or far-future ``Expires``, missing parameters,
            unsigned-payload chunk modes that need SigV4.
        InvalidArgument: both an ``Authorization`` header and query parameters.
        InvalidAccessKeyId: the access key is not in ``credentials``.
        RequestTimeTooSkewed: ``Date`` is more than ``max_skew_s`` from ``now``.
        SignatureDoesNotMatch: the signature is wrong or not base64.
    """
    header_map: dict[str, list[str]] = {}
    for name, value in headers:  # surrogateescape: the string to sign gets the bytes back
        text = value.decode("utf-8", "surrogateescape")
        header_map.setdefault(name.decode("latin-1").lower(), []).append(text)
    query = _query(query_string)
    authorization = header_map.get("authorization", [""])[0].strip()
    if authorization:
        if "Signature" in query or "AWSAccessKeyId" in query:
            raise errors.InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified"
            )
        scheme, _, credential = authorization.partition(" ")
        access_key, sep, signature = credential.strip().rpartition(":")
        if scheme != SCHEME or not sep or not access_key or not signature:
            raise errors.AccessDenied(
                "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature"
            )
        # the Date line is empty when x-amz-date carries the time
        date_line = "" if "x-amz-date" in header_map else _first(header_map, "date")
        when = request_time(header_map)
        if abs(now - when) > max_skew_s:
            raise errors.RequestTimeTooSkewed()
    else:
        access_key = query.get("AWSAccessKeyId", "")
        signature = query.get("Signature", "")
        date_line = query.get("Expires", "")
        if not access_key or not signature or not date_line:
            raise errors.AccessDenied(
                "Query-string authentication requires the Signature, Expires and "
                "AWSAccessKeyId parameters"
            )
        if (
            not (date_line.isascii() and date_line.isdigit())
            or len(date_line) > _MAX_EXPIRES_DIGITS
        ):
            raise errors.AccessDenied(
                "Invalid date (should be seconds since epoch): " + date_line[:32]
            )
        expires = int(date_line)
        if now > expires:
            raise errors.AccessDenied("Request has expired")
        if expires - now > MAX_EXPIRES_S + max_skew_s:
            raise errors.AccessDenied("Request has expired: Expires is more than a week away")
    secret = secret_for(credentials, access_key)
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        given = b""
    # a bucket's resource is "/bucket/" to botocore and AWS's examples, "/bucket" to others
    paths = [raw_path]
    if not host_bucket and raw_path.count(b"/") == 1 and len(raw_path) > 1:
        paths.append(raw_path + b"/")
    for path in paths:
        text = string_to_sign(
            method,
            path,
            query,
            header_map,
            date_line=date_line,
            host_bucket=host_bucket,
            presigned=not authorization,
        )
        expected = hmac.new(secret.encode(), text.encode("utf-8", "surrogateescape"), hashlib.sha1)
        if hmac.compare_digest(expected.digest(), given):
            break
    else:
        raise errors.SignatureDoesNotMatch()
    return AuthContext(
        access_key=access_key,
        region="",
        amz_date="",
        scope="",
        signing_key=b"",
        seed_signature="",
        content_sha256=_payload_mode(header_map),
        presigned=not authorization,
    )


def string_to_sign(
    method: str,
    raw_path: bytes,
    query: Mapping[str, str],
    header_map: Mapping[str, list[str]],
    *,
    date_line: str,
    host_bucket: str = "",
    presigned: bool = False,
) -> str:
    """The SigV2 ``StringToSign`` of a request (see the module docstring).

    Args:
        query: decoded query parameters, first occurrence of each name.
        header_map: lower-case header name -> values (latin-1 text).
        date_line: ``Date`` (empty with ``x-amz-date``), or ``Expires`` when presigned.
        presigned: ``x-amz-*`` query parameters count as headers, as botocore sends them.
    """
    amz: dict[str, list[str]] = {}
    for name, values in header_map.items():
        if name.startswith("x-amz-"):
            amz[name] = list(values)
    if presigned:
        for name, value in query.items():
            lower = name.lower()
            if lower.startswith("x-amz-"):
                amz.setdefault(lower, []).append(value)
    amz_lines = "".join(
        f"{name}:{','.join(_SPACES.sub(' ', v).strip() for v in amz[name])}\n"
        for name in sorted(amz)
    )
    resource = (f"/{host_bucket}" if host_bucket else "") + raw_path.decode("latin-1")
    subresources = sorted((n, v) for n, v in query.items() if n in SUBRESOURCES)
    if subresources:
        resource += "?" + "&".join(f"{n}={v}" if v else n for n, v in subresources)
    return "\n".join(
        (
            method,
            _first(header_map, "content-md5"),
            _first(header_map, "content-type"),
            date_line,
            amz_lines + resource,
        )
    )


def _first(header_map: Mapping[str, list[str]], name: str) -> str:
    return header_map.get(name, [""])[0].strip()


def _query(query_string: bytes) -> dict[str, str]:
    """Decoded query parameters, first occurrence of each name (``+`` kept, bad UTF-8
    replaced: such a request cannot match a signature anyway)."""
    out: dict[str, str] = {}
    for part in query_string.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        key = unquote(name.decode("latin-1"), errors="replace")
        out.setdefault(key, unquote(value.decode("latin-1"), errors="replace"))
    return out


def _payload_mode(header_map: Mapping[str, list[str]]) -> str:
    """What :func:`edgecache.gateway.sigv4.wrap_body` should check of the body.

    Raises:
        InvalidRequest: an ``x-amz-content-sha256`` chunk mode that needs SigV4.
    """
    value = _first(header_map, "x-amz-content-sha256")
    if not value or value == UNSIGNED_PAYLOAD:
        return UNSIGNED_PAYLOAD
    if value == UNSIGNED_PAYLOAD_TRAILER or _HEX_SHA256.fullmatch(value):
        return value
    raise errors.InvalidRequest(f"x-amz-content-sha256 {value[:64]!r} needs Signature Version 4.")


def policy_signature(secret: str, policy: str) -> bytes:
    """The SigV2 signature of a browser POST policy: ``HMAC-SHA1(secret, policy)`` (the
    policy as sent, in base64), 20 bytes; the form's ``signature`` field is its base64."""
    return hmac.new(
        secret.encode(), policy.encode("utf-8", "surrogateescape"), hashlib.sha1
    ).digest()
