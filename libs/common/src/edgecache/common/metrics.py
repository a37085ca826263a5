"""Prometheus metrics shared by every service: the per-process registry, the NATS
connection's counters, and scrape-time collectors built from a service's own counters.

Every metric is named ``edgecache_<service>_<what>[_<unit>]`` (counters end in
``_total``, sizes in ``_bytes``, times in ``_seconds``); docs/operations.md has the table.
A service keeps counting in its own plain attributes (``Counters``, ``MemoryTierStats``,
``WritebackStats``, …) and a :class:`Snapshot` collector reads them when Prometheus scrapes,
so the request path pays nothing for the metrics it does not have to observe itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = [
    "LATENCY_BUCKETS_S",
    "PREFIX",
    "RequestTimes",
    "Sample",
    "Snapshot",
    "nats_collector",
    "new_registry",
]

PREFIX = "edgecache"

#: One scraped value: ``(name, kind, help, value)``; ``kind`` is ``"counter"`` or ``"gauge"``;
#: ``name`` is without the ``edgecache_<service>_`` prefix (and a counter without ``_total``).
Sample = tuple[str, str, str, float]


def new_registry() -> CollectorRegistry:
    """A registry of its own for one service process, with the process metrics
    (``process_*``: CPU seconds, resident memory, open fds), Python's (``python_info``) and
    the garbage collector's (``python_gc_*``).

    Each service process (each gateway worker) has its own: two services in one process
    (the tests) do not collide, and nothing is global.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    for shared in (PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(shared)
    return registry


class Snapshot(Collector):
    """A collector that reads a service's own counters at scrape time.

    Args:
        service: the service's name, the second part of every metric name.
        read: returns the samples (see :data:`Sample`), called once per scrape.
        labels: constant labels of every sample (a node's ``node``, …).
    """

    def __init__(
        self,
        service: str,
        read: Callable[[], Iterable[Sample]],
        labels: dict[str, str] | None = None,
    ) -> None:
        self._prefix = f"{PREFIX}_{service}_"
        self._read = read
        self._labels = dict(labels or {})

    def collect(self) -> Iterator[Metric]:
        names, values = list(self._labels), list(self._labels.values())
        for name, kind, doc, value in self._read():
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(self._prefix + name, doc, labels=names)
            family.add_metric(values, value)
            yield family


def nats_collector(service: str, nc: Callable[[], NATS | None]) -> Snapshot:
    """The NATS connection's figures (``edgecache_<service>_nats_*``): whether it is
    connected, reconnects, messages and payload bytes received and sent (nats-py's ``Client.stats``).

    Args:
        nc: returns the connection, or ``None`` before it exists.
    """

    def read() -> Iterator[Sample]:
        client = nc()
        if client is None:
            return
        stats = client.stats
        yield ("nats_connected", "gauge", "1 while connected to NATS", float(client.is_connected))
        yield ("nats_reconnects", "counter", "Reconnections to NATS", stats["reconnects"])
        yield ("nats_received_messages", "counter", "Messages from NATS", stats["in_msgs"])
        yield ("nats_sent_messages", "counter", "Messages published to NATS", stats["out_msgs"])
        yield ("nats_received_bytes", "counter", "Payload bytes from NATS", stats["in_bytes"])
        yield ("nats_sent_bytes", "counter", "Payload bytes published to NATS", stats["out_bytes"])

    return Snapshot(service, read)


#: upper bounds of the request latency histograms, seconds: from a memory-tier hit (~100 µs)
#: to a large transfer
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class RequestTimes:
    """``edgecache_<service>_request_duration_seconds{operation,<outcome>}``: a latency
    histogram whose ``_count`` is the number of requests, with its label children bound once
    per label pair (a dict lookup and one observation per request).

    Args:
        registry: where it is registered.
        service: the second part of its name.
        doc: its help text (what the time covers).
        outcome: the second label's name (``status`` in the gateway, ``outcome`` in a node).
    """

    def __init__(self, registry: CollectorRegistry, service: str, doc: str, outcome: str) -> None:
        self._histogram = Histogram(
            f"{PREFIX}_{service}_request_duration_seconds",
            doc,
            ["operation", outcome],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._children: dict[tuple[str, str | int], Histogram] = {}

    def observe(self, operation: str, outcome: str | int, seconds: float) -> None:
        """Count one request of ``operation`` that ended with ``outcome`` after ``seconds``."""
        child = self._children.get((operation, outcome))
        if child is None:
            child = self._children[(operation, outcome)] = self._histogram.labels(
                operation, str(outcome)
            )
        child.observe(seconds)
