"""Federation at a cache node: applying other sites' changes, and reading the versions
another site holds (docs/architecture.md, Federation).

**Applying** (``edgecache.fed.apply``, queue group ``cachenode``): the site's federator
hands each remote :class:`~edgecache.common.wire.SiteChange` to one node, which applies it
through the catalog (:meth:`~edgecache.common.catalog.Catalog.apply_remote`: the larger
``(hlc, site)`` wins) and answers ``Ok`` (or ``Error``: the federator delivers it again).
A local version the remote one superseded has its chunks released; its write-back intent
then finds another version current and writes nothing.

**Reading at the owner site.** A GET or HEAD whose manifest records another site's dirty
version (no chunks here) is asked of that site — ``edgecache.fed.site.<site>.s3.getobject``
/ ``headobject``, served by its nodes in their queue group — and relayed: a byte stream
(never file frames: the owner is another host) with credit flow control end to end, the
owner's frames going on to our requester as credit allows. The owner site per key is kept
in the node's :class:`~edgecache.cachenode.routes.RouteCache`. An owner site that does not
answer (the hub link is down, no node there) makes the request ``ServiceUnavailable``
(503); nothing else at this site depends on it. A request that came from another site is
served from this site's own data only, never relayed again (no loops).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

import msgspec
from nats.errors import NoRespondersError as NatsNoResponders
from nats.errors import TimeoutError as NatsTimeoutError

from edgecache.cachenode import buckets
from edgecache.common import errors, stream, subjects, wire
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode

__all__ = [
    "SITE_OPERATIONS",
    "apply_change",
    "cached_owner",
    "on_invalidate",
    "owner_of",
    "read_at_owner",
    "relay_get",
    "relay_head",
    "site_request",
    "with_our_tags",
]

log = get_logger(__name__)

#: The requests another site may ask of this one (a read of a version only this site holds).
SITE_REQUESTS: tuple[type[wire.Request], ...] = (wire.GetObject, wire.HeadObject)
#: Their operations: this site's nodes serve ``subjects.site_s3(site, op)`` for each.
SITE_OPERATIONS: tuple[str, ...] = tuple(t.operation for t in SITE_REQUESTS)

_FROM_SITE: contextvars.ContextVar[bool] = contextvars.ContextVar("from_site", default=False)


def site_request(request: wire.Request) -> wire.Request:
    """Screen a request that came from another site (the dispatcher's ``screen``): only
    :data:`SITE_REQUESTS`, as a byte stream (no short-circuit ``local_host``), served from
    this site's own data (the request's task is marked: :func:`cached_owner` and
    :func:`owner_of` route nothing).

    Raises:
        InvalidRequest: another operation.
    """
    if not isinstance(request, SITE_REQUESTS):
        raise errors.InvalidRequest(f"{type(request).__name__} is not served to other sites")
    _FROM_SITE.set(True)
    if isinstance(request, wire.GetObject):
        return msgspec.structs.replace(request, local_host=None)
    return request


# -- applying -----------------------------------------------------------------------------
async def apply_change(node: CacheNode, msg: Msg) -> None:
    """``edgecache.fed.apply``: apply one remote ``SiteChange``; answer ``Ok`` or ``Error``
    (``InvalidRequest`` for a body that is not a ``SiteChange``, ``ServiceUnavailable``
    when the manifest kept changing or JetStream failed: deliver it again)."""
    try:
        change = wire.decode(msg.data, wire.SiteChange)
        if change.key is None and change.site != node.catalog.site:
            if change.deleted:
                await buckets.remove_remote_bucket(node, change)
            else:
                await buckets.record_remote_bucket(node, change.bucket, hlc=change.hlc, site=change.site)
        applied = await node.catalog.apply_remote(change, chunk_bytes=node.chunk_bytes)
        replaced = applied.replaced
        if replaced is not None and replaced.state == "dirty" and replaced.chunks:
            await node.release([c.id for c in replaced.chunks])  # a superseded local version
        log.info(
            "site.change.applied",
            site=change.site,
            bucket=change.bucket,
            key=change.key,
            version=change.version,
            state=change.state,
            outcome=applied.outcome,
        )
        reply: wire.Reply = wire.Ok()
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        reply = stream.error_of(errors.InvalidRequest(f"not a SiteChange: {exc}"))
    except Exception as exc:  # noqa: BLE001 - answered: the federator delivers it again
        log.warning("site.change.failed", error=repr(exc))
        reply = stream.error_of(exc)
    if msg.reply:
        await node.nc.publish(msg.reply, wire.encode(reply))


async def on_invalidate(node: CacheNode, msg: Msg) -> None:
    """``edgecache.events.invalidate``: a key (or bucket) changed at this site; its cached
    owner site is no longer known."""
    try:
        event = wire.decode(msg.data, wire.Invalidation)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    node.routes.drop(event.bucket, event.key)


# -- routing ------------------------------------------------------------------------------
def cached_owner(node: CacheNode, bucket: str, key: str) -> str | None:
    """The other site to read ``bucket/key`` at, if the route cache knows it (and the
    request did not itself come from another site)."""
    if _FROM_SITE.get() or not node.catalog.site:
        return None
    return node.routes.get(bucket, key)


def owner_of(node: CacheNode, manifest: wire.Manifest) -> str | None:
    """The other site to read ``manifest``'s version at (remembered in the route cache), or
    ``None``: read it here. A request from another site is never routed on: a remote
    record it finds is refused by the read (``ServiceUnavailable``)."""
    if _FROM_SITE.get():
        return None
    site = node.catalog.owner_of(manifest)
    if site is not None and manifest.tags_site in ("", site):
        # a record retagged at a site other than the owner is not cached: its reads need
        # the record for their tag count (:func:`with_our_tags`)
        node.routes.put(manifest.bucket, manifest.key, site)
    return site


def with_our_tags(info: wire.ObjectInfo, record: wire.Manifest | None) -> wire.ObjectInfo:
    """The owner site's ``info`` of ``record``'s version, with the tag count of ``record``
    (this site's record of it) if its tags were changed at a site other than the owner:
    the owner may not have applied that change yet, and a tag change made here must be
    read back here at once (``x-amz-tagging-count``)."""
    if record is None or record.tags_site in ("", record.site):
        return info
    return msgspec.structs.replace(info, tag_count=len(record.tags))


async def _ask_owner(
    node: CacheNode,
    request: wire.GetObject,
    site: str,
    *,
    downstream: stream.DownloadSender | None = None,
) -> tuple[wire.ObjectInfo, AsyncIterator[bytes]]:
    """Ask ``site`` for ``request`` (as a byte stream); its ``ObjectInfo`` and its frames
    (``aclose()`` them when done). ``downstream``: the sender the frames are relayed to.

    Raises:
        ServiceUnavailable: ``site`` did not answer (no responders: the hub link is down or
            no node serves there) or went silent; the key's route is dropped.
        S3Error: ``site``'s own answer (NoSuchKey, InvalidRange, …).
    """
    try:
        reply, body = await stream.download(
            node.nc,
            subjects.site_s3(site, wire.GetObject.operation),
            msgspec.structs.replace(request, local_host=None),
            budget=node.credit,
            window=node.config.cachenode.window_frames,
            timeout_s=node.config.nats.request_timeout_s,
            downstream=downstream,
            liveness=Liveness.of(node.config.nats),
        )
    except errors.S3Error:
        node.routes.drop(request.bucket, request.key)
        raise
    if not isinstance(reply, wire.ObjectInfo):
        await body.aclose()  # type: ignore[attr-defined]
        raise errors.InternalError(f"site {site} answered {type(reply).__name__} to a GetObject")
    return reply, body


async def relay_get(
    node: CacheNode,
    tx: stream.DownloadSender,
    request: wire.GetObject,
    site: str,
    *,
    record: wire.Manifest | None = None,
) -> None:
    """Ask ``site`` for ``request``'s bytes and relay its answer on ``tx`` (not yet started):
    its ``ObjectInfo`` (with ``record``'s tag count: :func:`with_our_tags`), its frames as
    ``tx``'s credit allows, ``End``.

    Raises:
        ServiceUnavailable: ``site`` did not answer (no responders: the hub link is down or
            no node serves there) or went silent.
        S3Error: ``site``'s own answer (NoSuchKey, InvalidRange, …).
    """
    reply, body = await _ask_owner(node, request, site, downstream=tx)
    try:
        await tx.start(with_our_tags(reply, record))
        async for piece in body:
            node.counters.bytes_out += len(piece)
            await tx.send(piece)
            del piece
        await tx.end()
    finally:
        await body.aclose()  # type: ignore[attr-defined]


async def read_at_owner(
    node: CacheNode, manifest: wire.Manifest, first: int, last: int, site: str
) -> AsyncIterator[bytes]:
    """Bytes ``first..last`` (inclusive) of ``manifest``'s version, read at ``site``, the
    site that holds it (a remote record: no chunks here), for a copy made here
    (CopyObject, UploadPartCopy): the request a relayed GET makes, read here instead of
    relayed on.

    Yields:
        The owner's frames, in order (at most ``nats.max_payload`` bytes each).

    Raises:
        ServiceUnavailable: ``site`` did not answer, went silent, or holds another version
            of the key by now (this site has not applied that change yet: try again).
        S3Error: ``site``'s own answer (NoSuchKey when it deleted the key meanwhile, …).
    """
    ask = wire.GetObject(bucket=manifest.bucket, key=manifest.key, range=f"bytes={first}-{last}")
    reply, body = await _ask_owner(node, ask, site)
    try:
        if reply.etag != manifest.etag or reply.size != manifest.size:
            node.routes.drop(manifest.bucket, manifest.key)
            raise errors.ServiceUnavailable(
                f"{manifest.bucket}/{manifest.key} changed at site {site} while it was read here; try again",
                retry_after_s=1,
            )
        async for piece in body:
            yield piece
            del piece
    finally:
        await body.aclose()  # type: ignore[attr-defined]


async def relay_head(node: CacheNode, request: wire.HeadObject, site: str) -> wire.ObjectInfo:
    """Ask ``site`` for ``request``'s ``ObjectInfo``.

    Raises:
        ServiceUnavailable: ``site`` did not answer within ``nats.request_timeout_s``.
        S3Error: ``site``'s own answer.
    """
    try:
        answer = await node.nc.request(
            subjects.site_s3(site, wire.HeadObject.operation),
            wire.encode(request),
            timeout=node.config.nats.request_timeout_s,
        )
    except (NatsNoResponders, NatsTimeoutError) as exc:
        node.routes.drop(request.bucket, request.key)
        raise errors.ServiceUnavailable(f"site {site} did not answer", retry_after_s=1) from exc
    reply = stream.read_control(answer)
    if not isinstance(reply, wire.ObjectInfo):
        raise errors.InternalError(f"site {site} answered {type(reply).__name__} to a HeadObject")
    return reply
