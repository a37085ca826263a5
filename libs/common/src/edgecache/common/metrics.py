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
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = ["PREFIX", "Sample", "Snapshot", "nats_collector", "new_registry"]

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
