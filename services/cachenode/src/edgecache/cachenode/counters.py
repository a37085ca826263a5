"""What a cache node counts: requests, cache hits and misses, fills and bytes moved."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass
class Counters:
    """What this node did since it started (counts, bytes). Heartbeats carry them
    (``wire.NodeStats``)."""

    hits: int = 0
    misses: int = 0
    fills: int = 0  # ranged GETs of the origin
    fill_bytes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0
    plans: int = 0  # GetObjects answered with a read plan (short-circuit)
    short_uploads: int = 0  # uploads that found fewer live peers than cachenode.replicas asks
    short_chunks: int = 0  # dirty chunks acknowledged with fewer copies than wanted
