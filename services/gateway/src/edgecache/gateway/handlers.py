"""One coroutine per S3 operation: read the request through the :class:`Exchange`, call the
cache nodes through :class:`~edgecache.common.client.EdgecacheClient`, build the response.

Every handler has the shape ``async (x: Exchange) -> Response`` and raises
:class:`~edgecache.common.errors.S3Error` for anything the client should see as an S3
error. Each is registered with :func:`serves` under the S3 action it serves and the
``s3.*`` request it sends (:data:`ROUTES`); an action that sends one request is named
after that request type of ``wire`` (the operation table), and :data:`HANDLERS` maps the
operation names :func:`~edgecache.gateway.operations.route` returns to the handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import anyio
from litestar import Response
from litestar.response import Stream

from edgecache.common import errors, names, wire
from edgecache.common.checksums import FULL_OBJECT, multipart_checksum
from edgecache.common.errors import IllegalLocationConstraintException
from edgecache.common.tokens import decode_token, encode_token
from edgecache.gateway import conditions, copysource, memory, postobject, shortcircuit, tagging, xml
from edgecache.gateway.exchange import LiveTrailers
from edgecache.gateway.filestream import FileStream
from edgecache.gateway.headers import (
    MAX_PART_BYTES,
    http_date,
    object_attributes,
    object_headers,
    parse_decimal,
    upload_digests,
    upload_size,
)
from edgecache.gateway.responses import StreamCut, empty, xml_response
from edgecache.gateway.zerocopy import ZEROCOPY_SEND

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange
    from edgecache.gateway.operations import Operation

__all__ = ["HANDLERS", "ROUTES", "Handler", "Route", "serves"]

Handler = Callable[["Exchange"], Awaitable[Response[Any]]]
R = TypeVar("R")

MAX_XML_BYTES = 4 * 1024 * 1024  # CompleteMultipartUpload with 10000 parts is ~1.5 MB
MAX_SMALL_XML_BYTES = 64 * 1024
MAX_BUCKETS = 10_000  # ListBuckets' largest page (max-buckets), S3's bucket quota
DELETE_CONCURRENCY = 16
COPY_TIMEOUT_S = 600.0  # a copy answers when its bytes are copied: up to 5 GiB, maybe cold
_LEGACY_REGION = "us-east-1"
_MAX_INT = 2147483647  # S3's largest integer query parameter
_CONDITIONAL_HEADERS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


@dataclass(frozen=True, slots=True)
class Route:
    """How the gateway serves one S3 action.

    Attributes:
        action: the S3 action, as :func:`~edgecache.gateway.operations.route` names it.
        handler: the coroutine that serves it.
        request: the ``s3.*`` request type it sends to the cache nodes (``None``: it
            answers with an error itself).
    """

    action: str
    handler: Handler
    request: type[wire.Request] | None


#: The gateway's half of the operation table: every S3 action, filled by :func:`serves`.
ROUTES: dict[str, Route] = {}


def serves(
    request: type[wire.Request] | None, *, action: str | None = None
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as the gateway's route for ``action``, which sends
    ``request``. ``action`` defaults to the request type's name: the operation table
    (``wire.Request``) names each request type after its S3 action."""

    def register(handler: Handler) -> Handler:
        name = action or (request.__name__ if request is not None else "")
        if not name or name in ROUTES:
            raise ValueError(f"no action, or a second route for {name!r}")
        ROUTES[name] = Route(action=name, handler=handler, request=request)
        return handler

    return register


def _expect(reply: wire.Reply, type_: type[R]) -> R:
    if not isinstance(reply, type_):
        raise errors.InternalError(f"expected {type_.__name__}, got {type(reply).__name__}")
    return reply


def _op(x: Exchange) -> Operation:
    assert x.op is not None
    return x.op


def _int_param(
    query: dict[str, str], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    """A numeric query parameter, clamped to ``high``.

    Raises:
        InvalidArgument: not a decimal integer, below ``low`` or above 2147483647.
    """
    value = query.get(name)
    if value is None or value == "":
        return default
    number = parse_decimal(value, max_digits=10)
    if number is None or not low <= number <= _MAX_INT:
        raise errors.InvalidArgument(
            f"Argument {name} must be an integer between {low} and {_MAX_INT}"
        )
    return min(number, high) if high is not None else number


def _check_key(op: Operation) -> None:
    names.validate_key(op.bucket, op.key)


# == service and buckets =========================================================================
@serves(wire.ListBuckets)
async def list_buckets(x: Exchange) -> Response[Any]:
    """ListBuckets (``GET /``) → ``<ListAllMyBucketsResult>``, by name; ``prefix``,
    ``bucket-region`` filter; ``max-buckets`` (1..10000, default all) and
    ``continuation-token`` page, and ``ContinuationToken`` resumes a truncated page.

    Raises:
        InvalidArgument: ``max-buckets`` outside 1..10000, a continuation token we did not
            make (empty included).
    """
    q = _op(x).query
    prefix = q.get("prefix", "")
    max_buckets = _int_param(q, "max-buckets", MAX_BUCKETS, low=1)
    if max_buckets > MAX_BUCKETS:
        raise errors.InvalidArgument(
            f"Argument max-buckets must be an integer between 1 and {MAX_BUCKETS}"
        )
    after = decode_token(q["continuation-token"]) if "continuation-token" in q else None
    reply = _expect(await x.gateway.client.request(wire.ListBuckets()), wire.BucketList)
    region = q.get("bucket-region")
    buckets = sorted(
        (
            b
            for b in reply.buckets
            if b.name.startswith(prefix)
            and (after is None or b.name > after)
            and region in (None, x.gateway.config.region)
        ),
        key=lambda b: b.name,
    )
    page = buckets[:max_buckets]
    token = encode_token(page[-1].name) if len(buckets) > len(page) else ""
    body = xml.list_buckets_result(
        page,
        owner=x.gateway.owner,
        region=x.gateway.config.region,
        continuation_token=token,
        prefix=q.get("prefix"),
    )
    return xml_response(x, body)


@serves(wire.CreateBucket)
async def create_bucket(x: Exchange) -> Response[Any]:
    """CreateBucket (``PUT /b``, optional ``<CreateBucketConfiguration>``).

    Raises:
        InvalidBucketName, IllegalLocationConstraintException (another region),
        MalformedXML, BucketAlreadyOwnedByYou (outside us-east-1, where re-creating one's
        own bucket is a 200 that changes nothing).
    """
    op = _op(x)
    names.validate_bucket_name(op.bucket)
    constraint = xml.parse_create_bucket(await x.read_body(MAX_SMALL_XML_BYTES))
    region = x.gateway.config.region
    if constraint and constraint != region:
        raise IllegalLocationConstraintException(
            f"The {constraint} location constraint is incompatible for the region specific "
            f"endpoint this request was sent to.",
            resource=op.bucket,
        )
    try:
        await x.gateway.client.request(wire.CreateBucket(bucket=op.bucket))
    except errors.BucketAlreadyOwnedByYou:
        if region != _LEGACY_REGION:
            raise
        # us-east-1 answers its owner's re-creation with 200 (and keeps the bucket as it is)
    return empty(x, headers={"location": f"/{op.bucket}"})


@serves(wire.HeadBucket)
async def head_bucket(x: Exchange) -> Response[Any]:
    """HeadBucket (``HEAD /b``) → 200 with ``x-amz-bucket-region``. Raises: NoSuchBucket."""
    op = _op(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return empty(x, headers={"x-amz-bucket-region": x.gateway.config.region})


@serves(wire.DeleteBucket)
async def delete_bucket(x: Exchange) -> Response[Any]:
    """DeleteBucket (``DELETE /b``) → 204. Raises: NoSuchBucket, BucketNotEmpty."""
    op = _op(x)
    await x.gateway.client.request(wire.DeleteBucket(bucket=op.bucket))
    return empty(x, status=204)


@serves(wire.HeadBucket, action="GetBucketLocation")
async def get_bucket_location(x: Exchange) -> Response[Any]:
    """GetBucketLocation (``GET /b?location``): empty for us-east-1, else the region."""
    op = _op(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return xml_response(x, xml.location_constraint(x.gateway.config.region))


@serves(wire.HeadBucket, action="GetBucketAcl")
async def get_bucket_acl(x: Exchange) -> Response[Any]:
    """GetBucketAcl (``GET /b?acl``): the canned ACL ``private``, the owner's
    ``FULL_CONTROL`` (the only ACL there is: see :mod:`.unsupported`). Raises: NoSuchBucket."""
    op = _op(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return xml_response(x, xml.access_control_policy(x.gateway.owner))


def _encoding_url(query: dict[str, str]) -> bool:
    encoding = query.get("encoding-type")
    if encoding is None:
        return False
    if encoding != "url":
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
    return True


@serves(wire.ListObjects, action="ListObjectsV2")
async def list_objects_v2(x: Exchange) -> Response[Any]:
    """ListObjectsV2 (``GET /b?list-type=2``): ``max-keys`` capped at 1000; ``Owner`` with
    ``fetch-owner=true``; ``encoding-type=url`` encodes every name in the result.

    Raises:
        InvalidArgument: bad ``max-keys``, ``encoding-type`` or continuation token.
        NoSuchBucket.
    """
    op = _op(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = _int_param(q, "max-keys", 1000, low=0, high=1000)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    start_after, token = q.get("start-after", ""), q.get("continuation-token", "")
    if "continuation-token" in q and not token:
        raise errors.InvalidArgument("The continuation token provided is incorrect")
    reply = await x.gateway.client.request(
        wire.ListObjects(
            bucket=op.bucket,
            prefix=prefix,
            delimiter=delimiter,
            max_keys=max_keys,
            start_after=start_after,
            continuation_token=token,
        )
    )
    result = _expect(reply, wire.ListObjectsResult)
    body = xml.list_objects_v2_result(
        result,
        bucket=op.bucket,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=max_keys,
        start_after=start_after,
        continuation_token=token,
        encoding_url=encoding_url,
        owner=x.gateway.owner if q.get("fetch-owner") == "true" else None,
    )
    return xml_response(x, body)


@serves(wire.ListObjects)
async def list_objects(x: Exchange) -> Response[Any]:
    """ListObjects v1 (``GET /b``): ``marker``, ``NextMarker`` with a delimiter, ``Owner`` of
    each object; ``encoding-type=url`` encodes every name in the result.

    Raises:
        InvalidArgument: bad ``max-keys`` or ``encoding-type``. NoSuchBucket.
    """
    op = _op(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = _int_param(q, "max-keys", 1000, low=0, high=1000)
    prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
    reply = await x.gateway.client.request(
        wire.ListObjects(
            bucket=op.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, marker=marker
        )
    )
    result = _expect(reply, wire.ListObjectsResult)
    body = xml.list_objects_result(
        result,
        bucket=op.bucket,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=max_keys,
        marker=marker,
        encoding_url=encoding_url,
        owner=x.gateway.owner,  # v1 always names the owner
    )
    return xml_response(x, body)


@serves(wire.DeleteObject, action="DeleteObjects")
async def delete_objects(x: Exchange) -> Response[Any]:
    """DeleteObjects: up to 1000 keys, deleted with bounded concurrency; per-key errors
    go in the result, as S3 does."""
    op = _op(x)
    keys, quiet = xml.parse_delete(await x.read_body(MAX_XML_BYTES))
    client = x.gateway.client
    gate = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(key: str) -> errors.S3Error | None:
        async with gate:
            try:
                names.validate_key(op.bucket, key)
                await client.request(wire.DeleteObject(bucket=op.bucket, key=key))
            except errors.S3Error as exc:
                return exc
            return None

    outcomes = await asyncio.gather(*(one(key) for key in keys))
    deleted = [] if quiet else [k for k, e in zip(keys, outcomes, strict=True) if e is None]
    failed = [(k, e) for k, e in zip(keys, outcomes, strict=True) if e is not None]
    if failed and all(isinstance(e, errors.NoSuchBucket) for _, e in failed):
        raise failed[0][1]
    return xml_response(x, xml.delete_result(deleted, failed))


# == objects =====================================================================================
def _no_conditional_write(x: Exchange) -> None:
    if "if-none-match" in x.headers or "if-match" in x.headers:
        raise errors.NotImplementedError_(
            "Conditional writes (If-Match, If-None-Match) are not implemented."
        )


def _checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-checksum-{algorithm}": value for algorithm, value in checksums.items()}


async def _upload(x: Exchange, request: wire.PutObject | wire.UploadPart) -> wire.Reply:
    """Stream the verified body to a cache node; trailing checksums follow at its end.

    Raises:
        EntityTooLarge: the body grows past 5 GiB (when its length was not announced).
        S3Error: a failed body check or the node's error; the node then stores nothing.
    """
    body = x.body()
    return await x.gateway.client.put_object(
        request,
        _at_most(body, MAX_PART_BYTES),
        trailers=LiveTrailers(body),  # type: ignore[arg-type]
    )


async def _at_most(body: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for piece in body:
        size += len(piece)
        if size > limit:
            raise errors.EntityTooLarge()
        yield piece


@serves(wire.PutObject)
async def put_object(x: Exchange) -> Response[Any]:
    """PutObject (``PUT /b/k``), streamed → 200 with ``ETag`` and checksum headers.

    Raises:
        MissingContentLength, EntityTooLarge, InvalidDigest, InvalidRequest, BadDigest,
        MetadataTooLarge, NoSuchBucket, the body's verification errors; with ``If-Match`` /
        ``If-None-Match: *``: PreconditionFailed, NoSuchKey, ConditionalRequestConflict.
    """
    op = _op(x)
    _check_key(op)
    condition = conditions.write_condition(x.headers)
    content_type, metadata, stored = object_attributes(x.headers)
    content_md5, checksums = upload_digests(x.headers)
    request = wire.PutObject(
        bucket=op.bucket,
        key=op.key,
        size=upload_size(x.headers),
        content_type=content_type,
        metadata=metadata,
        headers=stored,
        content_md5=content_md5,
        checksums=checksums,
        condition=condition,
        tags=tagging.header_tags(x.headers),
    )
    info = _expect(await _upload(x, request), wire.ObjectInfo)
    headers = {"etag": f'"{info.etag}"', **_checksum_headers(info.checksums)}
    if info.checksums:
        headers["x-amz-checksum-type"] = FULL_OBJECT  # a single PUT's checksum covers it all
    return empty(x, headers=headers)


@serves(wire.UploadPart)
async def upload_part(x: Exchange) -> Response[Any]:
    """UploadPart (``PUT /b/k?partNumber=N&uploadId=U``), streamed → ``ETag``.

    Raises:
        InvalidArgument: part number outside 1..10000. NoSuchUpload, and as PutObject.
    """
    op = _op(x)
    _check_key(op)
    part_number = _int_param(op.query, "partNumber", 0, low=1)
    if part_number > xml.MAX_PARTS:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    content_md5, checksums = upload_digests(x.headers)
    request = wire.UploadPart(
        bucket=op.bucket,
        key=op.key,
        upload_id=_upload_id(op),
        part_number=part_number,
        size=upload_size(x.headers),
        content_md5=content_md5,
        checksums=checksums,
    )
    part = _expect(await _upload(x, request), wire.PartInfo)
    return empty(x, headers={"etag": f'"{part.etag}"', **_checksum_headers(part.checksums)})


def _part_number(x: Exchange, op: Operation) -> int | None:
    """GetObject/HeadObject ``?partNumber=N`` (1..10000), or ``None``.

    Raises:
        InvalidArgument: not a number in 1..10000. InvalidRequest: sent with ``Range``.
    """
    if "partNumber" not in op.query:
        return None
    number = _int_param(op.query, "partNumber", 0, low=1)
    if number > xml.MAX_PARTS:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    if x.range_header() is not None:
        raise errors.InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    return number


def _part_headers(info: wire.ObjectInfo, part: int | None, headers: dict[str, str]) -> dict[str, str]:
    """``x-amz-mp-parts-count`` on a ``partNumber`` read of a multipart object, as S3 sends."""
    if part is not None and info.parts_count is not None:
        headers["x-amz-mp-parts-count"] = str(info.parts_count)
    return headers


def _status_of(info: wire.ObjectInfo) -> int:
    return 206 if info.range_first is not None else 200


@serves(wire.HeadObject)
async def head_object(x: Exchange) -> Response[Any]:
    """HeadObject (``HEAD /b/k``): GetObject's headers, no body; 304/412 preconditions."""
    op = _op(x)
    _check_key(op)
    part = _part_number(x, op)
    cached = await memory.held(x, op)
    if cached is not None:
        return memory.answer(x, op, cached, head=True)
    reply = await x.gateway.client.request(
        wire.HeadObject(bucket=op.bucket, key=op.key, range=x.range_header(), part_number=part)
    )
    info = _expect(reply, wire.ObjectInfo)
    if conditions.not_modified(x.headers, info.etag, info.last_modified):
        return memory.not_modified(x, info)
    headers = _part_headers(info, part, object_headers(info, query=op.query, checksum_mode=x.checksum_mode()))
    return empty(x, status=_status_of(info), headers=headers)


@serves(wire.GetObject)
async def get_object(x: Exchange) -> Response[Any]:
    """GetObject, streamed: the first piece is awaited before the headers go out (so an
    early failure is still a proper S3 error); a later failure cuts the connection.

    Conditional requests are answered from a HeadObject first, so a 304 or 412 does not
    start a download (nor an origin fill at the node); they are checked again against
    the download's own metadata in case the object changed in between.

    Small objects are answered from the gateway's memory tier when it holds them, and a
    whole-object GET that misses it fills it (:mod:`edgecache.gateway.memory`).
    """
    op = _op(x)
    _check_key(op)
    part = _part_number(x, op)
    cached = await memory.held(x, op)
    if cached is not None:
        return memory.answer(x, op, cached, head=False)
    fill = memory.start_fill(x, op) if part is None else None
    if _CONDITIONAL_HEADERS.intersection(x.headers):
        reply = await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
        head = _expect(reply, wire.ObjectInfo)
        if conditions.not_modified(x.headers, head.etag, head.last_modified):
            return memory.not_modified(x, head)
    # a fill's landed bytes go from its file to the socket (zerocopy.py) when the server can
    files = ZEROCOPY_SEND in (x.request.scope.get("extensions") or ())
    info, body = await shortcircuit.get_object(  # from this host's chunk files when it can
        x.gateway.client,
        x.gateway.local,
        wire.GetObject(bucket=op.bucket, key=op.key, range=x.range_header(), part_number=part),
        zero_copy=(lambda info: not memory.Collector.wanted(x, fill, info)) if files else None,
    )
    collector = memory.Collector(x, fill, info)
    try:
        # started before anything else: closing a download that never started would not
        # release its subscription nor tell the node to stop
        first = await anext(body, None)
        if conditions.not_modified(x.headers, info.etag, info.last_modified):
            await _close(body)
            return memory.not_modified(x, info)
        headers = _part_headers(info, part, object_headers(info, query=op.query, checksum_mode=x.checksum_mode()))
    except BaseException:
        await _close(body)
        raise
    status = _status_of(info)
    out = x.response_headers()
    out.update(headers)
    if first is None:  # empty object (or range): nothing to stream
        collector.complete()
        return Response(b"", status_code=status, headers=out, media_type=info.content_type)
    x.deferred = True
    return (FileStream if files else Stream)(
        _send(x, status, first, body, collector),
        status_code=status,
        headers=out,
        media_type=info.content_type,
    )


async def _close(body: AsyncIterator[bytes]) -> None:
    """Close a download iterator even while the surrounding task is being cancelled (this
    tells the cache node to stop sending)."""
    aclose = getattr(body, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await aclose()


async def _send(
    x: Exchange,
    status: int,
    first: bytes,
    body: AsyncIterator[bytes],
    collector: memory.Collector,
) -> AsyncIterator[bytes]:
    """The streamed body of a GetObject; logs the request when it ends, and hands a whole
    small object to the memory tier.

    Raises:
        StreamCut: the download broke mid-way; the server must drop the connection.
    """
    error: errors.S3Error | None = None
    completed = False
    try:
        x.bytes_out += len(first)
        collector.add(first)
        yield first
        async for piece in body:
            x.bytes_out += len(piece)
            collector.add(piece)
            yield piece
        completed = True
        collector.complete()
    except errors.S3Error as exc:
        error = exc
        raise StreamCut(f"{exc.code}: {exc.message}") from exc
    except Exception as exc:
        error = errors.InternalError(f"{type(exc).__name__}: {exc}")
        raise StreamCut(str(exc)) from exc
    finally:
        await _close(body)
        x.finish(status, error=error, cut=not completed)


@serves(wire.DeleteObject)
async def delete_object(x: Exchange) -> Response[Any]:
    """DeleteObject (``DELETE /b/k``) → 204, also for a missing key."""
    op = _op(x)
    _check_key(op)
    await x.gateway.client.request(wire.DeleteObject(bucket=op.bucket, key=op.key))
    return empty(x, status=204)


# == multipart uploads ===========================================================================
def _upload_id(op: Operation) -> str:
    upload_id = op.query.get("uploadId", "")
    if not upload_id:
        raise errors.NoSuchUpload(resource=op.resource)
    return upload_id


@serves(wire.CreateMultipartUpload)
async def create_multipart_upload(x: Exchange) -> Response[Any]:
    """CreateMultipartUpload (``POST /b/k?uploads``) → ``<InitiateMultipartUploadResult>``;
    ``x-amz-checksum-algorithm`` / ``x-amz-checksum-type`` choose the object's checksum and
    are echoed.

    Raises:
        InvalidRequest: an unknown checksum algorithm or type, or a type the algorithm
            does not allow (:func:`~edgecache.common.checksums.multipart_checksum`).
    """
    op = _op(x)
    _check_key(op)
    _no_conditional_write(x)
    content_type, metadata, stored = object_attributes(x.headers)
    algorithm, checksum_type = multipart_checksum(
        x.headers.get("x-amz-checksum-algorithm"), x.headers.get("x-amz-checksum-type")
    )
    reply = await x.gateway.client.request(
        wire.CreateMultipartUpload(
            bucket=op.bucket,
            key=op.key,
            content_type=content_type,
            metadata=metadata,
            headers=stored,
            checksum_algorithm=algorithm,
            checksum_type=checksum_type,
            tags=tagging.header_tags(x.headers),
        )
    )
    body = xml.initiate_multipart_result(_expect(reply, wire.MultipartUpload))
    headers = (
        {"x-amz-checksum-algorithm": algorithm.upper(), "x-amz-checksum-type": checksum_type}
        if algorithm
        else {}
    )
    return xml_response(x, body, headers=headers)


@serves(wire.CompleteMultipartUpload)
async def complete_multipart_upload(x: Exchange) -> Response[Any]:
    """CompleteMultipartUpload (``POST /b/k?uploadId=U``, XML list of parts).

    Raises:
        MalformedXML, InvalidPartOrder, InvalidPart, EntityTooSmall, NoSuchUpload; BadDigest
        (an ``x-amz-checksum-<alg>`` of the whole object that does not match); with
        ``If-Match`` / ``If-None-Match: *``: PreconditionFailed, NoSuchKey,
        ConditionalRequestConflict.
    """
    op = _op(x)
    _check_key(op)
    condition = conditions.write_condition(x.headers)
    upload_id = _upload_id(op)
    _, whole = upload_digests(x.headers)  # the whole object's checksum, if sent
    parts = xml.parse_complete_multipart(await x.read_body(MAX_XML_BYTES))
    reply = await x.gateway.client.request(
        wire.CompleteMultipartUpload(
            bucket=op.bucket,
            key=op.key,
            upload_id=upload_id,
            parts=parts,
            condition=condition,
            checksums=whole,
        )
    )
    info = _expect(reply, wire.ObjectInfo)
    scheme = x.request.scope.get("scheme", "http")
    host = x.headers.get("host", "")
    location = f"{scheme}://{host}/{op.bucket}/{quote(op.key, safe='/')}"
    return xml_response(x, xml.complete_multipart_result(info, location=location))


@serves(wire.AbortMultipartUpload)
async def abort_multipart_upload(x: Exchange) -> Response[Any]:
    """AbortMultipartUpload (``DELETE /b/k?uploadId=U``) → 204. Raises: NoSuchUpload."""
    op = _op(x)
    _check_key(op)
    await x.gateway.client.request(
        wire.AbortMultipartUpload(bucket=op.bucket, key=op.key, upload_id=_upload_id(op))
    )
    return empty(x, status=204)


@serves(wire.ListParts)
async def list_parts(x: Exchange) -> Response[Any]:
    """ListParts (``GET /b/k?uploadId=U``): ``max-parts``, ``part-number-marker``."""
    op = _op(x)
    _check_key(op)
    max_parts = _int_param(op.query, "max-parts", 1000, low=0, high=1000)
    marker = _int_param(op.query, "part-number-marker", 0, low=0)
    reply = await x.gateway.client.request(
        wire.ListParts(
            bucket=op.bucket,
            key=op.key,
            upload_id=_upload_id(op),
            max_parts=max_parts,
            part_number_marker=marker,
        )
    )
    result = _expect(reply, wire.ListPartsResult)
    return xml_response(
        x, xml.list_parts_result(result, max_parts=max_parts, part_number_marker=marker)
    )


# == server-side copies, upload and version listings ==============================================
@serves(wire.CopyObject)
async def copy_object(x: Exchange) -> Response[Any]:
    """CopyObject (``PUT /b/k`` with ``x-amz-copy-source``) → ``<CopyObjectResult>``; the
    bytes are copied by a cache node, never through the gateway.

    Raises:
        InvalidArgument (bad source, directive), InvalidRequest (a copy onto itself that
        changes nothing), NoSuchBucket, NoSuchKey, PreconditionFailed (source or
        destination preconditions), ConditionalRequestConflict, MetadataTooLarge.
    """
    op = _op(x)
    _check_key(op)
    bucket, key = copysource.copy_source(x.headers)
    replace = copysource.replaces_metadata(x.headers)
    if (bucket, key) == (op.bucket, op.key) and not replace:
        raise errors.InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without "
            "changing the object's metadata, storage class, website redirect location or encryption attributes."
        )
    condition = conditions.write_condition(x.headers)
    content_type, metadata, stored = object_attributes(x.headers)
    tags = tagging.copy_tags(x.headers)
    source = await copysource.checked_source(x.gateway.client, x.headers, bucket, key)
    reply = await x.gateway.client.request(
        wire.CopyObject(
            bucket=op.bucket,
            key=op.key,
            source=source,
            replace_metadata=replace,
            content_type=content_type,
            metadata=metadata,
            headers=stored,
            condition=condition,
            tags=tags,
        ),
        timeout_s=max(COPY_TIMEOUT_S, x.gateway.client.timeout_s),
    )
    return xml_response(x, xml.copy_object_result(_expect(reply, wire.ObjectInfo)))


@serves(wire.UploadPartCopy)
async def upload_part_copy(x: Exchange) -> Response[Any]:
    """UploadPartCopy (``PUT /b/k?partNumber=N&uploadId=U`` with ``x-amz-copy-source`` and
    optional ``x-amz-copy-source-range``) → ``<CopyPartResult>``.

    Raises:
        InvalidArgument (part number, source, range syntax), InvalidRange (range beyond the
        source), NoSuchUpload, NoSuchBucket, NoSuchKey, PreconditionFailed.
    """
    op = _op(x)
    _check_key(op)
    part_number = _int_param(op.query, "partNumber", 0, low=1)
    if part_number > xml.MAX_PARTS:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    bucket, key = copysource.copy_source(x.headers)
    span = copysource.copy_source_range(x.headers)
    source = await copysource.checked_source(x.gateway.client, x.headers, bucket, key, span=span)
    reply = await x.gateway.client.request(
        wire.UploadPartCopy(
            bucket=op.bucket, key=op.key, upload_id=_upload_id(op), part_number=part_number, source=source
        ),
        timeout_s=max(COPY_TIMEOUT_S, x.gateway.client.timeout_s),
    )
    return xml_response(x, xml.copy_part_result(_expect(reply, wire.PartInfo)))


@serves(wire.ListMultipartUploads)
async def list_multipart_uploads(x: Exchange) -> Response[Any]:
    """ListMultipartUploads (``GET /b?uploads``): ``prefix``, ``delimiter``, ``key-marker``,
    ``upload-id-marker``, ``max-uploads`` (capped at 1000), ``encoding-type``.

    Raises:
        InvalidArgument (bad ``max-uploads`` or ``encoding-type``), NoSuchBucket.
    """
    op = _op(x)
    q = op.query
    encoding_url = _encoding_url(q)
    request = wire.ListMultipartUploads(
        bucket=op.bucket,
        prefix=q.get("prefix", ""),
        delimiter=q.get("delimiter", ""),
        key_marker=q.get("key-marker", ""),
        upload_id_marker=q.get("upload-id-marker", ""),
        max_uploads=_int_param(q, "max-uploads", 1000, low=0, high=1000),
    )
    result = _expect(await x.gateway.client.request(request), wire.ListMultipartUploadsResult)
    body = xml.list_multipart_uploads_result(
        result, bucket=op.bucket, request=request, encoding_url=encoding_url, owner=x.gateway.owner
    )
    return xml_response(x, body)


@serves(wire.ListObjects, action="ListObjectVersions")
async def list_object_versions(x: Exchange) -> Response[Any]:
    """ListObjectVersions (``GET /b?versions``) of an unversioned bucket: each object is its
    one version ``null``. ``key-marker`` resumes after that key (its only version is
    ``null``, so ``version-id-marker`` changes nothing).

    Raises:
        InvalidArgument (bad ``max-keys``, ``encoding-type``, or a ``version-id-marker``
        without ``key-marker``), NoSuchBucket.
    """
    op = _op(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = _int_param(q, "max-keys", 1000, low=0, high=1000)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, version_id_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
    if version_id_marker and not key_marker:
        raise errors.InvalidArgument("A version-id marker cannot be specified without a key marker.")
    reply = await x.gateway.client.request(
        wire.ListObjects(
            bucket=op.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, marker=key_marker
        )
    )
    body = xml.list_object_versions_result(
        _expect(reply, wire.ListObjectsResult),
        bucket=op.bucket,
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker,
        version_id_marker=version_id_marker,
        max_keys=max_keys,
        encoding_url=encoding_url,
        owner=x.gateway.owner,
    )
    return xml_response(x, body)
# == browser uploads =============================================================================
@serves(wire.PutObject, action="PostObject")
async def post_object(x: Exchange) -> Response[Any]:
    """PostObject (``POST /b``, ``multipart/form-data``): a browser upload signed by its
    policy; see :mod:`edgecache.gateway.postobject`."""
    return await postobject.serve(x)


# == object attributes ===========================================================================
@serves(wire.HeadObject, action="GetObjectAttributes")
async def get_object_attributes(x: Exchange) -> Response[Any]:
    """GetObjectAttributes (``GET /b/k?attributes``, ``x-amz-object-attributes: ETag,
    Checksum, ObjectParts, StorageClass, ObjectSize``) → ``<GetObjectAttributesResponse>``
    with ``Last-Modified``; answered from a HeadObject.

    Raises:
        InvalidArgument: the header is missing, empty or names another attribute.
        NoSuchBucket, NoSuchKey.
    """
    op = _op(x)
    _check_key(op)
    asked = [a.strip() for a in x.headers.get("x-amz-object-attributes", "").split(",") if a.strip()]
    if not asked or any(a not in xml.OBJECT_ATTRIBUTES for a in asked):
        raise errors.InvalidArgument("Invalid attribute name specified.")
    reply = await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
    info = _expect(reply, wire.ObjectInfo)
    return xml_response(
        x,
        xml.get_object_attributes_result(info, asked),
        headers={"last-modified": http_date(info.last_modified)},
    )


# == object tagging ==============================================================================
@serves(wire.PutObjectTagging)
async def put_object_tagging(x: Exchange) -> Response[Any]:
    """PutObjectTagging (``PUT /b/k?tagging``, ``<Tagging>`` body of at most 64 KiB) → 200;
    the tags replace the object's (:mod:`.tagging` has S3's rules).

    Raises:
        MalformedXML, InvalidTag, NoSuchBucket, NoSuchKey.
    """
    op = _op(x)
    _check_key(op)
    tags = tagging.validate(xml.parse_tagging(await x.read_body(MAX_SMALL_XML_BYTES)))
    await x.gateway.client.request(wire.PutObjectTagging(bucket=op.bucket, key=op.key, tags=tags))
    return empty(x)


@serves(wire.GetObjectTagging)
async def get_object_tagging(x: Exchange) -> Response[Any]:
    """GetObjectTagging (``GET /b/k?tagging``) → ``<Tagging><TagSet>``, empty for an
    untagged object. Raises: NoSuchBucket, NoSuchKey."""
    op = _op(x)
    _check_key(op)
    reply = await x.gateway.client.request(wire.GetObjectTagging(bucket=op.bucket, key=op.key))
    return xml_response(x, xml.tagging_result(_expect(reply, wire.Tagging).tags))


@serves(wire.DeleteObjectTagging)
async def delete_object_tagging(x: Exchange) -> Response[Any]:
    """DeleteObjectTagging (``DELETE /b/k?tagging``) → 204. Raises: NoSuchBucket, NoSuchKey."""
    op = _op(x)
    _check_key(op)
    await x.gateway.client.request(wire.DeleteObjectTagging(bucket=op.bucket, key=op.key))
    return empty(x, status=204)


# == what we do not serve ========================================================================
@serves(wire.HeadObject, action="GetObjectAcl")
async def get_object_acl(x: Exchange) -> Response[Any]:
    """GetObjectAcl (``GET /b/k?acl``): as GetBucketAcl, for an object that exists.

    Raises: NoSuchBucket, NoSuchKey."""
    op = _op(x)
    _check_key(op)
    await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
    return xml_response(x, xml.access_control_policy(x.gateway.owner))


@serves(None, action="NotImplemented")
async def not_implemented(x: Exchange) -> Response[Any]:
    """Any operation or sub-resource we do not serve → 501 NotImplemented."""
    detail = _op(x).detail
    raise errors.NotImplementedError_(
        f"{errors.NotImplementedError_.default_message} ({detail})" if detail else None
    )


@serves(None, action="MethodNotAllowed")
async def method_not_allowed(x: Exchange) -> Response[Any]:
    """A method the target does not support → 405 MethodNotAllowed."""
    raise errors.MethodNotAllowed(resource=_op(x).resource)


#: The handler of every S3 action :func:`~edgecache.gateway.operations.route` names.
HANDLERS: dict[str, Handler] = {action: r.handler for action, r in ROUTES.items()}
