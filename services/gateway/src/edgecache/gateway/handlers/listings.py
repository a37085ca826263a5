"""S3 handlers that list: ListObjectsV2, ListObjects, ListMultipartUploads,
ListObjectVersions (pages through continuation tokens or markers, ``encoding-type=url``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Response

from edgecache.common import errors, wire
from edgecache.gateway import xml
from edgecache.gateway.handlers.routes import expect_reply, int_param, operation_of, serves
from edgecache.gateway.responses import xml_response

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = ["list_multipart_uploads", "list_object_versions", "list_objects", "list_objects_v2"]


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
    op = operation_of(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = int_param(q, "max-keys", 1000, low=0, high=1000)
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
    result = expect_reply(reply, wire.ListObjectsResult)
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
    op = operation_of(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = int_param(q, "max-keys", 1000, low=0, high=1000)
    prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
    reply = await x.gateway.client.request(
        wire.ListObjects(
            bucket=op.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, marker=marker
        )
    )
    result = expect_reply(reply, wire.ListObjectsResult)
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


@serves(wire.ListMultipartUploads)
async def list_multipart_uploads(x: Exchange) -> Response[Any]:
    """ListMultipartUploads (``GET /b?uploads``): ``prefix``, ``delimiter``, ``key-marker``,
    ``upload-id-marker``, ``max-uploads`` (capped at 1000), ``encoding-type``.

    Raises:
        InvalidArgument (bad ``max-uploads`` or ``encoding-type``), NoSuchBucket.
    """
    op = operation_of(x)
    q = op.query
    encoding_url = _encoding_url(q)
    request = wire.ListMultipartUploads(
        bucket=op.bucket,
        prefix=q.get("prefix", ""),
        delimiter=q.get("delimiter", ""),
        key_marker=q.get("key-marker", ""),
        upload_id_marker=q.get("upload-id-marker", ""),
        max_uploads=int_param(q, "max-uploads", 1000, low=0, high=1000),
    )
    result = expect_reply(await x.gateway.client.request(request), wire.ListMultipartUploadsResult)
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
    op = operation_of(x)
    q = op.query
    encoding_url = _encoding_url(q)
    max_keys = int_param(q, "max-keys", 1000, low=0, high=1000)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, version_id_marker = q.get("key-marker", ""), q.get("version-id-marker", "")
    if version_id_marker and not key_marker:
        raise errors.InvalidArgument(
            "A version-id marker cannot be specified without a key marker."
        )
    reply = await x.gateway.client.request(
        wire.ListObjects(
            bucket=op.bucket,
            prefix=prefix,
            delimiter=delimiter,
            max_keys=max_keys,
            marker=key_marker,
        )
    )
    body = xml.list_object_versions_result(
        expect_reply(reply, wire.ListObjectsResult),
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
