"""The gateway's Prometheus metrics: requests by S3 operation and status, and the memory
tier's and short-circuit reads' counters.

Per request the gateway pays one histogram observation, on a label child bound once per
``(operation, status)``, and two integer additions (:meth:`RequestMetrics.observe`,
called by :meth:`~edgecache.gateway.exchange.Exchange.finish`); the tier's and the
short-circuit reads' counters are plain attributes read at scrape time (:func:`tier_samples`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecache.common.metrics import RequestTimes, Sample, Snapshot

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from edgecache.gateway.state import GatewayState

__all__ = ["RequestMetrics", "gateway_collector", "tier_samples"]


class RequestMetrics(Collector):
    """``edgecache_gateway_request_duration_seconds{operation,status}`` (its ``_count`` is
    the number of requests), ``edgecache_gateway_received_bytes_total{operation}`` and
    ``edgecache_gateway_sent_bytes_total{operation}`` (body bytes).

    ``operation`` is the S3 action (``GetObject``, …; ``""`` for a request that could not be
    routed); ``status`` the HTTP status sent (499: the client went away first).

    Per request: one histogram observation (prometheus-client, on a child bound once per
    label pair) and two additions to plain integers, which this collector reads at scrape
    time (a prometheus-client counter increment takes a lock: ~1.6 µs here).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._times = RequestTimes(
            registry,
            "gateway",
            "S3 requests: time from arrival to the last byte sent, seconds",
            "status",
        )
        self._received: defaultdict[str, int] = defaultdict(int)
        self._sent: defaultdict[str, int] = defaultdict(int)
        registry.register(self)

    def observe(
        self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        """Count one finished request (``seconds`` from arrival to its end)."""
        self._times.observe(operation, status, seconds)
        self._received[operation] += bytes_in
        self._sent[operation] += bytes_out

    def collect(self) -> Iterator[Metric]:
        for name, doc, values in (
            ("received_bytes", "Request body bytes received (decoded)", self._received),
            ("sent_bytes", "Response body bytes sent", self._sent),
        ):
            family = CounterMetricFamily(f"edgecache_gateway_{name}", doc, labels=["operation"])
            for operation, value in list(values.items()):
                family.add_metric([operation], value)
            yield family


def tier_samples(state: GatewayState | None) -> Iterator[Sample]:
    """The memory tier's and the short-circuit reads' counters of one worker (nothing for
    one that is off)."""
    if state is None:
        return
    tier = state.memtier
    if tier is not None:
        st = tier.stats
        yield ("memory_tier_hits", "counter", "GET/HEAD answered from the memory tier", st.hits)
        yield ("memory_tier_misses", "counter", "GET/HEAD the memory tier did not hold", st.misses)
        yield ("memory_tier_fills", "counter", "Objects admitted to the memory tier", st.admitted)
        yield (
            "memory_tier_refused_fills",
            "counter",
            "Fills refused: invalidated meanwhile",
            st.refused,
        )
        yield (
            "memory_tier_evictions",
            "counter",
            "Objects evicted from the memory tier",
            st.evicted,
        )
        yield (
            "memory_tier_invalidations",
            "counter",
            "Objects dropped by invalidation events",
            st.invalidated,
        )
        yield (
            "memory_tier_clears",
            "counter",
            "Whole-tier drops (disconnect, event gap)",
            st.cleared,
        )
        yield (
            "memory_tier_sent_bytes",
            "counter",
            "Body bytes sent from the memory tier",
            st.sent_bytes,
        )
        yield (
            "memory_tier_used_bytes",
            "gauge",
            "Body bytes held in the memory tier",
            st.used_bytes,
        )
        yield (
            "memory_tier_capacity_bytes",
            "gauge",
            "Memory tier capacity of this worker",
            tier.capacity_bytes,
        )
        yield ("memory_tier_objects", "gauge", "Objects held in the memory tier", st.objects)
        yield (
            "memory_tier_in_sync",
            "gauge",
            "1 while the tier saw every invalidation",
            float(state.in_sync()),
        )
    local = state.local
    if local is not None:
        yield (
            "short_circuit_plans",
            "counter",
            "GETs answered by a read plan of chunk files",
            local.plans,
        )
        yield (
            "short_circuit_completed",
            "counter",
            "Read plans served wholly from the files",
            local.completed,
        )
        yield (
            "short_circuit_fallbacks",
            "counter",
            "Read plans given up before the first byte",
            local.fallbacks,
        )
        yield (
            "short_circuit_resumed",
            "counter",
            "Read plans finished by a streamed GET",
            local.resumed,
        )
        yield (
            "short_circuit_failed_chunks",
            "counter",
            "Chunk files missing or failing their check",
            local.failed_chunks,
        )
        yield (
            "short_circuit_sent_bytes",
            "counter",
            "Bytes read from chunk files and sent",
            local.bytes,
        )
        yield (
            "short_circuit_buffers_in_use",
            "gauge",
            "Chunk buffers held by reads now",
            local.in_use,
        )


def gateway_collector(state: Callable[[], GatewayState | None]) -> Snapshot:
    """A scrape-time collector of :func:`tier_samples` for the worker whose state
    ``state()`` returns (``None`` before the app started)."""
    return Snapshot("gateway", lambda: tier_samples(state()))
