"""CreateBucket, HeadBucket, DeleteBucket, ListBuckets on a cache node.

Bucket records live in KV ``buckets``; the origin's buckets are part of the namespace too
(a bucket that exists only in the origin is adopted on first use).
"""

from __future__ import annotations

import time

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from edgecache.cachenode import listing
from edgecache.cachenode.node import CacheNode, now
from edgecache.common import errors, wire
from edgecache.common.ids import new_id
from edgecache.common.names import validate_bucket_name

__all__ = ["create_bucket", "delete_bucket", "head_bucket", "list_buckets", "record_remote_bucket"]


async def create_bucket(node: CacheNode, request: wire.CreateBucket) -> wire.Ok:
    """Create a bucket here and, by write-back, in the origin.

    Raises:
        InvalidBucketName: the name breaks S3's rules.
        BucketAlreadyOwnedByYou: it exists already (single-tenant: every bucket is yours).
    """
    validate_bucket_name(request.bucket)
    record = wire.encode(wire.BucketRecord(name=request.bucket, created=now()))
    try:
        await node.state.buckets.create(request.bucket, record)
    except KeyWrongLastSequenceError as exc:
        found = await node.bucket_record(request.bucket)
        if found is None or not found[0].deleted:
            raise errors.BucketAlreadyOwnedByYou(resource=request.bucket) from exc
        try:  # re-created while its deletion is still on its way to the origin
            await node.state.buckets.update(request.bucket, record, last=found[1])
        except KeyWrongLastSequenceError as race:
            raise errors.BucketAlreadyOwnedByYou(resource=request.bucket) from race
    intent = wire.BucketCreated(id=new_id(), at_ns=time.time_ns(), bucket=request.bucket)
    await node.catalog.publish_intent(intent)
    await node.catalog.log_bucket_created(request.bucket)  # federated: the other sites know it
    return wire.Ok()


async def record_remote_bucket(node: CacheNode, bucket: str) -> None:
    """Another site created ``bucket`` (federation): record it here too if this site has no
    record of it, with no intent (the creating site writes it back), so that the site's
    clients see one namespace before the creation reaches the origin. A live record or a
    tombstone (a deletion on its way to the origin) here is left as it is."""
    record = wire.encode(wire.BucketRecord(name=bucket, created=now()))
    try:
        await node.state.buckets.create(bucket, record)
    except KeyWrongLastSequenceError:
        return


async def head_bucket(node: CacheNode, request: wire.HeadBucket) -> wire.BucketInfo:
    """Raises NoSuchBucket if the bucket exists neither here nor in the origin."""
    record = await node.require_bucket(request.bucket)
    return wire.BucketInfo(name=record.name, created=record.created)


async def delete_bucket(node: CacheNode, request: wire.DeleteBucket) -> wire.Ok:
    """Delete an empty bucket.

    Raises:
        NoSuchBucket: it does not exist.
        BucketNotEmpty: a listing of it (origin merged with pending writes) is not empty.
    """
    record = await node.require_bucket(request.bucket)
    page = await listing.list_objects(node, wire.ListObjects(bucket=request.bucket, max_keys=1))
    if page.contents or page.common_prefixes:
        raise errors.BucketNotEmpty(resource=request.bucket)
    tombstone = msgspec.structs.replace(record, deleted=True)
    await node.state.buckets.put(request.bucket, wire.encode(tombstone))
    await node.catalog.invalidate_bucket(request.bucket)
    intent = wire.BucketDeleted(id=new_id(), at_ns=time.time_ns(), bucket=request.bucket)
    await node.catalog.publish_intent(intent)
    return wire.Ok()


async def list_buckets(node: CacheNode, request: wire.ListBuckets) -> wire.BucketList:
    """Every bucket in KV ``buckets`` and in the origin, by name."""
    found: dict[str, float] = {b.name: b.created for b in await node.origin.list_buckets()}
    try:
        names = await node.state.buckets.keys()
    except Exception:  # noqa: BLE001 - nats raises NoKeysError on an empty bucket
        names = []
    for name in names:
        entry = await node.bucket_record(name)
        if entry is None:
            continue
        record = entry[0]
        if record.deleted:
            found.pop(name, None)  # deleted here; the origin's copy goes with the write-back
        else:
            found[name] = min(found.get(name, record.created), record.created)
    return wire.BucketList(buckets=[wire.BucketInfo(name=n, created=c) for n, c in sorted(found.items())])
