"""S3 handlers of objects: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects,
POST uploads, GetObjectAttributes, GetObjectAcl; and the streamed body upload that
UploadPart shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Response
from litestar.response import Stream

from edgecache.common import errors, names, wire
from edgecache.common.checksums import FULL_OBJECT
from edgecache.gateway import conditions, memory, postobject, shortcircuit, tagging, xml
from edgecache.gateway.exchange import LiveTrailers
from edgecache.gateway.filestream import FileStream
from edgecache.gateway.handlers.routes import (
    MAX_XML_BYTES,
    check_key,
    expect_reply,
    int_param,
    operation_of,
    serves,
)
from edgecache.gateway.headers import (
    MAX_PART_BYTES,
    http_date,
    object_attributes,
    object_headers,
    upload_digests,
    upload_size,
)
from edgecache.gateway.responses import StreamCut, empty, xml_response
from edgecache.gateway.zerocopy import ZEROCOPY_SEND

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange
    from edgecache.gateway.operations import Operation

__all__ = [
    "DELETE_CONCURRENCY",
    "checksum_headers",
    "delete_object",
    "delete_objects",
    "get_object",
    "get_object_acl",
    "get_object_attributes",
    "head_object",
    "post_object",
    "put_object",
    "upload_body",
]

DELETE_CONCURRENCY = 16
_CONDITIONAL_HEADERS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


@serves(wire.DeleteObject, action="DeleteObjects")
async def delete_objects(x: Exchange) -> Response[Any]:
    """DeleteObjects: up to 1000 keys, deleted with bounded concurrency; per-key errors
    go in the result, as S3 does."""
    op = operation_of(x)
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


def checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-checksum-{algorithm}": value for algorithm, value in checksums.items()}


async def upload_body(x: Exchange, request: wire.PutObject | wire.UploadPart) -> wire.Reply:
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
    op = operation_of(x)
    check_key(op)
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
    info = expect_reply(await upload_body(x, request), wire.ObjectInfo)
    headers = {"etag": f'"{info.etag}"', **checksum_headers(info.checksums)}
    if info.checksums:
        headers["x-amz-checksum-type"] = FULL_OBJECT  # a single PUT's checksum covers it all
    return empty(x, headers=headers)


def _part_number(x: Exchange, op: Operation) -> int | None:
    """GetObject/HeadObject ``?partNumber=N`` (1..10000), or ``None``.

    Raises:
        InvalidArgument: not a number in 1..10000. InvalidRequest: sent with ``Range``.
    """
    if "partNumber" not in op.query:
        return None
    number = int_param(op.query, "partNumber", 0, low=1)
    if number > xml.MAX_PARTS:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    if x.range_header() is not None:
        raise errors.InvalidRequest(
            "Cannot specify both Range header and partNumber query parameter"
        )
    return number


def _part_headers(
    info: wire.ObjectInfo, part: int | None, headers: dict[str, str]
) -> dict[str, str]:
    """``x-amz-mp-parts-count`` on a ``partNumber`` read of a multipart object, as S3 sends."""
    if part is not None and info.parts_count is not None:
        headers["x-amz-mp-parts-count"] = str(info.parts_count)
    return headers


def _status_of(info: wire.ObjectInfo) -> int:
    return 206 if info.range_first is not None else 200


@serves(wire.HeadObject)
async def head_object(x: Exchange) -> Response[Any]:
    """HeadObject (``HEAD /b/k``): GetObject's headers, no body; 304/412 preconditions."""
    op = operation_of(x)
    check_key(op)
    part = _part_number(x, op)
    cached = await memory.held(x, op)
    if cached is not None:
        return memory.answer(x, op, cached, head=True)
    reply = await x.gateway.client.request(
        wire.HeadObject(bucket=op.bucket, key=op.key, range=x.range_header(), part_number=part)
    )
    info = expect_reply(reply, wire.ObjectInfo)
    if conditions.not_modified(x.headers, info.etag, info.last_modified):
        return memory.not_modified(x, info)
    headers = _part_headers(
        info, part, object_headers(info, query=op.query, checksum_mode=x.checksum_mode())
    )
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
    op = operation_of(x)
    check_key(op)
    part = _part_number(x, op)
    cached = await memory.held(x, op)
    if cached is not None:
        return memory.answer(x, op, cached, head=False)
    fill = memory.start_fill(x, op) if part is None else None
    if _CONDITIONAL_HEADERS.intersection(x.headers):
        reply = await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
        head = expect_reply(reply, wire.ObjectInfo)
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
        headers = _part_headers(
            info, part, object_headers(info, query=op.query, checksum_mode=x.checksum_mode())
        )
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
    op = operation_of(x)
    check_key(op)
    await x.gateway.client.request(wire.DeleteObject(bucket=op.bucket, key=op.key))
    return empty(x, status=204)


@serves(wire.PutObject, action="PostObject")
async def post_object(x: Exchange) -> Response[Any]:
    """PostObject (``POST /b``, ``multipart/form-data``): a browser upload signed by its
    policy; see :mod:`edgecache.gateway.postobject`."""
    return await postobject.serve(x)


@serves(wire.HeadObject, action="GetObjectAttributes")
async def get_object_attributes(x: Exchange) -> Response[Any]:
    """GetObjectAttributes (``GET /b/k?attributes``, ``x-amz-object-attributes: ETag,
    Checksum, ObjectParts, StorageClass, ObjectSize``) → ``<GetObjectAttributesResponse>``
    with ``Last-Modified``; answered from a HeadObject.

    Raises:
        InvalidArgument: the header is missing, empty or names another attribute.
        NoSuchBucket, NoSuchKey.
    """
    op = operation_of(x)
    check_key(op)
    asked = [
        a.strip() for a in x.headers.get("x-amz-object-attributes", "").split(",") if a.strip()
    ]
    if not asked or any(a not in xml.OBJECT_ATTRIBUTES for a in asked):
        raise errors.InvalidArgument("Invalid attribute name specified.")
    reply = await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
    info = expect_reply(reply, wire.ObjectInfo)
    return xml_response(
        x,
        xml.get_object_attributes_result(info, asked),
        headers={"last-modified": http_date(info.last_modified)},
    )


@serves(wire.HeadObject, action="GetObjectAcl")
async def get_object_acl(x: Exchange) -> Response[Any]:
    """GetObjectAcl (``GET /b/k?acl``): as GetBucketAcl, for an object that exists.

    Raises: NoSuchBucket, NoSuchKey."""
    op = operation_of(x)
    check_key(op)
    await x.gateway.client.request(wire.HeadObject(bucket=op.bucket, key=op.key))
    return xml_response(x, xml.access_control_policy(x.gateway.owner))
