"""S3 handlers of server-side copies: CopyObject and UploadPartCopy (the bytes are copied
by the cache nodes; the answer waits for them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Response

from edgecache.common import errors, wire
from edgecache.gateway import conditions, copysource, tagging, xml
from edgecache.gateway.handlers.routes import (
    check_key,
    expect_reply,
    int_param,
    operation_of,
    serves,
    upload_id_of,
)
from edgecache.gateway.headers import (
    object_attributes,
)
from edgecache.gateway.responses import xml_response

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = ["COPY_TIMEOUT_S", "copy_object", "upload_part_copy"]

COPY_TIMEOUT_S = 600.0  # a copy answers when its bytes are copied: up to 5 GiB, maybe cold


@serves(wire.CopyObject)
async def copy_object(x: Exchange) -> Response[Any]:
    """CopyObject (``PUT /b/k`` with ``x-amz-copy-source``) → ``<CopyObjectResult>``; the
    bytes are copied by a cache node, never through the gateway.

    Raises:
        InvalidArgument (bad source, directive), InvalidRequest (a copy onto itself that
        changes nothing), NoSuchBucket, NoSuchKey, PreconditionFailed (source or
        destination preconditions), ConditionalRequestConflict, MetadataTooLarge.
    """
    op = operation_of(x)
    check_key(op)
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
    return xml_response(x, xml.copy_object_result(expect_reply(reply, wire.ObjectInfo)))


@serves(wire.UploadPartCopy)
async def upload_part_copy(x: Exchange) -> Response[Any]:
    """UploadPartCopy (``PUT /b/k?partNumber=N&uploadId=U`` with ``x-amz-copy-source`` and
    optional ``x-amz-copy-source-range``) → ``<CopyPartResult>``.

    Raises:
        InvalidArgument (part number, source, range syntax), InvalidRange (range beyond the
        source), NoSuchUpload, NoSuchBucket, NoSuchKey, PreconditionFailed.
    """
    op = operation_of(x)
    check_key(op)
    part_number = int_param(op.query, "partNumber", 0, low=1)
    if part_number > xml.MAX_PARTS:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive"
        )
    bucket, key = copysource.copy_source(x.headers)
    span = copysource.copy_source_range(x.headers)
    source = await copysource.checked_source(x.gateway.client, x.headers, bucket, key, span=span)
    reply = await x.gateway.client.request(
        wire.UploadPartCopy(
            bucket=op.bucket,
            key=op.key,
            upload_id=upload_id_of(op),
            part_number=part_number,
            source=source,
        ),
        timeout_s=max(COPY_TIMEOUT_S, x.gateway.client.timeout_s),
    )
    return xml_response(x, xml.copy_part_result(expect_reply(reply, wire.PartInfo)))
