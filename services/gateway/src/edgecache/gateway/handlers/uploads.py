"""S3 handlers of multipart uploads: CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload, ListParts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Response

from edgecache.common import errors, wire
from edgecache.common.checksums import multipart_checksum
from edgecache.gateway import conditions, tagging, xml
from edgecache.gateway.handlers.objects import checksum_headers, upload_body
from edgecache.gateway.handlers.routes import (
    MAX_XML_BYTES,
    check_key,
    expect_reply,
    int_param,
    operation_of,
    serves,
    upload_id_of,
)
from edgecache.gateway.headers import (
    object_attributes,
    upload_digests,
    upload_size,
)
from edgecache.gateway.responses import empty, xml_response

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = [
    "abort_multipart_upload",
    "complete_multipart_upload",
    "create_multipart_upload",
    "list_parts",
    "upload_part",
]


def _no_conditional_write(x: Exchange) -> None:
    if "if-none-match" in x.headers or "if-match" in x.headers:
        raise errors.NotImplementedError_(
            "Conditional writes (If-Match, If-None-Match) are not implemented."
        )


@serves(wire.UploadPart)
async def upload_part(x: Exchange) -> Response[Any]:
    """UploadPart (``PUT /b/k?partNumber=N&uploadId=U``), streamed → ``ETag``.

    Raises:
        InvalidArgument: part number outside 1..10000. NoSuchUpload, and as PutObject.
    """
    op = operation_of(x)
    check_key(op)
    part_number = int_param(op.query, "partNumber", 0, low=1)
    if part_number > xml.MAX_PARTS:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    content_md5, checksums = upload_digests(x.headers)
    request = wire.UploadPart(
        bucket=op.bucket,
        key=op.key,
        upload_id=upload_id_of(op),
        part_number=part_number,
        size=upload_size(x.headers),
        content_md5=content_md5,
        checksums=checksums,
    )
    part = expect_reply(await upload_body(x, request), wire.PartInfo)
    return empty(x, headers={"etag": f'"{part.etag}"', **checksum_headers(part.checksums)})


@serves(wire.CreateMultipartUpload)
async def create_multipart_upload(x: Exchange) -> Response[Any]:
    """CreateMultipartUpload (``POST /b/k?uploads``) → ``<InitiateMultipartUploadResult>``;
    ``x-amz-checksum-algorithm`` / ``x-amz-checksum-type`` choose the object's checksum and
    are echoed.

    Raises:
        InvalidRequest: an unknown checksum algorithm or type, or a type the algorithm
            does not allow (:func:`~edgecache.common.checksums.multipart_checksum`).
    """
    op = operation_of(x)
    check_key(op)
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
    body = xml.initiate_multipart_result(expect_reply(reply, wire.MultipartUpload))
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
    op = operation_of(x)
    check_key(op)
    condition = conditions.write_condition(x.headers)
    upload_id = upload_id_of(op)
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
    info = expect_reply(reply, wire.ObjectInfo)
    scheme = x.request.scope.get("scheme", "http")
    host = x.headers.get("host", "")
    location = f"{scheme}://{host}/{op.bucket}/{quote(op.key, safe='/')}"
    return xml_response(x, xml.complete_multipart_result(info, location=location))


@serves(wire.AbortMultipartUpload)
async def abort_multipart_upload(x: Exchange) -> Response[Any]:
    """AbortMultipartUpload (``DELETE /b/k?uploadId=U``) → 204. Raises: NoSuchUpload."""
    op = operation_of(x)
    check_key(op)
    await x.gateway.client.request(
        wire.AbortMultipartUpload(bucket=op.bucket, key=op.key, upload_id=upload_id_of(op))
    )
    return empty(x, status=204)


@serves(wire.ListParts)
async def list_parts(x: Exchange) -> Response[Any]:
    """ListParts (``GET /b/k?uploadId=U``): ``max-parts``, ``part-number-marker``."""
    op = operation_of(x)
    check_key(op)
    max_parts = int_param(op.query, "max-parts", 1000, low=0, high=1000)
    marker = int_param(op.query, "part-number-marker", 0, low=0)
    reply = await x.gateway.client.request(
        wire.ListParts(
            bucket=op.bucket,
            key=op.key,
            upload_id=upload_id_of(op),
            max_parts=max_parts,
            part_number_marker=marker,
        )
    )
    result = expect_reply(reply, wire.ListPartsResult)
    return xml_response(
        x, xml.list_parts_result(result, max_parts=max_parts, part_number_marker=marker)
    )
