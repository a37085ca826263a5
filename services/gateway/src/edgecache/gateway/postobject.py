"""Browser-based uploads: PostObject (``POST /<bucket>``, ``multipart/form-data``).

https://docs.aws.amazon.com/AmazonS3/latest/API/RESTObjectPOST.html. The form's fields come
first (``key``, ``policy``, the signature fields, ``Content-Type``, ``x-amz-meta-*``,
``success_action_status``, …), then the ``file`` field; fields after it are ignored. The
form is parsed as it streams (``multipart``'s push parser, the one Litestar uses): the
fields (at most :data:`MAX_FIELDS_BYTES` together) are read and checked — the policy's
signature (SigV4 ``x-amz-signature`` or SigV2 ``signature``), its expiry and its
conditions — before a byte of the file goes to a cache node; the file is then streamed
through, its size held to the policy's ``content-length-range``.

Policy conditions (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html):
``{"field": "value"}`` and ``["eq", "$field", "value"]`` (exact), ``["starts-with",
"$field", "prefix"]``, ``["content-length-range", min, max]`` (bytes); every form field
but ``policy``, ``x-amz-signature``, ``signature``, ``AWSAccessKeyId``, ``file`` and
``x-ignore-*`` must be named by a condition. ``${filename}`` in ``key`` becomes the file's
name.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

from edgecache.common import errors, names, wire
from edgecache.gateway import sigv2, sigv4, tagging, xml
from edgecache.gateway.headers import (
    MAX_PART_BYTES,
    STORED_HEADERS,
    RequestHeaders,
    object_attributes,
    upload_digests,
)
from edgecache.gateway.responses import empty, xml_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from litestar import Response

    from edgecache.gateway.exchange import Exchange

__all__ = ["MAX_FIELDS_BYTES", "PostForm", "check_policy", "serve"]

MAX_FIELDS_BYTES = 20 * 1024  # every field but the file, together (S3's limit)
MAX_SEGMENTS = 64
_EXEMPT = frozenset({"policy", "x-amz-signature", "signature", "awsaccesskeyid", "file"})
_STATUSES = {"200": 200, "201": 201, "204": 204}
Event = MultipartSegment | bytes | bytearray | memoryview | None


@dataclass
class PostForm:
    """The fields of a POST form up to its file.

    Attributes:
        fields: field name, lower case -> value (UTF-8 text); the first of a repeated name.
        filename: the ``filename`` of the file part (``""`` if none was given).
    """

    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""


async def serve(x: Exchange) -> Response[Any]:
    """Serve a PostObject: read the fields, verify, stream the file to a cache node.

    Returns:
        204 (default), 200, or 201 with ``<PostResponse>`` (``success_action_status``), or a
        303 to ``success_action_redirect``; ``ETag`` and ``Location`` headers.

    Raises:
        PreconditionFailed: not ``multipart/form-data``.
        MalformedPOSTRequest: a body that is not a well-formed form, or fields too large.
        IncorrectNumberOfFilesInPostRequest: no ``file`` field.
        AccessDenied: no policy or signature, an expired policy, a failed condition, or a
            field no condition names.
        InvalidPolicyDocument: a policy that is not base64 JSON of the documented shape.
        SignatureDoesNotMatch, InvalidAccessKeyId: the policy's signature.
        EntityTooLarge, EntityTooSmall: outside ``content-length-range`` (or over 5 GiB).
        InvalidArgument, MetadataTooLarge, KeyTooLongError, NoSuchBucket: as PutObject.
    """
    op = x.op
    assert op is not None
    mime, options = parse_options_header(x.headers.get("content-type", ""))
    boundary = options.get("boundary", "")
    if mime != "multipart/form-data" or not boundary:
        raise errors.PreconditionFailed(
            "Bucket POST must be of the enclosure-type multipart/form-data", resource=op.bucket
        )
    events = _events(x.raw_body(), boundary)
    form = await read_fields(events)
    verify_form(form, credentials=x.gateway.credentials, region=x.gateway.config.region)
    low, high = check_policy(form.fields["policy"], form.fields, bucket=op.bucket, now=time.time())
    key = form.fields.get("key", "").replace("${filename}", form.filename)
    names.validate_key(op.bucket, key)
    attributes = RequestHeaders(
        {
            n: v
            for n, v in form.fields.items()
            if n == "content-type"
            or n in STORED_HEADERS
            or n.startswith(("x-amz-meta-", "x-amz-checksum-"))
            or n == "content-md5"
        }
    )
    content_type, metadata, stored = object_attributes(attributes)
    content_md5, checksums = upload_digests(attributes)
    tagging_xml = form.fields.get("tagging", "")  # a <Tagging> document, as PutObjectTagging's
    request = wire.PutObject(
        bucket=op.bucket,
        key=key,
        size=None,
        content_type=content_type,
        metadata=metadata,
        headers=stored,
        content_md5=content_md5,
        checksums=checksums,
        tags=tagging.validate(xml.parse_tagging(tagging_xml.encode())) if tagging_xml else {},
    )
    reply = await x.gateway.client.put_object(request, _file(events, low, high), trailers={})
    if not isinstance(reply, wire.ObjectInfo):
        raise errors.InternalError(f"expected ObjectInfo, got {type(reply).__name__}")
    async for _ in events:  # fields after the file are ignored, but read: the connection lives on
        pass
    return _answer(x, form, reply)


def _answer(x: Exchange, form: PostForm, info: wire.ObjectInfo) -> Response[Any]:
    scheme = x.request.scope.get("scheme", "http")
    location = f"{scheme}://{x.headers.get('host', '')}/{info.bucket}/{quote(info.key, safe='/')}"
    etag = f'"{info.etag}"'
    headers = {"etag": etag, "location": location}
    redirect = form.fields.get("success_action_redirect") or form.fields.get("redirect")
    if redirect:
        query = urlencode({"bucket": info.bucket, "key": info.key, "etag": etag})
        headers["location"] = f"{redirect}{'&' if '?' in redirect else '?'}{query}"
        return empty(x, status=303, headers=headers)
    status = _STATUSES.get(form.fields.get("success_action_status", ""), 204)
    if status != 201:
        return empty(x, status=status, headers=headers)
    return xml_response(x, xml.post_response(info, location=location), status=201, headers=headers)


# -- the form ------------------------------------------------------------------------------------
async def _events(body: AsyncIterator[bytes], boundary: str) -> AsyncIterator[Event]:
    """Parser events of the form (see ``PushMultipartParser.parse``).

    Raises:
        MalformedPOSTRequest: the body is not a well-formed multipart form.
    """
    parser = PushMultipartParser(
        boundary, max_header_size=4096, max_header_count=8, max_segment_count=MAX_SEGMENTS
    )
    try:
        async for piece in body:
            for event in parser.parse(piece):
                yield event
        for event in parser.parse(b""):
            yield event
    except ParserError as exc:
        raise errors.MalformedPOSTRequest() from exc


async def read_fields(events: AsyncIterator[Event]) -> PostForm:
    """Read fields up to the start of the ``file`` field.

    Raises:
        MalformedPOSTRequest: a field is not UTF-8, or the fields pass
            :data:`MAX_FIELDS_BYTES`.
        IncorrectNumberOfFilesInPostRequest: the form ends without a ``file`` field.
    """
    form = PostForm()
    size = 0
    name: str | None = None
    value = bytearray()
    async for event in events:
        if isinstance(event, MultipartSegment):
            if event.name.lower() == "file":
                form.filename = (event.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
                return form
            name, value = event.name.lower(), bytearray()
        elif event is None:
            if name is not None and name not in form.fields:
                try:
                    form.fields[name] = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise errors.MalformedPOSTRequest(f"The field {name} is not UTF-8.") from exc
            name = None
        else:
            size += len(event)
            if size > MAX_FIELDS_BYTES:
                raise errors.MalformedPOSTRequest(
                    f"The form fields exceed {MAX_FIELDS_BYTES} bytes."
                )
            value += event
    raise errors.IncorrectNumberOfFilesInPostRequest()


async def _file(events: AsyncIterator[Event], low: int, high: int) -> AsyncIterator[bytes]:
    """The bytes of the ``file`` field, held to ``low..high`` bytes.

    Raises:
        EntityTooLarge, EntityTooSmall: outside the range.
        MalformedPOSTRequest: the body ends inside the file.
    """
    size = 0
    async for event in events:
        if event is None:
            break
        if isinstance(event, MultipartSegment):  # cannot happen: a segment ends first
            raise errors.MalformedPOSTRequest()
        size += len(event)
        if size > high:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed size")
        yield bytes(event)
    else:
        raise errors.MalformedPOSTRequest("The body ended inside the file field.")
    if size < low:
        raise errors.EntityTooSmall("Your proposed upload is smaller than the minimum allowed size")


# -- signature and policy ------------------------------------------------------------------------
def verify_form(form: PostForm, *, credentials: Mapping[str, str], region: str) -> str:
    """Check the policy's signature; returns the access key that signed it.

    Raises:
        AccessDenied: no policy, or no signature fields.
        InvalidArgument: a SigV4 algorithm or credential this gateway does not answer.
        InvalidAccessKeyId, SignatureDoesNotMatch.
    """
    fields = form.fields
    policy = fields.get("policy")
    if not policy:
        raise errors.AccessDenied(
            "Anonymous POST uploads are not allowed: the form needs a policy."
        )
    if "x-amz-signature" in fields:
        if fields.get("x-amz-algorithm") != sigv4.ALGORITHM:
            raise errors.InvalidArgument(f"x-amz-algorithm must be {sigv4.ALGORITHM}.")
        access_key, key = sigv4.policy_signer(
            fields.get("x-amz-credential", ""), fields.get("x-amz-date", ""), credentials, region
        )
        expected = hmac.new(key, policy.encode(), "sha256").hexdigest().encode()
        if not hmac.compare_digest(expected, fields["x-amz-signature"].strip().encode()):
            raise errors.SignatureDoesNotMatch()
        return access_key
    if "signature" in fields and "awsaccesskeyid" in fields:
        access_key = fields["awsaccesskeyid"]
        secret = sigv4.secret_for(credentials, access_key)
        try:
            given = base64.b64decode(fields["signature"].strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if not hmac.compare_digest(sigv2.policy_signature(secret, policy), given):
            raise errors.SignatureDoesNotMatch()
        return access_key
    raise errors.AccessDenied("The form is not signed (x-amz-signature or signature).")


def check_policy(
    policy: str, fields: Mapping[str, str], *, bucket: str, now: float
) -> tuple[int, int]:
    """Check a POST policy (base64 JSON) against the form's fields.

    Args:
        policy: the ``policy`` field as sent.
        fields: the form's fields, names lower case.
        bucket: the bucket posted to (the ``bucket`` condition's value).
        now: Unix seconds.

    Returns:
        ``(low, high)``: the file sizes the policy allows, in bytes (``0..5 GiB`` without a
        ``content-length-range``).

    Raises:
        InvalidPolicyDocument: not base64 JSON with ``expiration`` and ``conditions``, or a
            condition of unknown shape.
        AccessDenied: expired, a condition fails, or a field no condition names.
    """
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
        expiration = datetime.fromisoformat(document["expiration"]).timestamp()
        conditions = document["conditions"]
        if not isinstance(conditions, list):
            raise TypeError("conditions")
    except (binascii.Error, ValueError, TypeError, KeyError, OverflowError) as exc:
        raise errors.InvalidPolicyDocument(f"Invalid Policy: {exc!s:.200}") from exc
    if now > expiration:
        raise errors.AccessDenied("Invalid according to Policy: Policy expired.")
    values = {**fields, "bucket": bucket}
    named: set[str] = set()
    low, high = 0, MAX_PART_BYTES
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            ((name, expected),) = condition.items()
            operator, name = "eq", name.lower()
        elif (
            isinstance(condition, list)
            and len(condition) == 3
            and condition[0] == "content-length-range"
        ):
            if not all(isinstance(v, int) and v >= 0 for v in condition[1:]):
                raise errors.InvalidPolicyDocument(
                    "Invalid Policy: content-length-range needs two integers."
                )
            low, high = max(low, condition[1]), min(high, condition[2])
            continue
        elif (
            isinstance(condition, list)
            and len(condition) == 3
            and condition[0] in ("eq", "starts-with")
            and isinstance(condition[1], str)
            and condition[1].startswith("$")
        ):
            operator, name, expected = condition[0], condition[1][1:].lower(), condition[2]
        else:
            raise errors.InvalidPolicyDocument(
                f"Invalid Policy: unknown condition {json.dumps(condition)[:200]}"
            )
        if not isinstance(expected, str):
            raise errors.InvalidPolicyDocument(
                f"Invalid Policy: {name} must be compared to a string."
            )
        named.add(name)
        value = values.get(name, "")
        ok = value == expected if operator == "eq" else value.startswith(expected)
        if not ok:
            raise errors.AccessDenied(
                f"Invalid according to Policy: Policy Condition failed: "
                f'["{operator}", "${name}", {json.dumps(expected)[:200]}]'
            )
    extra = sorted(
        n for n in fields if n not in named and n not in _EXEMPT and not n.startswith("x-ignore-")
    )
    if extra:
        raise errors.AccessDenied(
            f"Invalid according to Policy: Extra input fields: {extra[0][:64]}"
        )
    return low, high
