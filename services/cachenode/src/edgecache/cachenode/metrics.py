"""The cache node's metrics and health: its counters and chunk store figures read at scrape
time, request latencies by operation and outcome, readiness with a writable chunk store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from edgecache.common.health import writable_dir
from edgecache.common.metrics import RequestTimes, Sample, Snapshot
from edgecache.common.monitor import Monitor

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode

__all__ = ["node_monitor", "node_samples"]


def node_samples(node: CacheNode) -> Iterator[Sample]:
    """What the node's heartbeat carries (``wire.NodeStats``), and more, as samples."""
    st = node.stats()
    c = node.counters
    yield (
        "hits",
        "counter",
        "Chunk reads served from the disk tier (this node or a peer)",
        st.hits,
    )
    yield ("misses", "counter", "Chunk reads that followed a fill from the origin", st.misses)
    yield ("fills", "counter", "Ranged GETs of the origin that filled chunks", st.fills)
    yield ("fill_bytes", "counter", "Bytes filled from the origin", st.fill_bytes)
    yield ("evictions", "counter", "Chunks evicted from the disk tier", st.evictions)
    yield ("evicted_bytes", "counter", "Bytes evicted from the disk tier", st.evicted_bytes)
    yield ("received_bytes", "counter", "Object bytes received (uploads)", st.bytes_in)
    yield ("sent_bytes", "counter", "Object bytes streamed to readers", st.bytes_out)
    yield ("short_circuit_plans", "counter", "GetObjects answered with a read plan", c.plans)
    yield (
        "replica_short_uploads",
        "counter",
        "Uploads with fewer live peers than replicas",
        c.short_uploads,
    )
    yield (
        "replica_short_chunks",
        "counter",
        "Dirty chunks acknowledged with too few copies",
        c.short_chunks,
    )
    yield ("used_bytes", "gauge", "Bytes of chunks on disk", st.used_bytes)
    yield (
        "capacity_bytes",
        "gauge",
        "Chunk store capacity (cachenode.capacity_bytes)",
        st.capacity_bytes,
    )
    yield ("dirty_bytes", "gauge", "Bytes of chunks not yet in the origin (pinned)", st.dirty_bytes)
    yield ("chunks", "gauge", "Chunks on disk", st.chunks)
    yield (
        "live_nodes",
        "gauge",
        "Cache nodes this node sees alive (KV nodes)",
        len(node.live.ids()),
    )


def node_monitor(node: CacheNode) -> Monitor:
    """The node's :class:`~edgecache.common.monitor.Monitor` on ``cachenode.metrics_port``
    (``async with`` it to serve): every sample of :func:`node_samples` labelled with the
    node id, request latencies (``node.requests``), readiness with NATS, JetStream and a
    write to the chunk store's ``tmp/``."""
    config = node.config
    monitor = Monitor("cachenode", host=config.metrics.host, port=config.cachenode.metrics_port)
    monitor.watch_nats(node.nc)
    monitor.registry.register(
        Snapshot("cachenode", lambda: node_samples(node), {"node": node.node_id})
    )
    monitor.health.add_check("chunk_store", writable_dir(node.store.root / "tmp"))
    node.requests = RequestTimes(
        monitor.registry,
        "cachenode",
        "s3.* requests: time from arrival to the reply or the stream's end, seconds",
        "outcome",
    )
    return monitor
