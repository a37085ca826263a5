"""The write-back backlog: what the ``WRITEBACK`` stream and its consumers say is not yet in
the origin. Read by ``edgecache status`` and by the admin API.

Read-only: the stream belongs to the writeback service; this reads its JetStream state
(stream and consumer info, the oldest message, the scheduled retries of failed intents).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from edgecache.common import subjects

__all__ = [
    "MAX_FAILING_SHOWN",
    "Backlog",
    "FailingIntent",
    "PartitionBacklog",
    "read_backlog",
]

MAX_FAILING_SHOWN = 20  # failing intents listed by name; the rest are only counted


class PartitionBacklog(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    pending: int  # intents not yet delivered
    in_flight: int  # delivered, not yet acknowledged
    redelivered: int


class FailingIntent(msgspec.Struct, frozen=True, kw_only=True):
    """An intent waiting for its scheduled retry after a failed attempt."""

    bucket: str
    key: str  # "" for a bucket intent
    attempts: int  # attempts so far
    error: str  # why the last one failed


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """The ``WRITEBACK`` stream: intents not yet applied to the origin."""

    intents: int  # messages in the stream (work queue: acked ones are gone)
    in_flight: int
    redelivered: int
    oldest_age_s: float | None  # age of the oldest intent, None when there is none
    partitions: list[PartitionBacklog]
    retrying: int = 0  # of ``intents``: failed ones waiting for their scheduled retry
    failing: list[FailingIntent] = []  # the first MAX_FAILING_SHOWN of those


async def read_backlog(js: Any) -> Backlog:
    """Read the backlog through ``js`` (a nats-py ``JetStreamContext``).

    Raises:
        nats.js.errors.NotFoundError: there is no ``WRITEBACK`` stream (or a consumer).
        nats.errors.TimeoutError: JetStream did not answer.
    """
    from nats.js.errors import NotFoundError

    info = await js.stream_info(subjects.WRITEBACK_STREAM)
    now = time.time()
    partitions = []
    for p in range(subjects.WRITEBACK_PARTITIONS):
        ci = await js.consumer_info(subjects.WRITEBACK_STREAM, subjects.writeback_consumer(p))
        partitions.append(
            PartitionBacklog(
                partition=p,
                pending=ci.num_pending or 0,
                in_flight=ci.num_ack_pending or 0,
                redelivered=ci.num_redelivered or 0,
            )
        )
    retrying, failing = await _failing_intents(js)
    oldest: float | None = None
    if info.state.messages:
        try:
            first = await js.get_msg(subjects.WRITEBACK_STREAM, seq=info.state.first_seq)
            oldest = max(0.0, now - first.time.timestamp()) if first.time else None
        except NotFoundError:
            oldest = None
    return Backlog(
        intents=info.state.messages,
        in_flight=sum(p.in_flight for p in partitions),
        redelivered=sum(p.redelivered for p in partitions),
        oldest_age_s=oldest,
        partitions=partitions,
        retrying=retrying,
        failing=failing,
    )


async def _failing_intents(js: Any) -> tuple[int, list[FailingIntent]]:
    """How many intents wait for a scheduled retry, and the first
    :data:`MAX_FAILING_SHOWN` of them with their attempts and last error (read from the
    schedules' ``Ec-Attempt`` and ``Ec-Error`` headers)."""
    from nats.js.errors import NotFoundError

    info = await js.stream_info(
        subjects.WRITEBACK_STREAM, subjects_filter=subjects.WRITEBACK_RETRIES
    )
    names = sorted(info.state.subjects or {})
    failing: list[FailingIntent] = []
    for name in names[:MAX_FAILING_SHOWN]:
        try:
            msg = await js.get_last_msg(subjects.WRITEBACK_STREAM, name)
        except NotFoundError:
            continue  # fired meanwhile
        headers = msg.headers or {}
        try:
            body = msgspec.json.decode(msg.data or b"{}")
        except msgspec.DecodeError:
            body = {}
        body = body if isinstance(body, dict) else {}
        try:
            attempts = int(headers.get("Ec-Attempt", "2")) - 1
        except ValueError:
            attempts = 1
        failing.append(
            FailingIntent(
                bucket=str(body.get("bucket", "")),
                key=str(body.get("key", "")),
                attempts=attempts,
                error=headers.get("Ec-Error", ""),
            )
        )
    return len(names), failing
