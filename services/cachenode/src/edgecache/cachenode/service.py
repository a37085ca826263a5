"""The cache node service: answers the ``s3.*`` subjects in the queue group ``cachenode``,
serves its chunks to peers, beats its heart, and evicts clean chunks.

Every request runs as its own task; at most ``MAX_INFLIGHT`` run at once per node, beyond
which the subscription stops being read and NATS holds the backlog (bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from edgecache.cachenode import (
    admin,
    buckets,
    chunks,
    copy,
    listing,
    multipart,
    objects,
    replication,
    shortcircuit,
    sites,
    tagging,
)
from edgecache.cachenode.chunkstore import ChunkStore
from edgecache.cachenode.metrics import node_monitor
from edgecache.cachenode.node import Answered, CacheNode
from edgecache.common import errors, heartbeats, stream, subjects, wire
from edgecache.common.jetstream import ensure_state
from edgecache.common.logging import get_logger
from edgecache.common.runtime import connect_nats, until_stopped
from edgecache.origin import open_origin

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from edgecache.common.config import Config

__all__ = ["HANDLERS", "MAX_INFLIGHT", "Handler", "default_node_id", "serve", "start_node"]

log = get_logger(__name__)
MAX_INFLIGHT = 256


def default_node_id(config: Config) -> str:
    """``<host>-<hash of the chunk store path>``: stable across restarts of one node."""
    digest = hashlib.blake2b(str(config.cachenode_dir().resolve()).encode(), digest_size=3).hexdigest()
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower())[:40]
    return f"{host or 'node'}-{digest}"


async def dispatch(
    node: CacheNode, msg: Msg, *, screen: Callable[[wire.Request], wire.Request] | None = None
) -> None:
    """Decode one ``s3.*`` request, run it, answer it; errors become ``wire.Error``.
    ``screen``: checks (and may rewrite) the decoded request before it runs, raising an
    ``S3Error`` to refuse it (requests from another site: :func:`.sites.site_request`)."""
    started = time.perf_counter()
    node.counters.requests += 1
    outcome = "ok"
    request: wire.Request | None = None
    try:
        request = wire.REQUEST_DECODER.decode(msg.data)
        structlog.contextvars.bind_contextvars(op=type(request).__name__)
        if screen is not None:
            request = screen(request)
        reply = await _run(node, msg, request)
        if reply is not None:
            await node.nc.publish(msg.reply, wire.encode(reply))
    except Answered as exc:
        outcome = getattr(exc.error, "code", type(exc.error).__name__)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        outcome = "InvalidRequest"
        await stream.send_error(node.nc, msg.reply, errors.InvalidRequest(f"bad request: {exc}"))
    except errors.S3Error as exc:
        outcome = exc.code
        await stream.send_error(node.nc, msg.reply, exc)
    except Exception as exc:
        outcome = "InternalError"
        log.exception("request.failed", subject=msg.subject)
        await stream.send_error(node.nc, msg.reply, exc)
    finally:
        seconds = time.perf_counter() - started
        if node.requests is not None:
            node.requests.observe(type(request).__name__ if request else "", outcome, seconds)
        log.info(
            "request",
            subject=msg.subject,
            bucket=getattr(request, "bucket", None),
            key=getattr(request, "key", None),
            outcome=outcome,
            ms=round(seconds * 1000, 2),
        )


Handler = Callable[[CacheNode, "Msg", Any], Awaitable[wire.Reply | None]]


def _replying(operation: Callable[[CacheNode, Any], Awaitable[wire.Reply]]) -> Handler:
    """A handler from an operation that answers with one reply (no stream)."""

    async def handler(node: CacheNode, msg: Msg, request: Any) -> wire.Reply:
        return await operation(node, request)

    return handler


#: The cache node's half of the operation table: the handler of each request type of
#: ``wire.Request``. Streaming operations answer on their own stream and return ``None``.
HANDLERS: dict[type[wire.Request], Handler] = {
    wire.CreateBucket: _replying(buckets.create_bucket),
    wire.DeleteBucket: _replying(buckets.delete_bucket),
    wire.HeadBucket: _replying(buckets.head_bucket),
    wire.ListBuckets: _replying(buckets.list_buckets),
    wire.PutObject: objects.put_object,
    wire.GetObject: objects.get_object,
    wire.HeadObject: _replying(objects.head_object),
    wire.DeleteObject: _replying(objects.delete_object),
    wire.ListObjects: _replying(listing.list_objects),
    wire.CreateMultipartUpload: _replying(multipart.create_multipart_upload),
    wire.UploadPart: multipart.upload_part,
    wire.CompleteMultipartUpload: _replying(multipart.complete_multipart_upload),
    wire.AbortMultipartUpload: _replying(multipart.abort_multipart_upload),
    wire.ListParts: _replying(multipart.list_parts),
    wire.CopyObject: _replying(copy.copy_object),
    wire.UploadPartCopy: _replying(copy.upload_part_copy),
    wire.ListMultipartUploads: _replying(multipart.list_multipart_uploads),
    wire.PutObjectTagging: _replying(tagging.put_object_tagging),
    wire.GetObjectTagging: _replying(tagging.get_object_tagging),
    wire.DeleteObjectTagging: _replying(tagging.delete_object_tagging),
}


async def _run(node: CacheNode, msg: Msg, request: wire.Request) -> wire.Reply | None:
    """Run one operation. Streaming operations answer on their own stream (``None``)."""
    handler = HANDLERS.get(type(request))
    if handler is None:
        raise errors.NotImplementedError_(f"{type(request).__name__} is not implemented")
    return await handler(node, msg, request)


class _Tasks:
    """Runs handlers as tasks, at most ``limit`` at once; waits for them on close."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    def callback(self, handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            await self._slots.acquire()  # blocks this subscription's reader: backpressure
            task = asyncio.ensure_future(self._run(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return cb

    async def _run(self, handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        try:
            with structlog.contextvars.bound_contextvars(request_id=(msg.headers or {}).get(stream.HDR_REQUEST_ID)):
                await handler(msg)
        except Exception:  # dispatch answers its own errors; this is an event or chunk handler
            log.exception("handler.failed", subject=msg.subject)
        finally:
            self._slots.release()

    async def close(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in self._tasks:
            task.cancel()


def _beating(node: CacheNode, handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    """``handler``, sending the requester idle heartbeats while it runs, if it asked for
    them (:mod:`edgecache.common.heartbeats`): a requester then tells this node dead in
    seconds instead of waiting out its request timeout."""

    async def beating(msg: Msg) -> None:
        async with heartbeats.sending(node.nc, msg):
            await handler(msg)

    return beating


async def _heartbeats(node: CacheNode, stop: asyncio.Event) -> None:
    host = socket.gethostname()
    while not stop.is_set():
        beat = wire.Heartbeat(
            id=f"{node.node_id}-{time.time_ns()}",
            at_ns=time.time_ns(),
            node_id=node.node_id,
            host=host,
            started=node.started,
            stats=node.stats(),
        )
        with contextlib.suppress(Exception):
            await node.nc.publish(subjects.heartbeat(node.node_id), wire.encode(beat))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), node.config.cachenode.heartbeat_s)


async def _evictions(node: CacheNode, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            evicted = await node.store.evict()
            if evicted:
                log.info("evicted", chunks=len(evicted))
        except Exception:
            log.exception("eviction.failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _upload_sweeps(node: CacheNode, stop: asyncio.Event) -> None:
    """Abort abandoned multipart uploads (:func:`.multipart.abort_abandoned`), a few times
    per ``cachenode.multipart_max_age_s`` and at least hourly."""
    period_s = min(3600.0, node.config.cachenode.multipart_max_age_s / 4)
    while not stop.is_set():
        try:
            aborted = await multipart.abort_abandoned(node)
            if aborted:
                log.info("uploads.aborted", uploads=aborted)
        except Exception:
            log.exception("uploads.sweep.failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)


async def on_released(node: CacheNode, msg: Msg) -> None:
    """``ChunksReleased``: the chunks (replicas or originals) held here become evictable."""
    event = wire.decode(msg.data, wire.ChunksReleased)
    await node.store.mark_clean(i for i in event.chunk_ids if node.store.has(i))


async def on_clean(node: CacheNode, msg: Msg) -> None:
    """``ObjectClean``: the version is in the origin; its chunks here become evictable."""
    event = wire.decode(msg.data, wire.ObjectClean)
    found = await node.catalog.get(event.bucket, event.key)
    if found is not None and found.manifest.version == event.version:
        await node.store.mark_clean(c.id for c in found.manifest.chunks if node.store.has(c.id))


async def start_node(config: Config, stack: AsyncExitStack) -> CacheNode:
    """Connect, open the chunk store and origin, subscribe; everything unwinds with ``stack``."""
    nc = await connect_nats(config.nats, name="edgecache-cachenode")
    stack.push_async_callback(nc.drain)
    state = await ensure_state(
        nc.jetstream(), node_ttl_s=config.federator.node_ttl_s, replicas=config.nats.replicas
    )
    store = ChunkStore(
        config.cachenode_dir(),
        capacity_bytes=config.cachenode.capacity_bytes,
        high_watermark=config.cachenode.high_watermark,
        low_watermark=config.cachenode.low_watermark,
    )
    await store.open()
    origin = open_origin(config)
    await origin.start()
    stack.push_async_callback(origin.close)
    node = CacheNode(
        nc=nc, state=state, store=store, origin=origin, config=config,
        node_id=config.cachenode.node_id or default_node_id(config),
    )
    structlog.contextvars.bind_contextvars(node=node.node_id)
    stack.push_async_callback(node.filler.close)
    stack.push_async_callback(node.adoptions.close)  # unwound first: creates in flight finish
    await node.live.refresh()
    recovered = await node.catalog.recover(node.node_id)
    tasks = _Tasks(MAX_INFLIGHT)
    stack.push_async_callback(tasks.close, 10.0)
    subs = [
        await nc.subscribe(subjects.s3(op), queue=subjects.CACHENODE_QUEUE, cb=tasks.callback(_beating(node, lambda m: dispatch(node, m))))
        for op in subjects.S3_OPERATIONS
    ]
    subs.append(await nc.subscribe(subjects.chunk_get(node.node_id), cb=tasks.callback(_beating(node, lambda m: chunks.serve_chunk(node, m)))))
    subs.append(await nc.subscribe(subjects.EVENTS_OBJECT_CLEAN, cb=tasks.callback(lambda m: on_clean(node, m))))
    subs.append(await nc.subscribe(subjects.chunk_put(node.node_id), cb=tasks.callback(_beating(node, lambda m: replication.serve_chunk_put(node, m)))))
    subs.append(await nc.subscribe(subjects.EVENTS_CHUNKS_RELEASED, cb=tasks.callback(lambda m: on_released(node, m))))
    for subject in admin.HANDLERS:  # the admin API's requests (purge, warm, uploads)
        subs.append(await nc.subscribe(subject, queue=subjects.CACHENODE_QUEUE, cb=tasks.callback(lambda m: admin.dispatch(node, m))))
    subs.append(await nc.subscribe(subjects.EVENTS_CHUNKS_PURGED, cb=tasks.callback(lambda m: admin.on_chunks_purged(node, m))))
    if site := config.federation.site:  # federation (docs/architecture.md, Federation)
        subs.append(await nc.subscribe(subjects.FED_APPLY, queue=subjects.CACHENODE_QUEUE, cb=tasks.callback(lambda m: sites.apply_change(node, m))))
        for op in sites.SITE_OPERATIONS:  # reads of this site's versions by other sites
            subs.append(await nc.subscribe(subjects.site_s3(site, op), queue=subjects.CACHENODE_QUEUE, cb=tasks.callback(_beating(node, lambda m: dispatch(node, m, screen=sites.site_request)))))
        # not through ``tasks``: a key's cached route is dropped before a later request runs
        subs.append(await nc.subscribe(subjects.EVENTS_INVALIDATE, cb=functools.partial(sites.on_invalidate, node)))
    node.lease_subject = nc.new_inbox()  # under our inbox prefix: every requester may publish there
    subs.append(await nc.subscribe(node.lease_subject, cb=functools.partial(shortcircuit.on_release, node)))

    async def unsubscribe() -> None:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    stack.push_async_callback(unsubscribe)
    await nc.flush()  # the server knows every subscription before we call ourselves started
    log.info("cachenode.started", store=str(config.cachenode_dir()), origin=config.origin.kind, recovered_intents=recovered, pid=os.getpid())
    return node


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run a cache node until ``stop`` is set.

    Raises:
        edgecache.common.runtime.LoopEnded: a background loop ended before ``stop``.
    """
    async with AsyncExitStack() as stack:
        node = await start_node(config, stack)
        await stack.enter_async_context(node_monitor(node))
        background = [
            asyncio.create_task(_heartbeats(node, stop), name="heartbeats"),
            asyncio.create_task(_evictions(node, stop), name="evictions"),
            asyncio.create_task(_upload_sweeps(node, stop), name="upload-sweeps"),
            asyncio.create_task(node.live.run(stop), name="live-objects"),
        ]
        try:
            await until_stopped(stop, background)
        finally:
            log.info("cachenode.stopping")
            if not stop.is_set():  # a loop ended early: the rest stop with the service
                for task in background:
                    task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
