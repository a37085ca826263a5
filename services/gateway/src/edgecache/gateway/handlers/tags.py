"""S3 handlers of object tagging: PutObjectTagging, GetObjectTagging,
DeleteObjectTagging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Response

from edgecache.common import wire
from edgecache.gateway import tagging, xml
from edgecache.gateway.handlers.routes import (
    MAX_SMALL_XML_BYTES,
    check_key,
    expect_reply,
    operation_of,
    serves,
)
from edgecache.gateway.responses import empty, xml_response

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = ["delete_object_tagging", "get_object_tagging", "put_object_tagging"]


@serves(wire.PutObjectTagging)
async def put_object_tagging(x: Exchange) -> Response[Any]:
    """PutObjectTagging (``PUT /b/k?tagging``, ``<Tagging>`` body of at most 64 KiB) → 200;
    the tags replace the object's (:mod:`.tagging` has S3's rules).

    Raises:
        MalformedXML, InvalidTag, NoSuchBucket, NoSuchKey.
    """
    op = operation_of(x)
    check_key(op)
    tags = tagging.validate(xml.parse_tagging(await x.read_body(MAX_SMALL_XML_BYTES)))
    await x.gateway.client.request(wire.PutObjectTagging(bucket=op.bucket, key=op.key, tags=tags))
    return empty(x)


@serves(wire.GetObjectTagging)
async def get_object_tagging(x: Exchange) -> Response[Any]:
    """GetObjectTagging (``GET /b/k?tagging``) → ``<Tagging><TagSet>``, empty for an
    untagged object. Raises: NoSuchBucket, NoSuchKey."""
    op = operation_of(x)
    check_key(op)
    reply = await x.gateway.client.request(wire.GetObjectTagging(bucket=op.bucket, key=op.key))
    return xml_response(x, xml.tagging_result(expect_reply(reply, wire.Tagging).tags))


@serves(wire.DeleteObjectTagging)
async def delete_object_tagging(x: Exchange) -> Response[Any]:
    """DeleteObjectTagging (``DELETE /b/k?tagging``) → 204. Raises: NoSuchBucket, NoSuchKey."""
    op = operation_of(x)
    check_key(op)
    await x.gateway.client.request(wire.DeleteObjectTagging(bucket=op.bucket, key=op.key))
    return empty(x, status=204)
