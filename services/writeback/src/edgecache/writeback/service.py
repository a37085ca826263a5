"""The writeback service: pulls write intents from ``WRITEBACK`` and applies them to the origin.

Every replica runs one pull loop per partition of the stream, bound to that partition's
durable consumer (shared by all replicas; ``max_ack_pending=1`` lets one intent per
partition be in flight cluster-wide, so the intents of one key are applied in order).

Per intent: decode → apply (:class:`~edgecache.writeback.worker.IntentApplier`) → ack. A
failure is ``nak``-ed with a delay (exponential backoff, full jitter) and retried for as
long as it takes; only an intent that can never be decoded is ``term``-ed. While an intent
is worked on, ``in_progress`` is sent every ``ack_wait_s / 3`` so JetStream does not hand it
to another replica. A crash before the ack makes JetStream redeliver after ``ack_wait_s``
and the work is redone idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError

from edgecache.common import errors, subjects, wire
from edgecache.common.credit import CreditBudget
from edgecache.common.jetstream import ensure_state
from edgecache.common.logging import get_logger
from edgecache.common.runtime import connect_nats
from edgecache.writeback.backoff import retry_delay_s
from edgecache.writeback.worker import IntentApplier, op_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from edgecache.common.config import Config, WritebackConfig
    from edgecache.common.jetstream import State
    from edgecache.common.origin import Origin

__all__ = ["WritebackService", "WritebackStats", "serve"]

log = get_logger(__name__)

_INTENT_DECODER = msgspec.json.Decoder(wire.Intent)
_KNOWN_TAGS = frozenset(
    t.__struct_config__.tag
    for t in (wire.ObjectWritten, wire.ObjectDeleted, wire.BucketCreated, wire.BucketDeleted)
)


@dataclass
class WritebackStats:
    """Counters of one replica since it started.

    Attributes:
        done: intents finished and acked (including skipped ones).
        skipped: of those, superseded or already clean (nothing new written).
        failed: attempts that failed and were ``nak``-ed for a retry.
        retried: attempts that were redeliveries (``num_delivered > 1``).
        dropped: undecodable intents, ``term``-ed.
        bytes_written: object bytes written to the origin.
        in_flight: intents being worked on now.
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    bytes_written: int = 0
    in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class WritebackService:
    """Pull loops over the ``WRITEBACK`` partitions of one replica.

    Args:
        nc: a connected NATS client (JetStream enabled).
        state: the JetStream state (KV ``objects`` and ``buckets`` are used).
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
            state.objects,
            state.buckets,
            origin,
            credit=credit if credit is not None else CreditBudget(nc),
            window_frames=window_frames,
            chunk_timeout_s=chunk_timeout_s,
            prefetch=prefetch,
            max_uploads=config.max_uploads,
        )
        self.stats = WritebackStats()
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then wind down (see ``shutdown_grace_s``).

        Raises:
            Nothing: failures of single intents are retried, pull errors are logged and the
            pull is tried again.
        """
        self._stopping = stop
        loops = [
            asyncio.create_task(self._loop(p), name=f"writeback-{p}") for p in self._partitions
        ]
        log.info("writeback.started", partitions=len(loops))
        try:
            await stop.wait()
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
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # nats-py turns a cancelled wait on a closed connection into
                        # ConnectionClosedError: do not swallow our cancellation
                        raise asyncio.CancelledError() from exc
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
        attempt = msg.metadata.num_delivered
        intent = await self._decode(msg, attempt)
        if intent is None:
            return
        fields = _describe(intent)
        op = op_of(intent)
        if attempt > 1:
            self.stats.retried += 1
        self.stats.in_flight += 1
        started = time.monotonic()
        keepalive = asyncio.create_task(self._keep_alive(msg))
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
            log.warning(
                "writeback.failed",
                op=op,
                attempt=attempt,
                error=_error_text(exc),
                retry_in_s=round(delay, 3),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                **fields,
            )
            await _quietly(msg.nak(delay=delay))
            return
        finally:
            keepalive.cancel()
            self.stats.in_flight -= 1
        await _quietly(msg.ack())
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
                await _quietly(msg.nak(delay=self._config.backoff_max_s))
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

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the intent is still being worked on, every ``ack_wait_s / 3``."""
        every = max(0.05, self._config.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            await _quietly(msg.in_progress())


def _describe(intent: wire.Intent) -> dict[str, Any]:
    fields: dict[str, Any] = {"intent": intent.id, "bucket": intent.bucket}
    if isinstance(intent, wire.ObjectWritten | wire.ObjectDeleted):
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
    from edgecache.common.origin import open_origin

    async with AsyncExitStack() as stack:
        nc = await connect_nats(config.nats, name="edgecache-writeback")
        stack.push_async_callback(nc.drain)
        state = await ensure_state(
            nc.jetstream(),
            node_ttl_s=config.federator.node_ttl_s,
            ack_wait_s=config.writeback.ack_wait_s,
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
        )
        await service.run(stop)
