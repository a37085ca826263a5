"""The writeback service: pulls write intents from ``WRITEBACK`` and applies them to the origin.

Every replica runs one pull loop per partition of the stream, bound to that partition's
durable consumer (shared by all replicas; ``max_ack_pending=1`` lets one intent per
partition be in flight cluster-wide, so the intents of one key are applied in order).

Per intent: decode → apply (:class:`~edgecache.writeback.worker.IntentApplier`) → ack. A
failure is retried for as long as it takes, after a delay (exponential backoff, full
jitter); only an intent that can never be decoded is ``term``-ed. While an intent is worked
on, ``in_progress`` is sent every ``ack_wait_s / 4`` so JetStream does not hand it to
another replica; a replica that could not send it in time (its event loop stalled for most
of ``ack_wait_s``) must assume the intent was handed on, and cancels its own work on it. A
crash before the ack makes JetStream redeliver after ``ack_wait_s`` (4 s by default) and the
work is redone idempotently.

**A failing intent holds back no other key.** A ``nak`` with a delay would keep the intent
pending, and with ``max_ack_pending=1`` its whole partition would wait behind it for as long
as it fails. Instead the intent is handed to a JetStream message schedule
(:func:`subjects.writeback_retry`, headers ``Nats-Schedule: @at <time>`` and
``Nats-Schedule-Target: <its partition>``) and then acked: the partition moves on, and at
the scheduled time nats-server appends the intent to its partition again, with its attempt
count (``Ec-Attempt``) and last error (``Ec-Error``). Intents of the same key that came
after it may be applied first: that is safe because the manifest, not the intent, decides
what is written (an older version is skipped as superseded), and still only one intent per
partition is in flight, so never two of one key at once. On a server without schedules
(older than 2.12) the old ``nak`` is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError

from edgecache.common import errors, subjects, wire
from edgecache.common.catalog import Catalog
from edgecache.common.credit import CreditBudget
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness
from edgecache.common.jetstream import ensure_state
from edgecache.common.logging import get_logger
from edgecache.common.runtime import connect_nats, raise_if_cancelling, until_stopped
from edgecache.origin import open_origin
from edgecache.writeback.backoff import retry_delay_s
from edgecache.writeback.metrics import writeback_monitor
from edgecache.writeback.stats import WritebackStats
from edgecache.writeback.worker import IntentApplier, op_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from edgecache.common.config import Config, WritebackConfig
    from edgecache.common.jetstream import State
    from edgecache.origin import Origin

__all__ = ["WritebackService", "serve"]

log = get_logger(__name__)

_INTENT_DECODER = msgspec.json.Decoder(wire.Intent)
_KNOWN_TAGS = frozenset(
    t.__struct_config__.tag
    for t in (wire.ObjectWritten, wire.ObjectDeleted, wire.BucketCreated, wire.BucketDeleted)
)


HDR_ATTEMPT = "Ec-Attempt"  # on a retried intent: which attempt this delivery is (1, 2, …)
HDR_ERROR = "Ec-Error"  # on a retried intent: why the previous attempt failed
_MAX_ERROR_HEADER = 300  # characters of an error kept in Ec-Error
# a schedule's headers, and the server's on its deliveries (Nats-Scheduler, -Next)
_SCHEDULE_HEADERS = "Nats-Schedule"


class WritebackService:
    """Pull loops over the ``WRITEBACK`` partitions of one replica.

    Args:
        nc: a connected NATS client (JetStream enabled).
        state: the JetStream state (the manifests in KV ``objects``, through a
            :class:`~edgecache.common.catalog.Catalog`, and KV ``buckets``).
        origin: the started origin.
        config: retry and redelivery timing.
        partitions: which partitions this replica serves (default: all).
        fetch_timeout_s: how long one empty pull waits, seconds; bounds how fast a stop is
            noticed.
        shutdown_grace_s: on stop, how long in-flight intents may run before they are
            cancelled and ``nak``-ed for another replica.
        window_frames: most download credit per chunk stream, frames.
        chunk_timeout_s: wait for a cache node's answer or next frame, seconds.
        prefetch: open the next chunk's stream while the origin consumes the current one.
        credit: the download credit of ``nc`` that every chunk stream takes from;
            default: one of its own, of ``DEFAULT_CREDIT_BYTES``.
        liveness: idle heartbeats asked of the nodes chunks are read from (fail over to
            the next holder of a chunk when one goes silent).
        manifest_ttl_s: a version marked clean expires from KV ``objects`` after this
            (s; ``0``: never): ``cachenode.manifest_ttl_s``.
        site: this site's name (``federation.site``; ``""``: not federated): the versions
            of other sites are never written here, and this site's log their ``clean``.
    """

    def __init__(
        self,
        nc: NATS,
        state: State,
        origin: Origin,
        config: WritebackConfig,
        *,
        partitions: Iterable[int] | None = None,
        fetch_timeout_s: float = 1.0,
        shutdown_grace_s: float = 5.0,
        window_frames: int = 8,
        chunk_timeout_s: float = 30.0,
        prefetch: bool = True,
        credit: CreditBudget | None = None,
        liveness: Liveness = DEFAULT_LIVENESS,
        manifest_ttl_s: float = 0.0,
        site: str = "",
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._config = config
        self._partitions = list(
            range(subjects.WRITEBACK_PARTITIONS) if partitions is None else partitions
        )
        self._fetch_timeout = fetch_timeout_s
        self._grace = shutdown_grace_s
        self._applier = IntentApplier(
            nc,
            Catalog(nc, state, clean_ttl_s=manifest_ttl_s, site=site),
            state.buckets,
            origin,
            credit=credit if credit is not None else CreditBudget(nc),
            window_frames=window_frames,
            chunk_timeout_s=chunk_timeout_s,
            prefetch=prefetch,
            max_uploads=config.max_uploads,
            liveness=liveness,
        )
        self.stats = WritebackStats()
        self._stopping = asyncio.Event()
        self._schedules = state.schedules

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then wind down (see ``shutdown_grace_s``).

        Raises:
            edgecache.common.runtime.LoopEnded: a partition's loop ended before ``stop``
                (its connection closed for good, or a bug); failures of single intents
                are retried, pull errors are logged and the pull is tried again.
        """
        self._stopping = stop
        loops = [
            asyncio.create_task(self._loop(p), name=f"writeback-{p}") for p in self._partitions
        ]
        log.info("writeback.started", partitions=len(loops))
        try:
            await until_stopped(stop, loops)
            # loops notice the stop after their current fetch, or their current intent
            await asyncio.wait(loops, timeout=self._grace + self._fetch_timeout + 1.0)
        finally:
            # cancelled ourselves, or a loop overran: in-flight intents are nak-ed
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            log.info("writeback.stopped", **self.stats.as_dict())

    # -- one partition -----------------------------------------------------------------------
    async def _loop(self, partition: int) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=subjects.writeback_consumer(partition), stream=subjects.WRITEBACK_STREAM
        )
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=self._fetch_timeout)
                except NatsTimeoutError:
                    continue  # nothing to do
                except Exception as exc:  # noqa: BLE001 - reconnecting, consumer missing, …
                    raise_if_cancelling(exc)
                    if self._nc.is_closed:
                        log.warning("writeback.connection_closed", partition=partition)
                        return
                    log.warning("writeback.fetch_failed", partition=partition, error=repr(exc))
                    await _sleep_unless(self._stopping, 1.0)
                    continue
                for msg in msgs:
                    await self._handle(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        """Work on one intent, giving it ``shutdown_grace_s`` to finish once stop is set."""
        work = asyncio.create_task(self._process(msg))
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                done, _ = await asyncio.wait({work}, timeout=self._grace)
                if not done:
                    work.cancel()  # _process naks it for the next replica
            await asyncio.gather(work, return_exceptions=True)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)

    async def _process(self, msg: Msg) -> None:
        attempt = _attempt_of(msg)
        intent = await self._decode(msg, attempt)
        if intent is None:
            return
        fields = _describe(intent)
        op = op_of(intent)
        failing_key = (intent.bucket, getattr(intent, "key", ""))
        if attempt > 1:
            self.stats.retried += 1
        self.stats.in_flight += 1
        started = time.monotonic()
        keepalive = asyncio.create_task(self._keep_alive(msg, asyncio.current_task()))
        try:
            outcome = await self._applier.apply(intent)
        except asyncio.CancelledError:
            await _quietly(msg.nak())
            log.info("writeback.handed_back", op=op, attempt=attempt, **fields)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is retried
            self.stats.failed += 1
            hint = exc.retry_after_s if isinstance(exc, errors.S3Error) else None
            delay = retry_delay_s(
                attempt,
                base_s=self._config.backoff_base_s,
                max_s=self._config.backoff_max_s,
                retry_after_s=hint,
            )
            error = _error_text(exc)
            self.stats.failing[failing_key] = (attempt, error)
            log.warning(
                "writeback.failed",
                op=op,
                attempt=attempt,
                error=error,
                retry_in_s=round(delay, 3),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                **fields,
            )
            await self._retry_later(msg, intent.id, attempt, delay, error)
            return
        finally:
            keepalive.cancel()
            self.stats.in_flight -= 1
        await _quietly(msg.ack())
        self.stats.failing.pop(failing_key, None)
        self.stats.done += 1
        self.stats.bytes_written += outcome.bytes
        if outcome.result in ("superseded", "already_clean"):
            self.stats.skipped += 1
        log.info(
            "writeback.intent",
            op=op,
            result=outcome.result,
            bytes=outcome.bytes,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            attempt=attempt,
            **fields,
        )

    async def _decode(self, msg: Msg, attempt: int) -> wire.Intent | None:
        """The intent in ``msg``; ``None`` when it was dealt with here (term or nak)."""
        try:
            return _INTENT_DECODER.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            tag = _tag_of(msg.data)
            if tag is not None and tag not in _KNOWN_TAGS:
                # written by a newer producer: a newer replica may know it; never drop a write
                self.stats.failed += 1
                log.error(
                    "writeback.unknown_intent",
                    type=tag,
                    attempt=attempt,
                    subject=msg.subject,
                    seq=msg.metadata.sequence.stream,
                )
                await self._retry_later(
                    msg, msg.data, attempt, self._config.backoff_max_s, f"unknown intent type {tag}"
                )
                return None
            self.stats.dropped += 1
            log.error(
                "writeback.undecodable_intent_dropped",
                error=str(exc),
                subject=msg.subject,
                seq=msg.metadata.sequence.stream,
                data=msg.data[:200].decode("utf-8", "replace"),
            )
            await _quietly(msg.term())
            return None

    async def _retry_later(
        self, msg: Msg, name: str | bytes, attempt: int, delay_s: float, error: str
    ) -> None:
        """Retry the intent in ``msg`` after ``delay_s`` seconds without holding its partition:
        schedule it back into the partition (see the module docstring), then ack it.

        ``name`` identifies the intent (its id, or its bytes when it has none that can be
        read); one schedule per intent, so a redelivery replaces rather than doubles it. If
        the schedule cannot be stored, or the server has no schedules, the intent is
        ``nak``-ed with the delay instead (its partition then waits for it).
        """
        if not self._schedules:
            await _quietly(msg.nak(delay=delay_s))
            return
        token = hashlib.blake2b(
            name.encode() if isinstance(name, str) else name, digest_size=12
        ).hexdigest()
        partition = int(msg.subject.rsplit(".", 1)[1])
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=max(delay_s, 0.0))
        headers = {
            # the server's own headers on a delivery of a fired schedule (Nats-Scheduler,
            # Nats-Schedule-Next) make it refuse the new schedule ("invalid scheduler")
            **{k: v for k, v in (msg.headers or {}).items() if not k.startswith(_SCHEDULE_HEADERS)},
            "Nats-Schedule": "@at " + at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "Nats-Schedule-Target": msg.subject,
            HDR_ATTEMPT: str(attempt + 1),
            HDR_ERROR: _header_text(error),
        }
        headers.pop("Nats-Msg-Id", None)  # the id of the first publish would de-duplicate it
        try:
            await self._js.publish(
                subjects.writeback_retry(partition, token), msg.data, headers=headers
            )
        except Exception as exc:  # noqa: BLE001 - keep the intent where it is instead
            log.warning("writeback.schedule_failed", error=repr(exc), subject=msg.subject)
            self.stats.unscheduled += 1
            await _quietly(msg.nak(delay=delay_s))
            return
        await _quietly(msg.ack())

    async def _keep_alive(self, msg: Msg, work: asyncio.Task[Any] | None) -> None:
        """Tell JetStream the intent is still being worked on, every ``ack_wait_s / 4``.

        If a report comes too late (the event loop stalled past ``ack_wait_s`` since the last
        one), JetStream may have handed the intent to another replica: ``work`` is cancelled
        (and hands the intent back) rather than risk two replicas on one key.
        """
        loop = asyncio.get_running_loop()
        every = max(0.05, self._config.ack_wait_s / 4)
        last = loop.time()
        while True:
            await asyncio.sleep(every)
            if loop.time() - last >= self._config.ack_wait_s and work is not None:
                log.warning(
                    "writeback.progress_late",
                    late_s=round(loop.time() - last, 3),
                    subject=msg.subject,
                )
                work.cancel()
                return
            await _quietly(msg.in_progress())
            last = loop.time()


def _attempt_of(msg: Msg) -> int:
    """Which attempt at its intent ``msg`` is: the scheduled attempt number (``Ec-Attempt``,
    1 for a first publish) plus JetStream's redeliveries of this message."""
    try:
        scheduled = max(1, int((msg.headers or {}).get(HDR_ATTEMPT, "1")))
    except ValueError:
        scheduled = 1
    return scheduled + msg.metadata.num_delivered - 1


def _header_text(text: str) -> str:
    """``text`` as one short line that a NATS header can carry."""
    line = " ".join(text.split())
    return line[:_MAX_ERROR_HEADER] or "error"


def _describe(intent: wire.Intent) -> dict[str, Any]:
    fields: dict[str, Any] = {"intent": intent.id, "bucket": intent.bucket}
    if isinstance(intent, wire.ObjectWritten | wire.ObjectDeleted | wire.ObjectTagged):
        fields.update(key=intent.key, version=intent.version)
    return fields


def _tag_of(data: bytes) -> str | None:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    tag = value.get("type") if isinstance(value, dict) else None
    return tag if isinstance(tag, str) else None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, errors.S3Error):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def _quietly(aw: Any) -> None:
    """Await an ack/nak/term/in_progress; the connection may be gone (then JetStream
    redelivers after ``ack_wait_s``, which is safe)."""
    try:
        await aw
    except Exception as exc:  # noqa: BLE001
        log.warning("writeback.ack_failed", error=repr(exc))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def serve(config: Config, stop: asyncio.Event) -> None:
    """The service's entry: connect, make sure the JetStream state exists, open the origin,
    pull intents until ``stop`` is set, then drain the connection."""
    async with AsyncExitStack() as stack:
        nc = await connect_nats(config.nats, name="edgecache-writeback")
        stack.push_async_callback(nc.drain)
        state = await ensure_state(
            nc.jetstream(),
            node_ttl_s=config.federator.node_ttl_s,
            ack_wait_s=config.writeback.ack_wait_s,
            replicas=config.nats.replicas,
        )
        origin = open_origin(config)
        await origin.start()
        stack.push_async_callback(origin.close)
        service = WritebackService(
            nc,
            state,
            origin,
            config.writeback,
            chunk_timeout_s=config.nats.request_timeout_s,
            window_frames=config.cachenode.window_frames,
            credit=CreditBudget(nc, max_bytes=config.nats.download_credit_bytes),
            liveness=Liveness.of(config.nats),
            manifest_ttl_s=config.cachenode.manifest_ttl_s,
            site=config.federation.site,
        )
        await stack.enter_async_context(writeback_monitor(config, nc, service.stats))
        await service.run(stop)
