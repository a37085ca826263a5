"""S3 handlers of the service and its buckets: ListBuckets, CreateBucket, HeadBucket,
DeleteBucket, GetBucketLocation, GetBucketAcl."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Response

from edgecache.common import errors, names, wire
from edgecache.common.errors import IllegalLocationConstraintException
from edgecache.common.tokens import decode_token, encode_token
from edgecache.gateway import xml
from edgecache.gateway.handlers.routes import (
    MAX_SMALL_XML_BYTES,
    expect_reply,
    int_param,
    operation_of,
    serves,
)
from edgecache.gateway.responses import empty, xml_response

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = [
    "MAX_BUCKETS",
    "create_bucket",
    "delete_bucket",
    "get_bucket_acl",
    "get_bucket_location",
    "head_bucket",
    "list_buckets",
]

MAX_BUCKETS = 10_000  # ListBuckets' largest page (max-buckets), S3's bucket quota
_LEGACY_REGION = "us-east-1"


@serves(wire.ListBuckets)
async def list_buckets(x: Exchange) -> Response[Any]:
    """ListBuckets (``GET /``) → ``<ListAllMyBucketsResult>``, by name; ``prefix``,
    ``bucket-region`` filter; ``max-buckets`` (1..10000, default all) and
    ``continuation-token`` page, and ``ContinuationToken`` resumes a truncated page.

    Raises:
        InvalidArgument: ``max-buckets`` outside 1..10000, a continuation token we did not
            make (empty included).
    """
    q = operation_of(x).query
    prefix = q.get("prefix", "")
    max_buckets = int_param(q, "max-buckets", MAX_BUCKETS, low=1)
    if max_buckets > MAX_BUCKETS:
        raise errors.InvalidArgument(
            f"Argument max-buckets must be an integer between 1 and {MAX_BUCKETS}"
        )
    after = decode_token(q["continuation-token"]) if "continuation-token" in q else None
    reply = expect_reply(await x.gateway.client.request(wire.ListBuckets()), wire.BucketList)
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
    op = operation_of(x)
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
    op = operation_of(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return empty(x, headers={"x-amz-bucket-region": x.gateway.config.region})


@serves(wire.DeleteBucket)
async def delete_bucket(x: Exchange) -> Response[Any]:
    """DeleteBucket (``DELETE /b``) → 204. Raises: NoSuchBucket, BucketNotEmpty."""
    op = operation_of(x)
    await x.gateway.client.request(wire.DeleteBucket(bucket=op.bucket))
    return empty(x, status=204)


@serves(wire.HeadBucket, action="GetBucketLocation")
async def get_bucket_location(x: Exchange) -> Response[Any]:
    """GetBucketLocation (``GET /b?location``): empty for us-east-1, else the region."""
    op = operation_of(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return xml_response(x, xml.location_constraint(x.gateway.config.region))


@serves(wire.HeadBucket, action="GetBucketAcl")
async def get_bucket_acl(x: Exchange) -> Response[Any]:
    """GetBucketAcl (``GET /b?acl``): the canned ACL ``private``, the owner's
    ``FULL_CONTROL`` (the only ACL there is: see :mod:`.unsupported`). Raises: NoSuchBucket."""
    op = operation_of(x)
    await x.gateway.client.request(wire.HeadBucket(bucket=op.bucket))
    return xml_response(x, xml.access_control_policy(x.gateway.owner))
