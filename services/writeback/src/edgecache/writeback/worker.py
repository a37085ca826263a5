"""Applying one write intent to the origin: the writeback state machine.

For an object intent the manifest decides (read and changed through the
:class:`~edgecache.common.catalog.Catalog`; ``version`` is the intent's):

========================================  ===============================================
manifest                                  action
========================================  ===============================================
absent, or another version                skip: superseded (a later intent follows)
this version, ``clean``                   re-announce ``ObjectClean`` (a redelivery)
this version, dirty, put                  stream chunks → ``origin.put_object``; CAS clean
this version, dirty tombstone             ``origin.delete_object``; CAS-delete the entry
another site's version (federation)       skip: superseded (that site writes it back)
========================================  ===============================================

**Federation.** A version stamped ``(hlc, site)`` is written with its stamp, and the origin
refuses to replace (or delete) an object with a larger stamp
(:class:`~edgecache.origin.OriginHoldsNewer`; see ``Origin.put_object``): that write is
skipped as superseded — the newer version's change is on its way to this site and will
replace the manifest. So a loser's write-back never overwrites the winner in the origin.

An ``ObjectTagged`` intent (the tags of a version already in the origin changed) puts the
manifest's current tags on the origin's object (``origin.put_tags``) and marks them clean
(CAS); it is skipped when the version is superseded, still dirty (its put takes the tags
along) or its tags are clean already. A put whose manifest's tags changed while its bytes
were uploading puts the new tags before marking the version clean.

then ``ObjectClean`` on ``edgecache.events.object.clean`` (the catalog publishes it with
the change). A ``BucketCreated`` creates the bucket in the origin while its record in KV
``buckets`` is live; a ``BucketDeleted`` deletes the bucket in the origin and then its
tombstone in KV ``buckets``, unless the bucket was re-created since. Intents of one key are never applied at once, but a retried one may come
after later ones (see :mod:`.service`): the manifest, not the order, decides. Every step is idempotent, so a
redelivery after a crash anywhere redoes the work harmlessly. A put is fenced: just before
the origin gets its last byte, the manifest is read again and the write is abandoned if
this version is no longer the dirty one (a newer version, or another replica finished it).

Errors propagate to the caller (:mod:`.service`), which retries the intent later.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec
from nats.js.errors import APIError, KeyNotFoundError

from edgecache.common import errors, wire
from edgecache.common.credit import CreditBudget
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger
from edgecache.origin import OriginHoldsNewer
from edgecache.writeback.chunks import ObjectBody

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.kv import KeyValue

    from edgecache.common.catalog import Catalog, Entry
    from edgecache.origin import Origin

__all__ = ["IntentApplier", "Outcome", "Superseded", "op_of"]

log = get_logger(__name__)

_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream error codes of a failed CAS
_MAX_ROUNDS = 3  # re-reads of a manifest that changed under us before giving up this attempt

Op = Literal["put", "delete", "create_bucket", "delete_bucket", "tag"]
Result = Literal["written", "deleted", "created", "already_clean", "superseded"]


class Superseded(Exception):
    """The manifest no longer names the version being written as dirty: stop the write."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying an intent did.

    Attributes:
        op: the operation the intent asks for.
        result: ``written``/``deleted``/``created`` (the origin changed), ``already_clean``
            (a redelivery of finished work) or ``superseded`` (skipped: a newer version, or
            none, is current).
        bytes: bytes written to the origin (puts).
    """

    op: Op
    result: Result
    bytes: int = 0


def op_of(intent: wire.Intent) -> Op:
    """The operation an intent asks for."""
    match intent:
        case wire.ObjectWritten():
            return "put"
        case wire.ObjectDeleted():
            return "delete"
        case wire.BucketCreated():
            return "create_bucket"
        case wire.BucketDeleted():
            return "delete_bucket"
        case wire.ObjectTagged():
            return "tag"
    raise TypeError(f"not an intent: {type(intent).__name__}")


class IntentApplier:
    """Applies intents to the origin and records the result in the catalog (manifests,
    which announces ``ObjectClean``) and KV ``buckets``.

    Args:
        nc: the NATS connection (chunk reads).
        catalog: the manifests (KV ``objects``).
        buckets: KV ``buckets`` (bucket records and tombstones).
        origin: where objects go.
        credit: the download credit of ``nc``, shared by every chunk stream.
        window_frames: most download credit per chunk stream, in frames.
        chunk_timeout_s: wait for a cache node's answer or next frame, seconds.
        prefetch: open the next chunk's stream while the origin consumes the current one.
        max_uploads: origin uploads at once (each buffers up to a part or a small object):
            bounds this replica's memory whatever the number of partitions.
        liveness: idle heartbeats asked of the nodes chunks are read from, and the silence
            after which one is taken for dead.
    """

    def __init__(
        self,
        nc: NATS,
        catalog: Catalog,
        buckets: KeyValue,
        origin: Origin,
        *,
        credit: CreditBudget,
        window_frames: int = 8,
        chunk_timeout_s: float = 30.0,
        prefetch: bool = True,
        max_uploads: int = 2,
        liveness: Liveness = DEFAULT_LIVENESS,
    ) -> None:
        self._nc = nc
        self._liveness = liveness
        self._uploads = asyncio.Semaphore(max_uploads)
        self._catalog = catalog
        self._buckets = buckets
        self._origin = origin
        self._credit = credit
        self._window = window_frames
        self._chunk_timeout = chunk_timeout_s
        self._prefetch = prefetch

    async def apply(self, intent: wire.Intent) -> Outcome:
        """Apply ``intent`` to the origin (idempotent).

        Raises:
            S3Error: from the origin (``ServiceUnavailable``, ``BucketNotEmpty``, …) or the
                chunk reads (``ServiceUnavailable``, ``IncompleteBody``, ``BadDigest``).
            Exception: anything else (NATS errors, a manifest that does not decode).
            All of them mean "try again later".
        """
        match intent:
            case wire.ObjectWritten():
                return await self._put(intent)
            case wire.ObjectDeleted():
                return await self._delete(intent)
            case wire.BucketCreated():
                return await self._create_bucket(intent)
            case wire.BucketDeleted():
                return await self._delete_bucket(intent)
            case wire.ObjectTagged():
                return await self._tag(intent)
        raise TypeError(f"not an intent: {type(intent).__name__}")

    # -- manifests ---------------------------------------------------------------------------
    async def _current(self, intent: wire.ObjectWritten | wire.ObjectDeleted | wire.ObjectTagged) -> Entry | None:
        """The manifest if it is still this intent's version, else ``None``."""
        found = await self._catalog.get(intent.bucket, intent.key)
        if found is None or found.manifest.version != intent.version:
            return None
        if found.manifest.site not in ("", self._catalog.site):
            return None  # another site's version (a remote record): that site writes it back
        return found

    # -- put ---------------------------------------------------------------------------------
    async def _put(self, intent: wire.ObjectWritten) -> Outcome:
        written = 0
        etag: str | None = None  # the origin's ETag once this version is uploaded
        tags: dict[str, str] = {}  # the tags the origin's object has
        for _ in range(_MAX_ROUNDS):
            found = await self._current(intent)
            if found is None or found[0].deleted:
                return Outcome("put", "superseded", written)
            m, revision = found
            if m.state == "clean":
                await self._catalog.announce_clean(m, deleted=False)  # the first may be lost
                return Outcome("put", "already_clean", written)
            if etag is None:
                try:
                    etag = await self._upload(intent, m)
                except Superseded:
                    continue  # look again: superseded, or finished by another replica
                except OriginHoldsNewer as exc:
                    log.warning("writeback.origin_newer", bucket=m.bucket, key=m.key, version=m.version, reason=str(exc))
                    return Outcome("put", "superseded", written)
                written += m.size
                tags = m.tags
            elif m.tags != tags:  # retagged while the bytes went up
                etag = await self._origin.put_tags(m.bucket, m.key, dict(m.tags)) or etag
                tags = m.tags
            clean = _cleaned(m, etag)
            if await self._catalog.mark_clean(clean, revision):  # announces ObjectClean
                return Outcome("put", "written", written)
            # the manifest changed since we read it: the next round looks again; if it is
            # still this dirty version (e.g. its nodes changed), it is marked clean over the
            # new revision without uploading again (a version's bytes never change)
        raise errors.ServiceUnavailable(
            f"manifest of {intent.bucket}/{intent.key} kept changing under the write",
            retry_after_s=1,
        )

    async def _upload(self, intent: wire.ObjectWritten, m: wire.Manifest) -> str:
        async def fence() -> None:
            now = await self._current(intent)
            if now is None or now[0].state != "dirty" or now[0].deleted:
                raise Superseded(f"{intent.bucket}/{intent.key} {intent.version}")

        body = ObjectBody(
            self._nc,
            m,
            credit=self._credit,
            window_frames=self._window,
            timeout_s=self._chunk_timeout,
            prefetch=self._prefetch,
            before_last=fence,
            liveness=self._liveness,
        )
        try:
            async with self._uploads:
                return await self._origin.put_object(
                    m.bucket,
                    m.key,
                    aiter(body),
                    size=m.size,
                    content_type=m.content_type,
                    metadata=dict(m.metadata),
                    headers=dict(m.headers),
                    etag=m.etag,
                    **_stamp(m),
                    tags=dict(m.tags),
                )
        except (Superseded, OriginHoldsNewer):
            raise
        except BaseException as exc:
            # an origin that wraps the body's errors must not hide a fence
            if isinstance(exc.__cause__, Superseded) or isinstance(exc.__context__, Superseded):
                raise Superseded(str(exc)) from exc
            raise

    # -- tags --------------------------------------------------------------------------------
    async def _tag(self, intent: wire.ObjectTagged) -> Outcome:
        """Put the manifest's current tags on the origin's object, then mark them clean (a
        compare-and-set; a change meanwhile is put in the next round)."""
        for _ in range(_MAX_ROUNDS):
            found = await self._current(intent)
            if found is None or found[0].deleted or found[0].state == "dirty":
                return Outcome("tag", "superseded")  # gone, newer, or its put carries them
            m, revision = found
            if m.tags_state == "clean":
                return Outcome("tag", "already_clean")
            origin_etag = await self._origin.put_tags(m.bucket, m.key, dict(m.tags))
            clean = msgspec.structs.replace(
                m, tags_state="clean", origin_etag=origin_etag or m.origin_etag, validated_at=time.time()
            )
            if await self._catalog.mark_tags_clean(clean, revision):
                return Outcome("tag", "written")
        raise errors.ServiceUnavailable(
            f"manifest of {intent.bucket}/{intent.key} kept changing under the tagging",
            retry_after_s=1,
        )

    # -- delete ------------------------------------------------------------------------------
    async def _delete(self, intent: wire.ObjectDeleted) -> Outcome:
        found = await self._catalog.get(intent.bucket, intent.key)
        if found is None:
            # the tombstone is gone: we (or a replica) applied it; announce again in case
            # the first announcement was lost between the KV delete and the publish
            await self._catalog.announce_clean(_tombstone(intent), deleted=True)
            return Outcome("delete", "already_clean")
        m, revision = found
        if m.version != intent.version or not m.deleted or m.site not in ("", self._catalog.site):
            return Outcome("delete", "superseded")
        try:
            await self._origin.delete_object(m.bucket, m.key, **_stamp(m))
        except OriginHoldsNewer as exc:
            log.warning("writeback.origin_newer", bucket=m.bucket, key=m.key, version=m.version, reason=str(exc))
            return Outcome("delete", "superseded")
        if not await self._catalog.remove_tombstone(m, revision):  # announces ObjectClean
            # a newer version was written meanwhile; its own intent follows
            return Outcome("delete", "superseded")
        return Outcome("delete", "deleted")

    # -- buckets -----------------------------------------------------------------------------
    async def _create_bucket(self, intent: wire.BucketCreated) -> Outcome:
        """Create the bucket in the origin while its KV record is live.

        A retried ``BucketCreated`` can come after the bucket's ``BucketDeleted`` (retries
        go to the back of their partition): a bucket deleted since is not created again.
        """
        found = await self._bucket_record(intent.bucket)
        if found is None or found[0].deleted:
            return Outcome("create_bucket", "superseded")
        await self._origin.create_bucket(intent.bucket)
        return Outcome("create_bucket", "created")

    async def _delete_bucket(self, intent: wire.BucketDeleted) -> Outcome:
        """Delete the bucket in the origin, then its tombstone in KV ``buckets`` (CAS).

        A bucket re-created since (its record is live again) is not deleted: its
        ``BucketCreated`` follows in this partition, and objects put into it meanwhile may
        already be in the origin, which would make the delete fail forever.

        Raises:
            BucketNotEmpty: object deletes in other partitions are not applied yet (retried).
        """
        found = await self._bucket_record(intent.bucket)
        if found is not None and not found[0].deleted:
            return Outcome("delete_bucket", "superseded")
        await self._origin.delete_bucket(intent.bucket)
        if found is not None:
            try:
                await self._buckets.delete(intent.bucket, last=found[1])
            except APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                # re-created meanwhile: its BucketCreated follows and creates it again
        return Outcome("delete_bucket", "deleted")

    async def _bucket_record(self, bucket: str) -> tuple[wire.BucketRecord, int] | None:
        """The bucket's KV record (maybe a tombstone) and revision; ``None`` if none."""
        try:
            entry = await self._buckets.get(bucket)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return wire.decode(entry.value, wire.BucketRecord), entry.revision


def _stamp(m: wire.Manifest) -> dict[str, int | str]:
    """The origin's ``hlc``/``site`` arguments for ``m`` (none for an unstamped version: a
    lone site writes as it always did)."""
    return {"hlc": m.hlc, "site": m.site} if m.hlc else {}


def _cleaned(m: wire.Manifest, origin_etag: str) -> wire.Manifest:
    return msgspec.structs.replace(
        m, state="clean", tags_state="clean", origin_etag=origin_etag, validated_at=time.time()
    )


def _tombstone(intent: wire.ObjectDeleted) -> wire.Manifest:
    return wire.Manifest(
        bucket=intent.bucket,
        key=intent.key,
        version=intent.version,
        size=0,
        etag="",
        last_modified=0.0,
        deleted=True,
    )
