"""Replicas of dirty chunks: an acknowledged write survives the loss of the node that took it.

While an upload streams in, each committed chunk is copied to ``cachenode.replicas - 1``
peers (the first live nodes in the object's rendezvous ranking, skipping any that fail),
at most :data:`IN_FLIGHT` chunks at a time, and the write is acknowledged only when every
copy made is on a peer's disk. A replica is a dirty chunk like the original: pinned until the
version is clean in the origin (``ObjectClean``) or released (``ChunksReleased``). With
fewer live (or willing) peers than asked for, the write goes ahead with the copies it could
make and says so in the log (one node on a laptop: one copy), unless that is fewer than
``cachenode.min_replicas`` (default 1): then the write is refused with ``ServiceUnavailable``
(503) and nothing is kept: before any byte is stored when too few nodes are live, or as soon
as one chunk ends up with too few copies (the copies it got are released).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from edgecache.cachenode.chunkstore import ChunkCorrupt, ChunkMissing
from edgecache.common import errors, placement, stream, subjects, wire
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode

__all__ = ["IN_FLIGHT", "Replicator", "serve_chunk_put"]

log = get_logger(__name__)
IN_FLIGHT = 2  # chunks being copied at once per upload (each held in memory while it goes)


class Replicator:
    """Copies one upload's chunks to peers as they are committed.

    Args:
        node: this node.
        bucket, key: the object, whose rendezvous ranking orders the peers.

    Raises:
        ServiceUnavailable: fewer live peers than ``cachenode.min_replicas - 1``.
    """

    def __init__(self, node: CacheNode, bucket: str, key: str) -> None:
        self._node = node
        self._minimum = max(1, node.config.cachenode.min_replicas)  # copies, this node's included
        copies = max(0, node.config.cachenode.replicas - 1, self._minimum - 1)
        peers = [n for n in placement.ranked(bucket, key, node.live.ids()) if n != node.node_id]
        self._peers = peers
        self._copies = min(copies, len(peers))
        if self._copies + 1 < self._minimum:
            log.warning("replicas.refused", minimum=self._minimum, live_peers=len(peers), bucket=bucket, key=key)
            raise _too_few(self._minimum, len(peers) + 1)
        if self._copies < copies:
            node.counters.short_uploads += 1
            log.warning("replicas.short", wanted=copies, live_peers=len(peers), bucket=bucket, key=key)
        self._failed: set[str] = set()  # peers that failed once: not asked again for this upload
        self._pending: list[asyncio.Task[wire.ChunkRef]] = []
        self._done: list[wire.ChunkRef] = []

    async def add(self, ref: wire.ChunkRef) -> None:
        """Start copying a committed chunk; waits while :data:`IN_FLIGHT` copies are running.

        A peer that fails is skipped for the rest of the upload; a chunk that finds fewer
        peers than wanted goes ahead with the copies it got (logged as ``replicas.short``),
        unless they are fewer than ``cachenode.min_replicas``.

        Raises:
            ServiceUnavailable: an earlier chunk got fewer copies than ``min_replicas``.
        """
        if not self._copies:
            self._done.append(wire.ChunkRef(id=ref.id, size=ref.size, nodes=[self._node.node_id]))
            return
        self._pending.append(asyncio.ensure_future(self._copy(ref)))
        if len(self._pending) >= IN_FLIGHT:
            self._done.append(await self._pending.pop(0))

    async def finish(self) -> list[wire.ChunkRef]:
        """Wait for every copy; the chunks in order, each naming the nodes that hold it.

        Raises:
            ServiceUnavailable: a chunk got fewer copies than ``cachenode.min_replicas``.
        """
        while self._pending:
            self._done.append(await self._pending.pop(0))
        return self._done

    async def abandon(self) -> None:
        """The upload failed: stop copying and let the peers evict what they got."""
        for task in self._pending:
            task.cancel()
        copied = [r.id for r in self._done]
        for task in self._pending:
            with contextlib.suppress(BaseException):
                copied.append((await task).id)
        self._pending.clear()
        if copied:
            await self._node.release(copied, local=False)

    async def _copy(self, ref: wire.ChunkRef) -> wire.ChunkRef:
        data = await self._node.store.read(ref.id)
        holders = [self._node.node_id]
        for peer in self._peers:
            if len(holders) > self._copies:
                break
            if peer in self._failed:
                continue
            try:
                reply = await stream.upload(
                    self._node.nc,
                    subjects.chunk_put(peer),
                    wire.ChunkPut(chunk_id=ref.id, size=ref.size),
                    _one(data),
                    timeout_s=self._node.config.nats.request_timeout_s,
                    liveness=Liveness.of(self._node.config.nats),
                )
                if isinstance(reply, wire.Ok):
                    holders.append(peer)
            except errors.S3Error as exc:  # gone since its last heartbeat, or its disk is full
                self._failed.add(peer)
                log.warning("replica.failed", chunk=ref.id, peer=peer, error=exc.code)
        if len(holders) < self._minimum:  # refused: the copies made are let go
            log.warning("replicas.refused", chunk=ref.id, copies=len(holders), minimum=self._minimum)
            await self._node.release([ref.id], local=False)
            raise _too_few(self._minimum, len(holders))
        if len(holders) <= self._copies:
            self._node.counters.short_chunks += 1
            log.warning("replicas.short", chunk=ref.id, copies=len(holders) - 1, wanted=self._copies)
        return wire.ChunkRef(id=ref.id, size=ref.size, nodes=holders)


def _too_few(minimum: int, available: int) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(
        f"cachenode.min_replicas asks for {minimum} copies of each chunk; "
        f"only {available} live cache node(s) took one",
        retry_after_s=1,
    )


async def _one(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def serve_chunk_put(node: CacheNode, msg: Msg) -> None:
    """Answer one ``edgecache.chunk.<node>.put``: keep the streamed chunk as a dirty replica,
    then ``Ok``; a size mismatch or a full disk is an error and nothing is kept."""
    try:
        request = wire.decode(msg.data, wire.ChunkPut)
    except Exception as exc:  # noqa: BLE001 - a bad request from a peer
        await stream.send_error(node.nc, msg.reply, errors.InvalidRequest(str(exc)))
        return
    rx = node.upload_receiver(msg, replica=True, size=request.size)
    try:
        await rx.open()
        async with node.store.writer(request.chunk_id, dirty=True) as writer:
            async for piece in rx:
                await writer.write(piece)
            if writer.size != request.size:
                raise errors.IncompleteBody(f"replica of {request.chunk_id}: {writer.size} of {request.size} bytes")
            await writer.commit()
        await rx.finish(wire.Ok())
    except (ChunkMissing, ChunkCorrupt, OSError, ValueError) as exc:
        await rx.fail(errors.ServiceUnavailable(f"replica of {request.chunk_id}: {exc}", retry_after_s=1))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the uploader
        await rx.fail(exc)
    finally:
        await rx.close()
