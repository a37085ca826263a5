"""Moving object bytes in and out of chunks: uploads into the store, ranges out of it (or
out of a peer node), and serving this node's chunks to peers and to the writeback service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edgecache.cachenode.chunkstore import ChunkCorrupt, ChunkMissing
from edgecache.common import errors, stream, subjects, wire
from edgecache.common.checksums import Digests
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.cachenode.node import CacheNode

__all__ = ["read_range", "serve_chunk", "write_chunks"]

log = get_logger(__name__)


async def write_chunks(
    node: CacheNode, body: AsyncIterator[bytes], *, prefix: str, digests: Digests
) -> list[wire.ChunkRef]:
    """Write ``body`` into dirty chunks ``<prefix>.<index>`` of at most ``chunk_bytes`` each,
    updating ``digests`` as bytes pass. Each chunk is committed (fsynced) before the next
    starts; memory holds at most one incoming frame.

    Returns:
        The chunks in order (none for an empty body).

    Raises:
        Whatever ``body`` raises; ``ServiceUnavailable`` when the disk is full. On any error
        the chunks written so far are deleted before it propagates.
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
        if writer is not None and writer.size:
            refs.append(await _commit(node, writer, len(refs), prefix))
            writer = None
    except BaseException:
        if writer is not None:
            await writer.abort()
        await node.store.delete([r.id for r in refs])
        raise
    if writer is not None:
        await writer.abort()
    return refs


async def _commit(node: CacheNode, writer, index: int, prefix: str) -> wire.ChunkRef:  # type: ignore[no-untyped-def]
    try:
        size = await writer.commit()
    except OSError as exc:
        raise errors.ServiceUnavailable(f"cache node disk: {exc}", retry_after_s=5) from exc
    return wire.ChunkRef(id=f"{prefix}.{index}", size=size)


def chunk_spans(chunks: list[wire.ChunkRef], first: int, last: int) -> list[tuple[wire.ChunkRef, int, int]]:
    """The chunks covering object bytes ``first..last`` (inclusive), each with the inclusive
    byte range to take from it, in order."""
    spans = []
    offset = 0
    for chunk in chunks:
        end = offset + chunk.size - 1
        if end >= first and offset <= last:
            spans.append((chunk, max(first, offset) - offset, min(last, end) - offset))
        if offset > last:
            break
        offset += chunk.size
    return spans


async def read_chunk(
    node: CacheNode, manifest: wire.Manifest, chunk: wire.ChunkRef, first: int, last: int
) -> bytes:
    """Bytes ``first..last`` (inclusive) of one chunk: from this node's store (verified), else
    from a node that holds it.

    Raises:
        ChunkMissing: no reachable node has it (the caller may refill it from the origin).
    """
    try:
        data = await node.store.read(chunk.id, first, last)
        node.counters.hits += 1
        return data
    except (ChunkMissing, ChunkCorrupt):
        pass
    holders = [n for n in (chunk.nodes or manifest.nodes) if n != node.node_id]
    for holder in holders:
        try:
            _, body = await stream.download(
                node.nc,
                subjects.chunk_get(holder),
                wire.ChunkGet(chunk_id=chunk.id, first=first, last=last),
                window=node.config.cachenode.window_frames,
                timeout_s=node.config.nats.request_timeout_s,
            )
            data = b"".join([piece async for piece in body])
            node.counters.hits += 1
            return data
        except errors.S3Error as exc:
            log.warning("chunk.peer_read_failed", chunk=chunk.id, peer=holder, error=exc.code)
    raise ChunkMissing(chunk.id)


async def read_range(
    node: CacheNode, manifest: wire.Manifest, first: int, last: int, *, prefetch: int = 1
) -> AsyncIterator[bytes]:
    """Stream object bytes ``first..last`` (inclusive) chunk by chunk, reading up to
    ``prefetch`` chunks ahead of the consumer.

    Yields:
        One piece per chunk touched, in order.

    Raises:
        ChunkMissing: a chunk is on no reachable node.
    """
    spans = chunk_spans(manifest.chunks, first, last)
    queue: asyncio.Queue[asyncio.Task[bytes]] = asyncio.Queue(maxsize=prefetch)

    async def produce() -> None:
        for chunk, cfirst, clast in spans:
            await queue.put(asyncio.ensure_future(read_chunk(node, manifest, chunk, cfirst, clast)))

    producer = asyncio.ensure_future(produce())
    try:
        for _ in spans:
            task = await queue.get()
            data = await task
            node.counters.bytes_out += len(data)
            yield data
    finally:
        producer.cancel()
        while not queue.empty():
            queue.get_nowait().cancel()


async def serve_chunk(node: CacheNode, msg: Msg) -> None:
    """Answer one ``edgecache.chunk.<node>.get`` request: ``Ok``, the bytes, ``End``; or
    ``NoSuchKey`` when the chunk is not (or no longer) here."""
    try:
        request = wire.decode(msg.data, wire.ChunkGet)
    except Exception as exc:  # noqa: BLE001 - a bad request from a peer
        await stream.send_error(node.nc, msg.reply, errors.InvalidRequest(str(exc)))
        return
    tx = stream.DownloadSender(
        node.nc,
        msg.reply,
        window=stream.DownloadSender.window_of(msg),
        idle_timeout_s=node.config.cachenode.stream_idle_timeout_s,
    )
    try:
        try:
            data = await node.store.read(request.chunk_id, request.first, request.last)
        except (ChunkMissing, ChunkCorrupt, ValueError) as exc:
            raise errors.NoSuchKey(f"chunk {request.chunk_id} is not on {node.node_id}") from exc
        await tx.start(wire.Ok())
        await tx.send(data)
        await tx.end()
    except errors.S3Error as exc:
        await tx.fail(exc)
    finally:
        await tx.close()
