"""Short-circuit reads: a GetObject from a requester on this host, answered with the chunk
files to read instead of a byte stream.

A requester opts in by sending its host id (``wire.GetObject.local_host``). When it equals
this node's (:func:`edgecache.common.hostid.host_id`) and **every** chunk of the requested
range is committed in this node's store (not being filled, not only on a peer), the node
answers a :class:`~edgecache.common.wire.ReadPlan`: the files, the part of each to send, and
a lease (:mod:`.chunkleases`) that keeps them from eviction until the requester releases it
(:class:`~edgecache.common.wire.LeaseRelease` on the plan's ``release_subject``, this
node's own inbox) or ``cachenode.lease_s`` passes. Otherwise the node streams, as for any
requester. The requester reads and verifies the files itself (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from edgecache.cachenode.readthrough import chunk_spans
from edgecache.common import wire
from edgecache.common.hostid import host_id
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode

__all__ = ["answer", "on_release", "on_this_host", "plan"]

log = get_logger(__name__)


def on_this_host(node: CacheNode, request: wire.GetObject) -> bool:
    """Whether the requester of ``request`` runs on this node's host (and asked to read
    files: ``local_host``)."""
    return bool(request.local_host) and request.local_host == host_id() and bool(node.lease_subject)


def plan(node: CacheNode, request: wire.GetObject, manifest: wire.Manifest, info: wire.ObjectInfo) -> wire.ReadPlan | None:
    """The read plan for ``request`` (its range is ``info``'s), with a lease granted, or
    ``None`` when the requester is not on this host or a chunk is not committed here."""
    if not on_this_host(node, request):
        return None
    if manifest.size == 0:
        return None
    first = 0 if info.range_first is None else info.range_first
    last = manifest.size - 1 if info.range_last is None else info.range_last
    pieces: list[wire.PlanPiece] = []
    store = node.store
    for index, cfirst, clast in chunk_spans(manifest.chunks, first, last):
        chunk = manifest.chunks[index]
        if chunk.id in node.filler.active or store.size_of(chunk.id) != chunk.size:
            return None
        paths = store.paths_of(chunk.id)
        if paths is None:
            return None
        pieces.append(
            wire.PlanPiece(
                chunk_id=chunk.id,
                paths=[str(p.absolute()) for p in paths],
                chunk_size=chunk.size,
                offset=cfirst,
                length=clast - cfirst + 1,
            )
        )
    lease_id = new_id()
    lease_s = node.config.cachenode.lease_s
    store.leases.grant(lease_id, (p.chunk_id for p in pieces), lease_s)
    for piece in pieces:
        store.access(piece.chunk_id)
    node.counters.hits += len(pieces)
    node.counters.plans += 1
    return wire.ReadPlan(
        info=info, pieces=pieces, lease_id=lease_id, lease_s=lease_s, release_subject=node.lease_subject
    )


async def answer(node: CacheNode, msg: Msg, request: wire.GetObject, manifest: wire.Manifest, info: wire.ObjectInfo) -> bool:
    """Answer ``msg`` with a read plan if one can be made (see :func:`plan`); whether it was."""
    planned = plan(node, request, manifest, info)
    if planned is None:
        return False
    try:
        await node.nc.publish(msg.reply, wire.encode(planned))
    except BaseException:
        node.store.leases.release(planned.lease_id)
        raise
    return True


async def on_release(node: CacheNode, msg: Msg) -> None:
    """A :class:`~edgecache.common.wire.LeaseRelease`: unpin the lease's chunks."""
    try:
        release = wire.decode(msg.data, wire.LeaseRelease)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("lease.release.undecodable", subject=msg.subject)
        return
    node.store.leases.release(release.lease_id)
