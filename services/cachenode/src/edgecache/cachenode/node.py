"""The cache node's shared state and the primitives its operations are built from.

A :class:`CacheNode` owns one chunk store, one origin handle, one NATS connection, the
catalog of manifests it reads and changes them through, its fills and its view of the live
nodes; the operation modules (:mod:`.buckets`, :mod:`.objects`, :mod:`.listing`,
:mod:`.multipart`, :mod:`.readthrough`) take it as their first argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from edgecache.cachenode.adoptions import Adoptions
from edgecache.cachenode.counters import Counters
from edgecache.cachenode.fill import Filler
from edgecache.cachenode.membership import LiveNodes
from edgecache.cachenode.routes import RouteCache
from edgecache.common import errors, stream, subjects, wire
from edgecache.common.catalog import Catalog, Entry
from edgecache.common.credit import CreditBudget
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from edgecache.cachenode.chunkstore import ChunkStore
    from edgecache.common.config import Config
    from edgecache.common.jetstream import State
    from edgecache.common.metrics import RequestTimes
    from edgecache.origin import Origin

__all__ = ["Answered", "CacheNode", "now"]

log = get_logger(__name__)


def now() -> float:
    """Seconds since the Unix epoch."""
    return time.time()


class Answered(Exception):
    """An operation failed and has already sent its error to the requester (mid-stream
    operations answer on their own stream); the dispatcher only logs it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class CacheNode:
    """State shared by every operation of one cache node.

    ``credit`` is the download credit of ``nc``: every chunk this node reads from a peer
    takes its credit from there (``nats.download_credit_bytes``).
    """

    nc: NATS
    state: State
    store: ChunkStore
    origin: Origin
    config: Config
    node_id: str
    catalog: Catalog = field(init=False)
    filler: Filler = field(init=False)
    adoptions: Adoptions = field(init=False)
    live: LiveNodes = field(init=False)
    credit: CreditBudget = field(init=False)
    routes: RouteCache = field(init=False)  # owner site of keys held at another site (federation)
    started: float = field(default_factory=now)
    counters: Counters = field(default_factory=Counters)
    lease_subject: str = ""  # where short-circuit readers release leases (an inbox of ours)
    requests: RequestTimes | None = None  # request latencies by operation (metrics), if any

    def __post_init__(self) -> None:
        self.catalog = Catalog(
            self.nc, self.state, clean_ttl_s=self.config.cachenode.manifest_ttl_s,
            site=self.config.federation.site,
        )
        self.filler = Filler(
            self.store,
            self.origin,
            self.catalog,
            self.counters,
            slots=4 * self.config.cachenode.fill_concurrency,
            run_bytes=self.config.cachenode.fill_run_bytes,
        )
        self.adoptions = Adoptions()
        self.live = LiveNodes(self.state.nodes, self.node_id, refresh_s=self.config.cachenode.heartbeat_s)
        self.credit = CreditBudget(self.nc, max_bytes=self.config.nats.download_credit_bytes)
        self.upload_credit = CreditBudget(self.nc, max_bytes=self.config.nats.upload_credit_bytes)
        self.replica_credit = CreditBudget(self.nc, max_bytes=self.config.nats.upload_credit_bytes)
        self.routes = RouteCache(self.config.federation.route_ttl_s)

    @property
    def chunk_bytes(self) -> int:
        """Size of the chunks this node cuts uploads into, in bytes."""
        return self.config.cachenode.chunk_bytes

    # -- manifests ---------------------------------------------------------------------------
    async def get_manifest(self, bucket: str, key: str) -> Entry | None:
        """The manifest of ``bucket/key`` and its revision, or ``None``: the catalog's
        :meth:`~edgecache.common.catalog.Catalog.get`, for callers outside the node."""
        return await self.catalog.get(bucket, key)

    # -- streams -----------------------------------------------------------------------------
    def upload_receiver(
        self, msg: Msg, *, replica: bool = False, size: int | None = None
    ) -> stream.UploadReceiver:
        """The receiving end of the upload stream ``msg`` opens (not yet open), with its
        credit from this connection's upload budget (``replica``: from the budget of the
        replica streams of other nodes). ``size``: the body's length in bytes when the
        request declares it: the stream then never holds more credit than that body needs
        (a small upload stuck in a NATS failover holds one frame of the budget, not a
        whole window, until it times out)."""
        window = self.config.cachenode.window_frames
        if size is not None:
            window = max(1, min(window, -(-size // stream.frame_bytes(self.nc))))
        return stream.UploadReceiver(
            self.nc,
            msg.reply,
            subjects.stream_inbox(self.node_id, new_id()),
            window=window,
            idle_timeout_s=self.config.cachenode.stream_idle_timeout_s,
            budget=self.replica_credit if replica else self.upload_credit,
        )

    def download_sender(self, msg: Msg) -> stream.DownloadSender:
        """The sending end of the download stream ``msg`` asks for (not yet started)."""
        return stream.DownloadSender(
            self.nc,
            msg.reply,
            window=stream.DownloadSender.window_of(msg),
            idle_timeout_s=self.config.cachenode.stream_idle_timeout_s,
        )

    async def release(self, chunk_ids: list[str], *, local: bool = True) -> None:
        """Unpin chunks no version needs pinned any more (superseded, deleted, aborted or
        failed uploads): here (unless ``local`` is false) and, by a ``ChunksReleased``
        event, on every node holding a replica. They become evictable, not deleted: a read
        in progress may still use them."""
        if local:
            await self.store.mark_clean(i for i in chunk_ids if self.store.has(i))
        if chunk_ids:
            event = wire.ChunksReleased(id=new_id(), at_ns=time.time_ns(), chunk_ids=list(chunk_ids))
            await self.nc.publish(subjects.EVENTS_CHUNKS_RELEASED, wire.encode(event))

    # -- buckets -----------------------------------------------------------------------------
    async def bucket_record(self, bucket: str) -> tuple[wire.BucketRecord, int] | None:
        """The bucket's record in KV ``buckets`` (maybe a tombstone) and its revision."""
        try:
            entry = await self.state.buckets.get(bucket)
        except KeyNotFoundError:
            return None
        return (wire.decode(entry.value, wire.BucketRecord), entry.revision) if entry.value else None

    async def require_bucket(self, bucket: str) -> wire.BucketRecord:
        """The bucket's record; a bucket that exists only in the origin is adopted.

        Raises:
            NoSuchBucket: it was deleted here, or neither KV ``buckets`` nor the origin has it.
        """
        found = await self.bucket_record(bucket)
        if found is not None:
            if found[0].deleted:
                raise errors.NoSuchBucket(resource=bucket)
            return found[0]
        if await self.origin.bucket_exists(bucket):
            record = wire.BucketRecord(name=bucket, created=now())
            try:
                await self.state.buckets.create(bucket, wire.encode(record))
            except KeyWrongLastSequenceError:
                pass
            return record
        raise errors.NoSuchBucket(resource=bucket)

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> wire.NodeStats:
        """This node's counters and chunk store figures, as heartbeats carry them."""
        s = self.store.stats
        c = self.counters
        return wire.NodeStats(
            capacity_bytes=s.capacity_bytes,
            used_bytes=s.used_bytes,
            dirty_bytes=s.dirty_bytes,
            chunks=s.chunks,
            hits=c.hits,
            misses=c.misses,
            fills=c.fills,
            fill_bytes=c.fill_bytes,
            evictions=s.evictions,
            evicted_bytes=s.evicted_bytes,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            requests=c.requests,
        )
