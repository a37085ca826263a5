"""The writeback service's metrics: its replica's counters (read at scrape time) and the
``WRITEBACK`` stream's backlog and oldest intent age (asked of JetStream before each scrape).

The backlog is the stream's, the same for every replica: aggregate it with ``max``, not
``sum``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from edgecache.common import subjects
from edgecache.common.metrics import Sample, Snapshot
from edgecache.common.monitor import Monitor

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.config import Config
    from edgecache.writeback.stats import WritebackStats

__all__ = ["Backlog", "stats_samples", "writeback_monitor"]


class _State(msgspec.Struct, frozen=True):
    messages: int = 0
    first_ts: str = ""


class _Info(msgspec.Struct, frozen=True):
    state: _State  # absent from an API error: then the answer does not decode


_INFO = msgspec.json.Decoder(_Info)
_EPOCH_START = "0001-01-01T00:00:00Z"  # JetStream's first_ts of an empty stream


def _age_s(first_ts: str, now: float) -> float:
    """Seconds since ``first_ts`` (RFC 3339 with up to nanoseconds), 0 when empty."""
    if not first_ts or first_ts == _EPOCH_START:
        return 0.0
    text = first_ts.replace("Z", "+00:00")
    head, _, rest = text.partition(".")
    if rest:  # Python parses at most microseconds
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    return max(0.0, now - datetime.datetime.fromisoformat(text).timestamp())


class Backlog:
    """The ``WRITEBACK`` stream's intents not yet applied (work queue: acked ones are gone;
    scheduled retries included) and the age of the oldest, seconds.

    Args:
        nc: a connection allowed ``$JS.API.STREAM.INFO.WRITEBACK``.
        timeout_s: how long JetStream may take to answer.
    """

    def __init__(self, nc: NATS, *, timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self.intents: int | None = None  # None until the first answer
        self.oldest_age_s = 0.0

    async def refresh(self) -> None:
        """Ask JetStream; until it answers, the samples are left out.

        Raises:
            ConnectionError: not connected now.
            nats.errors.TimeoutError: no answer within ``timeout_s``.
            msgspec.ValidationError: the answer is not stream info (an API error).
        """
        self.intents = None  # a figure that could not be read is not reported stale
        if not self._nc.is_connected:  # a request would wait out its timeout
            raise ConnectionError("not connected to NATS")
        msg = await self._nc.request(
            subjects.jetstream_stream_info(subjects.WRITEBACK_STREAM), b"", timeout=self._timeout_s
        )
        info = _INFO.decode(msg.data)
        self.intents = info.state.messages
        self.oldest_age_s = _age_s(info.state.first_ts, time.time()) if info.state.messages else 0.0

    def samples(self) -> Iterator[Sample]:
        if self.intents is None:
            return
        yield ("backlog_intents", "gauge", "Intents in WRITEBACK not yet applied", self.intents)
        yield (
            "oldest_intent_age_seconds",
            "gauge",
            "Age of the oldest intent in WRITEBACK",
            self.oldest_age_s,
        )


def stats_samples(stats: WritebackStats) -> Iterator[Sample]:
    """One replica's counters (``WritebackStats``) as samples."""
    yield (
        "intents_done",
        "counter",
        "Intents applied and acked (skipped ones included)",
        stats.done,
    )
    yield ("intents_skipped", "counter", "Intents superseded or already clean", stats.skipped)
    yield (
        "intent_failures",
        "counter",
        "Attempts that failed and were scheduled for a retry",
        stats.failed,
    )
    yield ("intent_retries", "counter", "Attempts that were retries", stats.retried)
    yield (
        "intent_retries_unscheduled",
        "counter",
        "Failed attempts nak-ed because their retry could not be scheduled (the partition waits)",
        stats.unscheduled,
    )
    yield ("intents_dropped", "counter", "Undecodable intents dropped (term)", stats.dropped)
    yield ("written_bytes", "counter", "Object bytes written to the origin", stats.bytes_written)
    yield ("intents_in_flight", "gauge", "Intents being applied now", stats.in_flight)
    yield ("failing_keys", "gauge", "Keys whose last attempt here failed", len(stats.failing))


def writeback_monitor(config: Config, nc: NATS, stats: WritebackStats) -> Monitor:
    """The service's :class:`~edgecache.common.monitor.Monitor` on
    ``writeback.metrics_port`` (``async with`` it to serve)."""
    monitor = Monitor("writeback", host=config.metrics.host, port=config.writeback.metrics_port)
    monitor.watch_nats(nc)
    backlog = Backlog(nc, timeout_s=monitor.health.timeout_s)
    monitor.refresh_before_scrape(backlog.refresh)
    monitor.registry.register(Snapshot("writeback", lambda: stats_samples(stats)))
    monitor.registry.register(Snapshot("writeback", backlog.samples))
    return monitor
