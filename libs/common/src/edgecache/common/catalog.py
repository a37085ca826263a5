"""The catalog: the one owner of manifests (KV ``objects``) and of write-back intents.

A manifest (``wire.Manifest`` at ``kvkeys.object_key(bucket, key)``) is the truth about
an object's current version, or a tombstone. Cache nodes (puts, deletes, multipart
completions, read-through adoption and revalidation, the dirty overlay of listings,
recovery) and the writeback service (marking versions clean, removing tombstones) read
and change manifests through a :class:`Catalog` only; nothing else touches KV ``objects``.

**Changes.** Every write or delete of a manifest goes through one method,
:meth:`Catalog._change`, which publishes the change's events before the caller learns
that the change happened: an :class:`~edgecache.common.wire.Invalidation`
(``edgecache.events.invalidate``) whenever what a reader sees changes (a new version, a
delete, a change found in the origin; not a version turning clean), so that memory tiers
drop it; and ``ObjectClean`` (``edgecache.events.object.clean``) when a version has
reached the origin. A compare-and-set that loses changes and publishes nothing and returns
``None``/``False`` rather than raising: the caller re-reads.

**Invalidations are ordered before the acknowledgement** without a round trip: they are
published on the same NATS connection as the reply that acknowledges the change, and NATS
delivers one connection's messages in order, so the server has handed the invalidation to
every subscriber before it sees the reply. Each catalog numbers its invalidations 1, 2, 3,
… (``publisher``, ``publisher_started_ns``, ``seq``) so a subscriber can prove it missed
none.

**The dirty index.** Each dirty manifest's key is also *marked* in KV ``objects``
(``kvkeys.dirty_key``, value: the version), before the manifest is written; marking a
version clean (or removing its tombstone) removes the mark if it still names that version.
So every dirty manifest has a mark (a mark may outlive its version: readers check the
manifest), and :meth:`Catalog.dirty` reads the marks under a prefix, not every manifest.

**Intents.** A new version's manifest is written before its write-back intent is appended
to ``WRITEBACK`` (:meth:`Catalog.commit`). A crash between the two leaves a dirty manifest
without an intent; :meth:`Catalog.recover` re-publishes those when a cache node starts
(``WRITEBACK`` de-duplicates by intent id, the version).

**Federation** (``site`` set; docs/architecture.md, Federation). Every new version or
tombstone written here is stamped with this site's name and a hybrid logical clock
timestamp (:mod:`~edgecache.common.hlc`) greater than the version it replaces, and
:meth:`Catalog._change` appends a :class:`~edgecache.common.wire.SiteChange` to the site's
change log (``edgecache.fed.changes.<site>``, stream ``CHANGES``) with a JetStream
acknowledgement before it returns: for each new version or tombstone (``dirty``), when one
of this site's versions reaches the origin (``clean``, from :meth:`mark_clean` and
:meth:`remove_tombstone`), when the tags of a version change here (kind ``tags``, stamped
``tags_hlc``/``tags_site``, from :meth:`retag`) and when a bucket is deleted (``key``
``None``). A change the log
does not take fails with ``ServiceUnavailable`` (503) instead of being acknowledged
unlogged. :meth:`apply_remote` applies another site's change: the larger ``(hlc, site)``
wins; a winning remote version becomes a *remote record* (no chunks here; read at its site
while dirty, refilled from the origin once clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from edgecache.common import errors, kvkeys, subjects, wire
from edgecache.common.etags import etag_matches
from edgecache.common.hlc import HybridClock
from edgecache.common.ids import new_id
from edgecache.common.jetstream import GET_BATCH, current_entries, current_values

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.jetstream import State

__all__ = ["Applied", "Catalog", "Entry", "fill_chunks", "tagged_intent", "tags_stamp"]

_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream error codes of a failed compare-and-set
ERASED_TTL_S = 60  # a removed key's purge marker expires after this (s)
_KV_PREFIX = f"$KV.{subjects.KV_OBJECTS}."  # KV objects' subjects (one per key)
_INDEX_BUILT = "x.dirty-index.v1"  # KV objects: present once the dirty index covers every manifest
_APPLY_ROUNDS = 5  # re-reads of a manifest that changed while a remote change was applied
_PUT_ROUNDS = 30  # federated: tries of a write of one key that other writes of it keep beating


class Entry(NamedTuple):
    """A manifest as read from KV ``objects``, with its revision (the ``revision`` to pass
    to a later compare-and-set)."""

    manifest: wire.Manifest
    revision: int


class Catalog:
    """Reads and changes manifests; appends write-back intents.

    Args:
        nc: the NATS connection (events).
        state: the JetStream state (KV ``objects``; the ``WRITEBACK`` stream for intents).
        clean_ttl_s: a clean manifest expires this long after it was last written (s;
            ``0``: never); dirty manifests and tombstones never expire.
        site: this site's name (``federation.site``); ``""``: not federated — no stamps,
            no change log.
        clock: the hybrid logical clock stamping versions (default: a new one).
    """

    def __init__(
        self,
        nc: NATS,
        state: State,
        *,
        clean_ttl_s: float = 0.0,
        site: str = "",
        clock: HybridClock | None = None,
    ) -> None:
        self._nc = nc
        self.site = site
        self.clock = clock or HybridClock()
        self._js = state.js
        self._kv = state.objects
        self._clean_ttl_s = clean_ttl_s
        self._publisher = new_id()
        self._started_ns = time.time_ns()
        self._seq = 0
        self._seq_lock = asyncio.Lock()  # seq numbers go out in order

    # -- reading ------------------------------------------------------------------------------
    async def get(self, bucket: str, key: str) -> Entry | None:
        """The manifest of ``bucket/key`` (maybe a tombstone) and its revision, or ``None``."""
        try:
            entry = await self._kv.get(kvkeys.object_key(bucket, key))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Entry(wire.decode(entry.value, wire.Manifest), entry.revision)

    async def dirty(
        self, bucket: str | None = None, prefix: str = ""
    ) -> AsyncIterator[wire.Manifest]:
        """Every dirty manifest (puts and tombstones not yet applied to the origin) of
        ``bucket`` (or of every bucket) whose key starts with ``prefix``; in KV order, not
        key order.

        Reads the dirty index (see :mod:`~edgecache.common.kvkeys`) under ``prefix`` up to
        its last ``/``, then each manifest it names, :data:`GET_BATCH` at a time: the cost
        is that of the dirty keys there, not of every manifest of the bucket.
        """
        key_filter = kvkeys.DIRTY_ALL if bucket is None else kvkeys.dirty_filter(bucket, prefix)
        batch: list[tuple[str, str]] = []
        async for kv_key, _version, _revision in current_entries(self._kv, key_filter):
            b, k = kvkeys.parse_dirty_key(kv_key)
            if k.startswith(prefix):
                batch.append((b, k))
            if len(batch) >= GET_BATCH:
                for m in await self._dirty_manifests(batch):
                    yield m
                batch = []
        for m in await self._dirty_manifests(batch):
            yield m

    async def _dirty_manifests(self, names: list[tuple[str, str]]) -> list[wire.Manifest]:
        """The manifests of ``names`` that are dirty (a mark may outlive its version)."""
        found = await asyncio.gather(*(self.get(b, k) for b, k in names))
        return [e.manifest for e in found if e is not None and _pending(e.manifest)]

    # -- changing -----------------------------------------------------------------------------
    async def commit(self, manifest: wire.Manifest, intent: wire.Intent) -> None:
        """Make a new version (or tombstone) current and durable: :meth:`put` its manifest,
        then append its intent (see the module docstring)."""
        await self.put(manifest)
        await self.publish_intent(intent)

    async def commit_if(
        self, manifest: wire.Manifest, intent: wire.Intent, condition: wire.WriteCondition, current: Entry | None
    ) -> None:
        """A conditional write: :meth:`commit` ``manifest`` only if ``condition`` holds for
        ``current`` (the key's entry as the caller read it, after adopting the origin's
        copy; ``None``: no entry), and only if the entry is still ``current`` when written
        (compare-and-set on its KV revision), so two writers racing through different
        gateways and nodes cannot both win.

        Raises:
            PreconditionFailed: ``if_none_match`` and the key holds an object, or
                ``if_match`` names another ETag (412).
            NoSuchKey: ``if_match`` and the key holds no object (404, as S3 answers).
            ConditionalRequestConflict: the entry changed after ``current`` was read (409).
        """
        live = current is not None and not current.manifest.deleted
        if condition.if_none_match and live:
            raise errors.PreconditionFailed(
                "At least one of the pre-conditions you specified did not hold: If-None-Match",
                resource=f"{manifest.bucket}/{manifest.key}",
            )
        if condition.if_match is not None:
            if not live:
                raise errors.NoSuchKey(resource=f"{manifest.bucket}/{manifest.key}")
            assert current is not None
            if not etag_matches(condition.if_match, current.manifest.etag):
                raise errors.PreconditionFailed(
                    "At least one of the pre-conditions you specified did not hold: If-Match",
                    resource=f"{manifest.bucket}/{manifest.key}",
                )
        revision = 0 if current is None else current.revision
        if not await self._change(
            manifest.bucket, manifest.key, manifest, revision=revision, log="new", current=current
        ):
            raise errors.ConditionalRequestConflict(resource=f"{manifest.bucket}/{manifest.key}")
        await self.publish_intent(intent)

    async def put(self, manifest: wire.Manifest) -> None:
        """Write ``manifest`` whatever was there before (the last write wins). A dirty
        manifest needs its intent too: :meth:`commit` writes both.

        Federated, the write is a compare-and-set on the entry its stamp was taken after
        (retried with a new stamp if another write came first), so the order of a key's
        versions in KV is their ``(hlc, site)`` order, as every other site will see it.

        Raises:
            ServiceUnavailable: federated, the entry kept changing under the write.
        """
        if not self.site:
            await self._change(manifest.bucket, manifest.key, manifest, revision=None, log="new")
            return
        for attempt in range(_PUT_ROUNDS):
            current = await self.get(manifest.bucket, manifest.key)
            revision = 0 if current is None else current.revision
            if await self._change(
                manifest.bucket, manifest.key, manifest, revision=revision, log="new", current=current
            ):
                return
            await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))  # writers of one key: spread out
        raise errors.ServiceUnavailable(
            f"manifest of {manifest.bucket}/{manifest.key} kept changing under the write", retry_after_s=1
        )

    async def create(self, manifest: wire.Manifest) -> bool:
        """Record ``manifest`` if ``bucket/key`` has no entry; ``False`` if it has one (a
        tombstone counts: it is an entry)."""
        return await self._change(manifest.bucket, manifest.key, manifest, revision=0)

    async def replace(self, manifest: wire.Manifest, revision: int, *, same_version: bool = False) -> bool:
        """Write ``manifest`` over the entry if it is still at ``revision``; ``False`` if it
        moved on. ``same_version``: only bookkeeping changed (readers see the same bytes and
        metadata), so nothing is invalidated."""
        return await self._change(
            manifest.bucket, manifest.key, manifest, revision=revision, invalidates=not same_version
        )

    async def delete(self, bucket: str, key: str, revision: int) -> bool:
        """Remove the entry of ``bucket/key`` if it is still at ``revision``; ``False`` if it
        moved on."""
        return await self._change(bucket, key, None, revision=revision)

    async def mark_clean(self, clean: wire.Manifest, revision: int) -> bool:
        """The version of ``clean`` is in the origin: write ``clean`` over its dirty manifest
        (if still at ``revision``) and announce ``ObjectClean``. ``False``: the entry moved
        on; nothing was written nor announced."""
        event = _clean_event(clean, deleted=False)
        changed = await self._change(
            clean.bucket, clean.key, clean, revision=revision, events=[event], invalidates=False, log="clean"
        )
        if changed:
            await self._unmark(clean)
        return changed

    async def remove_tombstone(self, tombstone: wire.Manifest, revision: int) -> bool:
        """The delete of ``tombstone`` is applied to the origin: remove the tombstone (if
        still at ``revision``) and announce ``ObjectClean`` (``deleted``). ``False``: the
        entry moved on (a newer version); nothing was removed nor announced."""
        event = _clean_event(tombstone, deleted=True)
        changed = await self._change(  # readers saw the delete when the tombstone was written
            tombstone.bucket, tombstone.key, None, revision=revision, events=[event], invalidates=False,
            log="clean", logged=tombstone,
        )
        if changed:
            await self._unmark(tombstone)
        return changed

    async def retag(self, tagged: wire.Manifest, revision: int) -> bool:
        """Make ``tagged`` (the current manifest with new ``tags``) current if the entry is
        still at ``revision``: readers see the change (invalidated). If its version is
        already in the origin (``clean``) and this site writes its tags there
        (:meth:`writes_tags_of`), ``tagged`` must say ``tags_state="dirty"``: an
        :class:`~wire.ObjectTagged` intent is appended after the write (a dirty version
        takes its tags with its bytes). ``False``: the entry moved on; nothing changed.

        Federated, the tags are stamped (``tags_hlc``, ``tags_site``) past the record's
        stamps and the change is logged for the other sites (``SiteChange`` of kind
        ``tags``) before this returns.

        Raises:
            ServiceUnavailable: federated, the change log did not take it.
        """
        if self.site:
            self.clock.observe(max(tagged.hlc, tagged.tags_hlc))
            tagged = msgspec.structs.replace(tagged, tags_hlc=self.clock.now(), tags_site=self.site)
        if not await self._change(
            tagged.bucket, tagged.key, tagged, revision=revision, log="tags" if self.site else None
        ):
            return False
        if tagged.state == "clean" and tagged.tags_state == "dirty":
            await self.publish_intent(tagged_intent(tagged))
        return True

    async def mark_tags_clean(self, clean: wire.Manifest, revision: int) -> bool:
        """The tags of ``clean`` (``tags_state="clean"``, maybe a new ``origin_etag``) are in
        the origin: write it over the entry if still at ``revision`` (nothing a reader sees
        changed: no invalidation) and drop the dirty mark. ``False``: the entry moved on."""
        changed = await self._change(clean.bucket, clean.key, clean, revision=revision, invalidates=False)
        if changed and not _pending(clean):
            await self._unmark(clean)
        return changed

    async def _unmark(self, manifest: wire.Manifest) -> None:
        """Remove the dirty mark of ``manifest``'s key if it still names its version (a
        newer write re-marks the key first; the compare-and-set then keeps its mark)."""
        mark_key = kvkeys.dirty_key(manifest.bucket, manifest.key)
        try:
            mark = await self._kv.get(mark_key)
        except KeyNotFoundError:
            return
        if mark.value != manifest.version.encode():
            return
        try:
            await self._erase(mark_key, mark.revision)
        except APIError as exc:  # re-marked meanwhile
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise

    async def announce_clean(self, manifest: wire.Manifest, *, deleted: bool) -> None:
        """Announce ``ObjectClean`` again for a version already marked clean (or a tombstone
        already removed): the first announcement may have been lost with a crash."""
        await self._publish(_clean_event(manifest, deleted=deleted))

    async def _change(
        self,
        bucket: str,
        key: str,
        manifest: wire.Manifest | None,
        *,
        revision: int | None,
        events: Sequence[wire.ObjectClean] = (),
        invalidates: bool = True,
        log: Literal["new", "clean", "tags"] | None = None,
        logged: wire.Manifest | None = None,
        current: Entry | None = None,
    ) -> bool:
        """The one place KV ``objects`` changes: write ``manifest`` (``None``: delete the
        entry) for ``bucket/key``, then append its :class:`~wire.SiteChange` to the site's
        change log (federated, ``log`` set), publish its :class:`~wire.Invalidation`
        (unless ``invalidates`` is false) and ``events``, before returning.

        ``revision``: ``None`` writes whatever is there; ``0`` writes only if there is no
        entry; ``n`` changes the entry only if it is at revision ``n`` (a delete needs it).
        ``log``: ``"new"``: ``manifest`` is a new version (or tombstone) of this site: it
        is stamped (``hlc``, ``site``) past ``current`` (the entry it replaces, as read at
        ``revision``) and logged dirty; ``"clean"``: this site's version ``manifest`` (or
        ``logged``, when the entry is removed) reached the origin; ``"tags"``: this site
        changed the tags of ``manifest`` (already tag-stamped), whoever wrote the version.

        Returns:
            ``False`` when the compare-and-set lost: nothing changed, nothing published.

        Raises:
            ServiceUnavailable: the change is made but the change log did not take it (no
                ``CHANGES`` stream, JetStream unavailable): not to be acknowledged.
        """
        if self.site and log == "new" and manifest is not None:
            manifest = self._stamp(manifest, current)
        kv_key = kvkeys.object_key(bucket, key)
        if manifest is not None and _pending(manifest):
            # indexed before it is written: every dirty manifest has its mark (a mark whose
            # write then loses is harmless: readers check the manifest itself)
            await self._kv.put(kvkeys.dirty_key(bucket, key), manifest.version.encode())
        ttl = self._clean_ttl_s if manifest is not None and not _pending(manifest) else 0.0
        try:
            if manifest is None:
                if not revision:
                    raise ValueError("a manifest is deleted only at a known revision")
                await self._erase(kv_key, revision)
            elif revision == 0:
                await self._kv.create(kv_key, wire.encode(manifest), msg_ttl=ttl or None)
            else:
                await self._write(kv_key, wire.encode(manifest), revision, ttl)
        except KeyWrongLastSequenceError:
            return False
        except APIError as exc:  # nats-py does not translate a delete's lost CAS
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            return False
        logged = manifest if logged is None else logged
        if self.site and log == "tags" and logged is not None and logged.tags_site == self.site:
            await self._append_change(_tags_change(logged))
        elif self.site and log is not None and logged is not None and logged.site == self.site:
            await self._append_change(_site_change(logged, clean=log == "clean"))
        if invalidates:
            version = "" if manifest is None or manifest.deleted else manifest.version
            await self._invalidate(bucket, key, version)
        for event in events:
            await self._publish(event)
        return True

    async def _write(self, kv_key: str, value: bytes, revision: int | None, ttl_s: float) -> None:
        """Put ``value`` at ``kv_key`` (if the key is at ``revision``, unless ``None``),
        expiring after ``ttl_s`` (``0``: never; the server's per-message TTL, ``Nats-TTL``).

        Raises:
            APIError: the compare-and-set lost (codes ``_WRONG_LAST_SEQUENCE``), or another.
        """
        headers = {} if revision is None else {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        await self._js.publish(
            _KV_PREFIX + kv_key, value, headers=headers or None, msg_ttl=ttl_s or None
        )

    async def _erase(self, kv_key: str, revision: int) -> None:
        """Remove ``kv_key`` if it is at ``revision``: a purge (the key's history goes) whose
        own marker expires after :data:`ERASED_TTL_S`, so removed keys leave nothing behind
        (a plain KV delete leaves its marker for ever).

        Raises:
            APIError: the compare-and-set lost (codes ``_WRONG_LAST_SEQUENCE``), or another.
        """
        headers = {
            "KV-Operation": "PURGE",
            "Nats-Rollup": "sub",
            "Nats-Expected-Last-Subject-Sequence": str(revision),
        }
        await self._js.publish(_KV_PREFIX + kv_key, b"", headers=headers, msg_ttl=ERASED_TTL_S)

    async def invalidate_bucket(self, bucket: str, *, logged: bool = True, hlc: int = 0) -> None:
        """Every object of ``bucket`` changed (the bucket was deleted here): log it for the
        other sites (federated, unless ``logged`` is false: a remote deletion being
        applied; stamped ``hlc``, from :meth:`bucket_stamp`, or now), then tell memory
        tiers.

        Raises:
            ServiceUnavailable: the change log did not take it (see :meth:`_change`).
        """
        if self.site and logged:
            await self._append_change(
                wire.SiteChange(
                    id=new_id(), at_ns=time.time_ns(), site=self.site, bucket=bucket, key=None,
                    hlc=hlc or self.clock.now(), deleted=True,
                )
            )
        await self._invalidate(bucket, None, "")

    def bucket_stamp(self) -> tuple[int, str]:
        """A new ``(hlc, site)`` stamp for a bucket created or deleted here (``(0, "")``
        when not federated): past every change this site has seen, so a creation after a
        deletion (or the reverse) wins over it everywhere."""
        return (self.clock.now(), self.site) if self.site else (0, "")

    async def log_bucket_created(self, bucket: str, *, hlc: int = 0) -> None:
        """Log a bucket created here for the other sites (federated; nothing otherwise), so
        that they know it before its creation reaches the origin; stamped ``hlc`` (from
        :meth:`bucket_stamp`), or now.

        Raises:
            ServiceUnavailable: the change log did not take it (see :meth:`_change`).
        """
        if self.site:
            await self._append_change(
                wire.SiteChange(
                    id=new_id(), at_ns=time.time_ns(), site=self.site, bucket=bucket, key=None,
                    hlc=hlc or self.clock.now(),
                )
            )

    # -- federation ---------------------------------------------------------------------------
    def _stamp(self, manifest: wire.Manifest, current: Entry | None) -> wire.Manifest:
        """``manifest`` stamped as this site's, with an ``hlc`` past ``current``, the version
        it replaces (whichever site wrote that one): a write made after another was seen
        wins."""
        if current is not None:
            self.clock.observe(max(current.manifest.hlc, current.manifest.tags_hlc))
        # a new version's tags come with it: its own stamp orders them
        return msgspec.structs.replace(manifest, hlc=self.clock.now(), site=self.site, tags_hlc=0, tags_site="")

    async def _append_change(self, change: wire.SiteChange) -> None:
        """Append ``change`` to this site's change log and wait for the stream's
        acknowledgement (``Nats-Msg-Id``: its id, so a re-publish is de-duplicated).

        Raises:
            ServiceUnavailable: no ``CHANGES`` stream takes the subject, or JetStream did
                not acknowledge.
        """
        try:
            await self._js.publish(
                subjects.site_changes(self.site), wire.encode(change), headers={"Nats-Msg-Id": change.id}
            )
        except NatsError as exc:
            raise errors.ServiceUnavailable(
                f"the change log of site {self.site} did not take the change: {exc!r}", retry_after_s=1
            ) from exc

    async def apply_remote(self, change: wire.SiteChange, *, chunk_bytes: int) -> Applied:
        """Apply another site's change of one key (idempotent; the federator delivers each
        at least once). The larger ``(hlc, site)`` wins: a winning remote version (or
        delete) replaces the entry with a remote record of it (see :func:`remote_record`;
        invalidating memory tiers); a losing one is ignored (our winner's own change
        reaches the other site); a ``clean`` change of the remote version recorded here
        turns the record clean and fillable from the origin. A bucket deletion
        (``key`` ``None``, ``deleted``) only invalidates the bucket's memory tiers here: its
        objects' own deletes come as changes of their own, and the bucket's record, like a
        bucket creation's (``key`` ``None``), is the caller's to apply (KV ``buckets`` is the
        cache node's: ``cachenode/buckets.py``).

        Args:
            change: the remote change (``change.site`` is not this site's).
            chunk_bytes: the chunk size of the fillable record of a clean version (bytes).

        Returns:
            What was done, and the manifest the change replaced (its chunks and write-back
            intent are the caller's to release: a superseded version).

        Raises:
            ServiceUnavailable: the entry kept changing under the apply (try again).
        """
        self.clock.observe(change.hlc)
        if change.site == self.site:
            return Applied("ignored", None)
        if change.key is None:
            if change.deleted:
                await self.invalidate_bucket(change.bucket, logged=False)
            return Applied("bucket", None)
        if change.kind == "tags":
            return await self._apply_tags(change, chunk_bytes=chunk_bytes)
        record = remote_record(change, chunk_bytes=chunk_bytes)
        for _ in range(_APPLY_ROUNDS):
            current = await self.get(change.bucket, change.key)
            outcome: Literal["applied", "cleaned"] = "applied"
            if current is not None:
                held = current.manifest
                if (held.hlc, held.site) > (change.hlc, change.site):
                    return Applied("ignored", None)
                if (held.hlc, held.site) == (change.hlc, change.site):
                    if not (held.state == "dirty" and change.state == "clean"):
                        return Applied("ignored", None)  # a redelivery, or an older state
                    outcome = "cleaned"
            revision = 0 if current is None else current.revision
            written = record
            if outcome == "cleaned" and current is not None and tags_stamp(current.manifest) > tags_stamp(record):
                written = _with_tags_of(record, current.manifest)  # a tag change newer than the clean one
            if await self._change(change.bucket, change.key, written, revision=revision):
                if not _pending(written):
                    await self._unmark(written)
                replaced = None if current is None or outcome == "cleaned" else current.manifest
                return Applied(outcome, replaced)
        raise errors.ServiceUnavailable(
            f"manifest of {change.bucket}/{change.key} kept changing under a remote change", retry_after_s=1
        )

    async def _apply_tags(self, change: wire.SiteChange, *, chunk_bytes: int) -> Applied:
        """Apply another site's tag change of one version (see :meth:`apply_remote`).

        The entry holds that version — the same id, or the same ``(hlc, site)`` stamp (this
        site adopted the version from the origin under an id of its own before the
        version's change arrived: the stamp, stored with the object, names one version at
        every site) — the larger tag stamp wins (the change's
        ``(hlc, site)`` against the entry's :func:`tags_stamp`); if this site writes the
        version's tags to the origin (its own version, already clean) they are marked dirty
        and an ``ObjectTagged`` intent is appended. The entry holds a newer version (or
        delete): ignored, as S3 drops the tags of an overwritten version. The entry holds no
        entry or an older version: the tagged version's record is written, as its own
        change would have done (that change may still be on its way from its site).
        """
        theirs = change.manifest
        if theirs is None or change.key is None:
            return Applied("ignored", None)
        stamp = (change.hlc, change.site)
        for _ in range(_APPLY_ROUNDS):
            current = await self.get(change.bucket, change.key)
            held = None if current is None else current.manifest
            if held is None or not _same_version(held, theirs):
                if held is not None and (held.hlc, held.site) >= (theirs.hlc, theirs.site):
                    return Applied("ignored", None)  # a newer version is current here
                record = remote_record(_site_change(theirs, clean=theirs.state == "clean"), chunk_bytes=chunk_bytes)
                written = _with_tags_of(record, theirs)
                outcome: Literal["applied", "tagged"] = "applied"
            else:
                if tags_stamp(held) >= stamp:
                    return Applied("ignored", None)  # a later tag change is here, or a redelivery
                pending = held.state == "clean" and held.site == self.site  # ours to write back
                written = msgspec.structs.replace(
                    _with_tags_of(held, theirs), tags_state="dirty" if pending else held.tags_state
                )
                outcome = "tagged"
            revision = 0 if current is None else current.revision
            if await self._change(change.bucket, change.key, written, revision=revision):
                if outcome == "tagged" and written.tags_state == "dirty" and written.state == "clean":
                    await self.publish_intent(tagged_intent(written))
                replaced = None if outcome == "tagged" else held
                return Applied(outcome, replaced)
        raise errors.ServiceUnavailable(
            f"manifest of {change.bucket}/{change.key} kept changing under a remote tag change", retry_after_s=1
        )

    def writes_tags_of(self, manifest: wire.Manifest) -> bool:
        """Whether this site takes a tag change of ``manifest``'s version to the origin:
        always when not federated; federated, when the version is this site's or no site's
        (read from the origin). Another site's version has its tags written by that site,
        when the change reaches it: one writer per version, so the origin ends with the
        winning tags."""
        return not self.site or manifest.site in ("", self.site)

    def owner_of(self, manifest: wire.Manifest) -> str | None:
        """The site to read ``manifest``'s bytes at: another site whose dirty version it
        records (no chunks here); ``None``: read it here (ours, or in the origin)."""
        if manifest.site and manifest.site != self.site and manifest.state == "dirty" and not manifest.deleted:
            return manifest.site
        return None

    async def _invalidate(self, bucket: str, key: str | None, version: str) -> None:
        async with self._seq_lock:
            self._seq += 1
            event = wire.Invalidation(
                id=new_id(),
                at_ns=time.time_ns(),
                bucket=bucket,
                key=key,
                version=version,
                publisher=self._publisher,
                publisher_started_ns=self._started_ns,
                seq=self._seq,
            )
            await self._nc.publish(subjects.EVENTS_INVALIDATE, wire.encode(event))

    async def _publish(self, event: wire.ObjectClean) -> None:
        await self._nc.publish(
            subjects.EVENTS_OBJECT_CLEAN, wire.encode(event), headers={"Nats-Msg-Id": event.id}
        )

    # -- intents ------------------------------------------------------------------------------
    async def publish_intent(self, intent: wire.Intent) -> None:
        """Append ``intent`` to its partition of ``WRITEBACK`` (that of ``bucket/key``;
        ``key`` ``""`` for bucket intents), de-duplicated by its id. Waits for the stream's
        acknowledgement: the intent is durable when this returns."""
        key = intent.key if isinstance(intent, wire.ObjectWritten | wire.ObjectDeleted | wire.ObjectTagged) else ""
        await self._js.publish(
            subjects.writeback_subject_for(intent.bucket, key),
            wire.encode(intent),
            headers={"Nats-Msg-Id": intent.id},
        )

    async def recover(self, holder: str) -> int:
        """Re-publish the intent of every dirty manifest that names ``holder`` among its
        nodes (or names no node). Reads the dirty index, so the cost is that of the dirty
        manifests, not of every manifest. Returns how many."""
        await self._build_index()
        count = 0
        async for m in self.dirty():
            if m.nodes and holder not in m.nodes:
                continue
            if m.site and m.site != self.site:
                continue  # another site's version: its own site writes it back
            if m.state == "clean":  # only its tags are not in the origin yet
                await self.publish_intent(tagged_intent(m))
                count += 1
                continue
            intent_type = wire.ObjectDeleted if m.deleted else wire.ObjectWritten
            await self.publish_intent(
                intent_type(id=m.version, at_ns=time.time_ns(), bucket=m.bucket, key=m.key, version=m.version)
            )
            count += 1
        return count

    async def _build_index(self) -> None:
        """Mark every dirty manifest written before the dirty index existed; once per KV
        ``objects`` (a scan of every manifest: the one start-up that is not bounded)."""
        try:
            await self._kv.get(_INDEX_BUILT)
            return
        except KeyNotFoundError:
            pass
        async for value in current_values(self._kv, kvkeys.OBJECTS_ALL):
            m = wire.decode(value, wire.Manifest)
            if m.state == "dirty":
                await self._kv.put(kvkeys.dirty_key(m.bucket, m.key), m.version.encode())
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv.create(_INDEX_BUILT, b"1")


class Applied(NamedTuple):
    """What :meth:`Catalog.apply_remote` did: ``applied`` (the remote version or delete is
    current here now), ``cleaned`` (the remote version recorded here reached the origin),
    ``ignored`` (a loser, a redelivery, or our own change), ``bucket`` (a bucket deletion),
    ``tagged`` (the remote tags of the version current here are current now);
    ``replaced``: the manifest the remote change superseded, if any."""

    outcome: Literal["applied", "cleaned", "ignored", "bucket", "tagged"]
    replaced: wire.Manifest | None


def fill_chunks(version: str, size: int, chunk_bytes: int) -> list[wire.ChunkRef]:
    """The chunks of a clean version filled from the origin: ``<version>.<index>``, each
    ``chunk_bytes`` long but the last (none for an empty object)."""
    return [
        wire.ChunkRef(id=f"{version}.{i}", size=min(chunk_bytes, size - offset))
        for i, offset in enumerate(range(0, size, chunk_bytes))
    ]


def remote_record(change: wire.SiteChange, *, chunk_bytes: int) -> wire.Manifest:
    """The manifest that records ``change``'s version (or delete) at another site: its
    metadata, ``hlc``, ``site`` and ``state``; no nodes; no chunks while it is dirty (its
    bytes are at ``change.site``), fill chunks (:func:`fill_chunks`) once it is clean. Its
    tags are never pending here (``tags_state`` clean): the version's site writes them."""
    assert change.key is not None
    base = change.manifest or wire.Manifest(
        bucket=change.bucket, key=change.key, version=change.version, size=change.size, etag=change.etag,
        last_modified=change.at_ns / 1e9,
    )
    size = 0 if change.deleted else change.size
    clean = change.state == "clean"
    return msgspec.structs.replace(
        base,
        bucket=change.bucket,
        key=change.key,
        version=change.version,
        size=size,
        etag="" if change.deleted else change.etag,
        state=change.state,
        deleted=change.deleted,
        hlc=change.hlc,
        site=change.site,
        nodes=[],
        tags_state="clean",
        chunks=fill_chunks(change.version, size, chunk_bytes) if clean else [],
        validated_at=time.time() if clean else 0.0,
    )


def _site_change(m: wire.Manifest, *, clean: bool) -> wire.SiteChange:
    """The change-log entry of this site's version ``m`` (``clean``: it reached the origin)."""
    return wire.SiteChange(
        id=new_id(),
        at_ns=time.time_ns(),
        site=m.site,
        bucket=m.bucket,
        key=m.key,
        version=m.version,
        hlc=m.hlc,
        state="clean" if clean else m.state,
        deleted=m.deleted,
        size=m.size,
        etag=m.etag,
        manifest=None if m.deleted else msgspec.structs.replace(m, chunks=[], nodes=[]),
    )


def _tags_change(m: wire.Manifest) -> wire.SiteChange:
    """The change-log entry of a tag change made here of ``m``'s version (whichever site
    wrote it): stamped with the tag stamp."""
    return msgspec.structs.replace(_site_change(m, clean=False), site=m.tags_site, hlc=m.tags_hlc, kind="tags")


def _same_version(held: wire.Manifest, theirs: wire.Manifest) -> bool:
    """Whether ``held`` (this site's record) and ``theirs`` (another site's) are one
    version: the same id, or the same stamp (an adoption here from the origin, which
    stores the writer's stamp, names the version with an id of this site's own)."""
    return held.version == theirs.version or (theirs.hlc > 0 and (held.hlc, held.site) == (theirs.hlc, theirs.site))


def tags_stamp(m: wire.Manifest) -> tuple[int, str]:
    """The ``(hlc, site)`` stamp of ``m``'s tags: that of their last change, else the
    version's own (a version's tags come with it)."""
    return (m.tags_hlc, m.tags_site) if m.tags_hlc else (m.hlc, m.site)


def _with_tags_of(m: wire.Manifest, source: wire.Manifest) -> wire.Manifest:
    """``m`` with the tags (and their stamp) of ``source``."""
    return msgspec.structs.replace(m, tags=dict(source.tags), tags_hlc=source.tags_hlc, tags_site=source.tags_site)


def _pending(m: wire.Manifest) -> bool:
    """Whether ``m`` holds something the origin lacks: its version, or its tags (such a
    manifest is dirty-marked and never expires)."""
    return m.state == "dirty" or m.tags_state == "dirty"


def tagged_intent(m: wire.Manifest) -> wire.ObjectTagged:
    """A new write-back intent taking the tags of ``m`` to the origin (a new id: each tag
    change is its own intent; applying a stale one again is harmless)."""
    return wire.ObjectTagged(id=new_id(), at_ns=time.time_ns(), bucket=m.bucket, key=m.key, version=m.version)


def _clean_event(m: wire.Manifest, *, deleted: bool) -> wire.ObjectClean:
    return wire.ObjectClean(
        id=new_id(),
        at_ns=time.time_ns(),
        bucket=m.bucket,
        key=m.key,
        version=m.version,
        deleted=deleted,
        origin_etag=m.origin_etag,
    )
