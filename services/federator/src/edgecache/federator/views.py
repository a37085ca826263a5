"""What the admin API answers with: the cluster, its nodes and their cache statistics, built
from the heartbeats the federator holds (:class:`~.membership.Membership`), and the resolved
config with its secrets redacted. Sizes in bytes, times in seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from edgecache.common import wire
from edgecache.common.backlog import Backlog

if TYPE_CHECKING:
    from edgecache.common.config import Config
    from edgecache.federator.membership import Membership

__all__ = [
    "REDACTED",
    "SECRET_FIELDS",
    "CacheTotals",
    "CacheView",
    "ClusterView",
    "cache_view",
    "FederatorView",
    "NodeView",
    "cluster_view",
    "hit_ratio",
    "node_views",
    "redacted_config",
    "totals_of",
]

#: Config fields whose values never leave the process (any section).
SECRET_FIELDS = frozenset({"password", "secret_key", "token", "connection_string"})
REDACTED = "***"


def hit_ratio(hits: int, misses: int) -> float | None:
    """``hits / (hits + misses)`` (chunk reads served from a cache / all chunk reads), or
    ``None`` before the first read."""
    total = hits + misses
    return hits / total if total else None


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    """One live cache node, from its last heartbeat."""

    node_id: str
    host: str
    started: float  # s since the Unix epoch
    uptime_s: float
    last_seen_s: float  # since its last heartbeat was sent
    hit_ratio: float | None
    stats: wire.NodeStats


class CacheTotals(msgspec.Struct, frozen=True, kw_only=True):
    """The live nodes' statistics added up (counters since each node started)."""

    nodes: int
    capacity_bytes: int
    used_bytes: int
    dirty_bytes: int
    chunks: int
    hits: int
    misses: int
    hit_ratio: float | None
    fills: int
    fill_bytes: int
    bytes_in: int
    bytes_out: int
    evictions: int
    evicted_bytes: int


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/cluster``: nodes, totals, the write-back backlog (``None`` with
    ``writeback_error`` when JetStream did not answer)."""

    at: float  # when this was read, s since the Unix epoch
    nodes: list[NodeView]
    totals: CacheTotals
    writeback: Backlog | None
    writeback_error: str = ""


class CacheView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/cache``: the cache statistics of the cluster and of each node (by id)."""

    totals: CacheTotals
    nodes: dict[str, CacheTotals]


class FederatorView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/federator``: the federator itself."""

    started: float
    uptime_s: float
    nats_url: str
    members: int
    node_ttl_s: float
    jobs_running: int


def node_views(membership: Membership, now: float | None = None) -> list[NodeView]:
    """Every live node, sorted by id."""
    now = time.time() if now is None else now
    views = []
    for node_id in membership.node_ids():
        beat = membership.get(node_id)
        if beat is None:
            continue
        views.append(
            NodeView(
                node_id=beat.node_id,
                host=beat.host,
                started=beat.started,
                uptime_s=max(0.0, now - beat.started),
                last_seen_s=max(0.0, now - beat.at_ns / 1e9),
                hit_ratio=hit_ratio(beat.stats.hits, beat.stats.misses),
                stats=beat.stats,
            )
        )
    return views


def totals_of(nodes: list[NodeView]) -> CacheTotals:
    """The statistics of ``nodes`` added up."""

    def total(field: str) -> int:
        return sum(getattr(n.stats, field) for n in nodes)

    return CacheTotals(
        nodes=len(nodes),
        capacity_bytes=total("capacity_bytes"),
        used_bytes=total("used_bytes"),
        dirty_bytes=total("dirty_bytes"),
        chunks=total("chunks"),
        hits=total("hits"),
        misses=total("misses"),
        hit_ratio=hit_ratio(total("hits"), total("misses")),
        fills=total("fills"),
        fill_bytes=total("fill_bytes"),
        bytes_in=total("bytes_in"),
        bytes_out=total("bytes_out"),
        evictions=total("evictions"),
        evicted_bytes=total("evicted_bytes"),
    )


def cluster_view(
    membership: Membership, backlog: Backlog | None, backlog_error: str = ""
) -> ClusterView:
    """The cluster as the federator sees it now."""
    now = time.time()
    nodes = node_views(membership, now)
    return ClusterView(
        at=now,
        nodes=nodes,
        totals=totals_of(nodes),
        writeback=backlog,
        writeback_error=backlog_error,
    )


def redacted_config(config: Config) -> dict[str, Any]:
    """The resolved config as a JSON-able dict, each non-empty :data:`SECRET_FIELDS` value
    replaced by :data:`REDACTED`, and credentials in URLs (``nats://user:pw@host``) too."""
    tree = msgspec.to_builtins(config)
    for section in tree.values():
        if not isinstance(section, dict):
            continue
        for name, value in section.items():
            if name in SECRET_FIELDS and value:
                section[name] = REDACTED
            elif isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1]:
                scheme, rest = value.split("://", 1)
                section[name] = f"{scheme}://{REDACTED}@{rest.rsplit('@', 1)[1]}"
    return tree


def cache_view(membership: Membership) -> CacheView:
    """The cache statistics of the cluster and of each live node."""
    nodes = node_views(membership)
    return CacheView(totals=totals_of(nodes), nodes={n.node_id: totals_of([n]) for n in nodes})
