"""Moving object bytes into chunks (uploads) and serving this node's chunks to peers and to
the writeback service. Reading objects out of chunks is :mod:`.readthrough`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edgecache.cachenode import readthrough
from edgecache.cachenode.chunkstore import ChunkCorrupt, ChunkMissing
from edgecache.common import errors, stream, wire
from edgecache.common.checksums import Digests
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode
    from edgecache.cachenode.replication import Replicator

__all__ = ["serve_chunk", "write_chunks"]

log = get_logger(__name__)


async def write_chunks(
    node: CacheNode, body: AsyncIterator[bytes], *, prefix: str, digests: Digests, replicator: Replicator
) -> list[wire.ChunkRef]:
    """Write ``body`` into dirty chunks ``<prefix>.<index>`` of at most ``chunk_bytes`` each,
    updating ``digests`` as bytes pass, and hand each committed chunk to ``replicator``.
    Each chunk is committed (fsynced) before the next starts; memory holds one incoming
    frame plus the chunks being copied to peers.

    Returns:
        The chunks in order (none for an empty body), each naming the nodes that hold it.

    Raises:
        Whatever ``body`` raises; ``ServiceUnavailable`` when the disk is full or too few
        peers took a replica. On any error the chunks written so far are deleted here and
        released on the peers before it propagates.
    """
    refs: list[wire.ChunkRef] = []
    limit = node.chunk_bytes
    writer = None
    try:
        async for piece in body:
            node.counters.bytes_in += len(piece)
            digests.update(piece)
            view = memoryview(piece)
            while view:
                if writer is None:
                    writer = node.store.writer(f"{prefix}.{len(refs)}", dirty=True)
                room = limit - writer.size
                await writer.write(view[:room])
                view = view[room:]
                if writer.size >= limit:
                    refs.append(await _commit(node, writer, len(refs), prefix))
                    writer = None
                    await replicator.add(refs[-1])
        if writer is not None and writer.size:
            refs.append(await _commit(node, writer, len(refs), prefix))
            writer = None
            await replicator.add(refs[-1])
        if writer is not None:
            await writer.abort()
        return await replicator.finish()
    except BaseException:
        if writer is not None:
            await writer.abort()
        await replicator.abandon()
        await node.store.delete([r.id for r in refs])
        raise


async def _commit(node: CacheNode, writer, index: int, prefix: str) -> wire.ChunkRef:  # type: ignore[no-untyped-def]
    try:
        size = await writer.commit()
    except OSError as exc:
        raise errors.ServiceUnavailable(f"cache node disk: {exc}", retry_after_s=5) from exc
    return wire.ChunkRef(id=f"{prefix}.{index}", size=size)


async def serve_chunk(node: CacheNode, msg: Msg) -> None:
    """Answer one ``edgecache.chunk.<node>.get`` request: ``Ok``, the bytes, ``End``.

    A request naming the object (we are its owner) is filled from the origin when the chunk
    is not here; otherwise a missing chunk is ``NoSuchKey``.
    """
    try:
        request = wire.decode(msg.data, wire.ChunkGet)
    except Exception as exc:  # noqa: BLE001 - a bad request from a peer
        await stream.send_error(node.nc, msg.reply, errors.InvalidRequest(str(exc)))
        return
    tx = node.download_sender(msg)
    try:
        if request.bucket and request.index >= 0:
            found = await node.catalog.get(request.bucket, request.key)
            manifest = found.manifest if found is not None else None
            if manifest is None or manifest.version != request.version or request.index >= len(manifest.chunks):
                raise errors.NoSuchKey(f"version {request.version} of {request.bucket}/{request.key} is gone")
            size = manifest.chunks[request.index].size
            pieces = readthrough.read_chunk_span(
                node, manifest, request.index, request.first,
                size - 1 if request.last is None else request.last,
                prefetch=request.prefetch, local_only=True, downstream=tx,
            )
            started = False
            async for piece in pieces:
                if not started:
                    await tx.start(wire.Ok())
                    started = True
                await tx.send(piece)
            if not started:
                await tx.start(wire.Ok())
        else:
            try:
                data = await node.store.read(request.chunk_id, request.first, request.last)
            except (ChunkMissing, ChunkCorrupt, ValueError) as exc:
                raise errors.NoSuchKey(f"chunk {request.chunk_id} is not on {node.node_id}") from exc
            await tx.start(wire.Ok())
            await tx.send(data)
        await tx.end()
    except ChunkMissing as exc:
        await tx.fail(errors.NoSuchKey(f"chunk {exc} is not on {node.node_id}"))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the requester
        await tx.fail(exc)
    finally:
        await tx.close()
