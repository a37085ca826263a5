"""CreateBucket, HeadBucket, DeleteBucket, ListBuckets on a cache node.

Bucket records live in KV ``buckets``; the origin's buckets are part of the namespace too
(a bucket that exists only in the origin is adopted on first use).

Federated, every creation and deletion is stamped ``(hlc, site)`` (``BucketRecord.hlc``,
``site``) and logged for the other sites, which apply it here
(:func:`record_remote_bucket`, :func:`remove_remote_bucket`): the later stamp wins, except
that a site keeps (and creates again) a bucket holding its own writes not yet in the
origin.
"""

from __future__ import annotations

import time

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from edgecache.cachenode import listing
from edgecache.cachenode.node import CacheNode, now
from edgecache.common import errors, wire
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger
from edgecache.common.names import validate_bucket_name

__all__ = [
    "create_bucket",
    "delete_bucket",
    "head_bucket",
    "list_buckets",
    "record_remote_bucket",
    "remove_remote_bucket",
]

log = get_logger(__name__)

_BUCKET_ROUNDS = 8  # compare-and-set attempts of a remote bucket change against local ones
# A remote bucket deletion stamped after every write of ours in the bucket is held back
# this long (s) from the time this process first sees it: the deleting site may have
# deleted those writes first, and their deletes travel in other lanes of the applier.
_DELETION_GRACE_S = 2.0
_FIRST_SEEN_MAX = 4096  # deletions remembered for the grace (bounded memory)
_first_seen: dict[str, float] = {}


async def create_bucket(node: CacheNode, request: wire.CreateBucket) -> wire.Ok:
    """Create a bucket here and, by write-back, in the origin.

    Raises:
        InvalidBucketName: the name breaks S3's rules.
        BucketAlreadyOwnedByYou: it exists already (single-tenant: every bucket is yours).
    """
    validate_bucket_name(request.bucket)
    hlc, site = node.catalog.bucket_stamp()
    record = wire.encode(wire.BucketRecord(name=request.bucket, created=now(), hlc=hlc, site=site))
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
    await node.catalog.log_bucket_created(request.bucket, hlc=hlc)  # federated: the other sites know it
    return wire.Ok()


async def record_remote_bucket(node: CacheNode, bucket: str, *, hlc: int = 0, site: str = "") -> None:
    """Another site created ``bucket`` (federation; its change stamped ``(hlc, site)``):
    record it here too, with no intent (the creating site writes it back), so that the
    site's clients see one namespace before the creation reaches the origin. A live record
    here is left as it is; so is a tombstone stamped after the creation (a later deletion);
    an earlier tombstone (the creation came after a deletion) is replaced."""
    record = wire.encode(wire.BucketRecord(name=bucket, created=now(), hlc=hlc, site=site))
    for _ in range(_BUCKET_ROUNDS):
        found = await node.bucket_record(bucket)
        try:
            if found is None:
                await node.state.buckets.create(bucket, record)
            elif found[0].deleted and (found[0].hlc, found[0].site) < (hlc, site):
                await node.state.buckets.update(bucket, record, last=found[1])
            return
        except KeyWrongLastSequenceError:
            continue  # changed meanwhile: look again
    raise errors.ServiceUnavailable(f"bucket {bucket} kept changing under a remote creation", retry_after_s=1)


async def remove_remote_bucket(node: CacheNode, change: wire.SiteChange) -> None:
    """Another site deleted ``change.bucket`` (it was empty there): make the record here a
    tombstone stamped as the deletion, with no intent (the deleting site deletes it in the
    origin; the tombstone keeps this site from adopting the origin's copy meanwhile, and
    stays until a later creation replaces it).

    The rule, when this site does not follow: a record stamped after the deletion (a
    creation here or elsewhere that came later) is kept; so is a bucket in which this site
    holds a live version of its own not yet in the origin (written here before the deletion
    reached us): that bucket is created again — a new creation, stamped after the deletion,
    logged for every site and written back to the origin by this site — so that no
    acknowledged write is left without a bucket. If every such version is stamped before
    the deletion, the deleting site may have seen and deleted them (its deletes are applied
    in other lanes, maybe after this one): the deletion is refused (``ServiceUnavailable``,
    asked again by the federator) for :data:`_DELETION_GRACE_S` after it is first seen here,
    and the rule applies to what is left then.

    Raises:
        ServiceUnavailable: the record kept changing, or the change log did not take the
            creation.
    """
    bucket, stamp = change.bucket, (change.hlc, change.site)
    node.catalog.clock.observe(change.hlc)  # a creation made here from now on wins over it
    for _ in range(_BUCKET_ROUNDS):
        found = await node.bucket_record(bucket)
        if found is not None and (found[0].hlc, found[0].site) > stamp:
            return  # created (or deleted) again after this deletion
        try:
            own = await _own_writes(node, bucket)
            if own:
                if all(hlc < change.hlc for hlc in own) and _in_grace(change.id):
                    raise errors.ServiceUnavailable(
                        f"bucket {bucket} deleted at site {change.site}: the deletes of this site's"
                        " writes in it may still be on their way; asked again",
                        retry_after_s=1,
                    )
                await _recreate(node, bucket, found)
                return
            tombstone = wire.encode(
                wire.BucketRecord(name=bucket, created=now(), deleted=True, hlc=change.hlc, site=change.site)
            )
            if found is None:
                await node.state.buckets.create(bucket, tombstone)
            elif not found[0].deleted or (found[0].hlc, found[0].site) < stamp:
                await node.state.buckets.update(bucket, tombstone, last=found[1])
            return
        except KeyWrongLastSequenceError:
            continue
    raise errors.ServiceUnavailable(f"bucket {bucket} kept changing under a remote deletion", retry_after_s=1)


async def _own_writes(node: CacheNode, bucket: str) -> list[int]:
    """The ``hlc`` stamps of the live versions of this site's own in ``bucket`` that are not
    in the origin yet (dirty manifests stamped with this site's name)."""
    return [
        m.hlc
        async for m in node.catalog.dirty(bucket)
        if not m.deleted and m.site == node.catalog.site and m.state == "dirty"
    ]


def _in_grace(change_id: str) -> bool:
    """Whether the deletion ``change_id`` was first seen here less than
    :data:`_DELETION_GRACE_S` ago (remembered per process, the oldest forgotten first)."""
    now = time.monotonic()
    first = _first_seen.setdefault(change_id, now)
    while len(_first_seen) > _FIRST_SEEN_MAX:
        del _first_seen[next(iter(_first_seen))]
    return now - first < _DELETION_GRACE_S


async def _recreate(node: CacheNode, bucket: str, found: tuple[wire.BucketRecord, int] | None) -> None:
    """Create ``bucket`` again here (a live record stamped now, its intent, its change log
    entry), over ``found`` (the record as read).

    Raises:
        KeyWrongLastSequenceError: the record changed since it was read.
    """
    hlc, site = node.catalog.bucket_stamp()
    created = found[0].created if found is not None and not found[0].deleted else now()
    record = wire.encode(wire.BucketRecord(name=bucket, created=created, hlc=hlc, site=site))
    if found is None:
        await node.state.buckets.create(bucket, record)
    else:
        await node.state.buckets.update(bucket, record, last=found[1])
    await node.catalog.publish_intent(wire.BucketCreated(id=new_id(), at_ns=time.time_ns(), bucket=bucket))
    await node.catalog.log_bucket_created(bucket, hlc=hlc)
    log.info("bucket.kept", bucket=bucket, reason="this site holds writes in it not yet in the origin")


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
    hlc, site = node.catalog.bucket_stamp()
    tombstone = msgspec.structs.replace(record, deleted=True, hlc=hlc, site=site)
    await node.state.buckets.put(request.bucket, wire.encode(tombstone))
    await node.catalog.invalidate_bucket(request.bucket, hlc=hlc)
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
