"""A site federator's consumer of its ``FEDERATION`` stream: every other site's changes,
handed to a cache node to apply (``edgecache.fed.apply``, queue group ``cachenode``).

The durable pull consumer ``apply`` reads ``FEDERATION`` in order with explicit acks. A
change of this site's own is acked at once; any other is sent to a node as it is (the
``wire.SiteChange`` bytes) and acked when the node answers :class:`~edgecache.common.wire.Ok`,
so every change is applied at least once (applying is idempotent: the node keeps the larger
``(hlc, site)``). At most ``federator.apply_in_flight`` changes are in flight at once;
changes of one key (or one bucket, for a bucket deletion) are sent one after the other, in
stream order. A change no node answers (none up, a timeout) or that a node refuses with an
error is asked again after an exponential backoff (:class:`~edgecache.common.backoff.Backoff`),
keeping its place, while the consumer is told it is in progress so that it is not
redelivered meanwhile.

The consume loop never ends by itself: an idle fetch, a fetch that fails while the site's
server restarts, or anything unexpected is logged and the loop goes on. (nats-py's
``fetch`` of more than one message raises a *bare* :class:`TimeoutError`, not
:class:`nats.errors.TimeoutError`, when its first, no-wait pull answers after its deadline
passed — an event loop stalled for longer than the fetch's wait, which a loaded host does;
the loop once caught only nats-py's own class, ended there, and the site stopped applying
changes for good.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from edgecache.common import subjects, wire
from edgecache.common.backoff import Backoff
from edgecache.common.logging import get_logger
from edgecache.common.runtime import raise_if_cancelling

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["APPLY_ACK_WAIT_S", "ChangeApplier", "apply_consumer"]

log = get_logger(__name__)

APPLY_ACK_WAIT_S = 30.0  # an unacked change is redelivered after this (a federator died)
_RETRY = Backoff(base_s=0.05, max_s=2.0)


def apply_consumer(max_in_flight: int) -> ConsumerConfig:
    """The durable consumer ``apply`` of a site's ``FEDERATION``."""
    return ConsumerConfig(
        durable_name=subjects.FEDERATION_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=max_in_flight,
        ack_wait=APPLY_ACK_WAIT_S,
        max_deliver=-1,
    )


def _lane(change: wire.SiteChange) -> tuple[str, str | None]:
    """Changes in one lane are applied in stream order: one key, or a whole bucket's
    deletion."""
    return (change.bucket, change.key)


class ChangeApplier:
    """Feeds other sites' changes from ``FEDERATION`` to this site's cache nodes.

    Args:
        nc: the site's NATS connection.
        site: this site's name (its own changes are skipped).
        max_in_flight: changes being applied at once.
        timeout_s: one ``edgecache.fed.apply`` request.
        fetch_wait_s: how long one pull waits for changes (s).
    """

    def __init__(
        self,
        nc: NATS,
        site: str,
        *,
        max_in_flight: int = 64,
        timeout_s: float = 5.0,
        fetch_wait_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.site = site
        self.max_in_flight = max(1, max_in_flight)
        self.timeout_s = timeout_s
        self.fetch_wait_s = fetch_wait_s
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._lanes: dict[tuple[str, str | None], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.applied = 0  # other sites' changes a node applied
        self.skipped = 0  # this site's own changes
        self.failures = 0  # requests that got no answer or an error (each retried)
        self.invalid = 0  # messages that are not a SiteChange (acked and dropped)
        self.fetch_errors = 0  # fetches that failed (not an idle wait); each retried

    async def backlog(self) -> int:
        """Changes not yet applied here: the consumer's pending and unacknowledged
        messages (-1 if the consumer cannot be read)."""
        try:
            info = await self._js.consumer_info(
                subjects.FEDERATION_STREAM, subjects.FEDERATION_CONSUMER
            )
        except (nats.errors.Error, NotFoundError):
            return -1
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def run(self) -> None:
        """Consume until cancelled (then wait for nothing: unacked changes come back)."""
        await self._js.add_consumer(subjects.FEDERATION_STREAM, apply_consumer(self.max_in_flight))
        psub = await self._js.pull_subscribe_bind(
            subjects.FEDERATION_CONSUMER, stream=subjects.FEDERATION_STREAM
        )
        try:
            while True:
                await self._slots.acquire()
                free = 1
                while free < self.max_in_flight and not self._slots.locked():
                    await self._slots.acquire()
                    free += 1
                msgs = await self._fetch(psub, free)
                for _ in range(free - len(msgs)):
                    self._slots.release()
                for i, msg in enumerate(msgs):
                    if i >= free:  # nats-py hands on late deliveries of an earlier pull too
                        await self._slots.acquire()
                    self._start(msg)
        finally:
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()  # an open pull subscription makes drain() hang

    async def _fetch(self, psub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """Up to ``batch`` messages; none after an idle wait or a failure (logged)."""
        try:
            return await psub.fetch(batch, timeout=self.fetch_wait_s)
        except TimeoutError:  # nats-py's own subclass, or a bare one (module docstring)
            return []
        except Exception as exc:  # noqa: BLE001 - the site's server restarting, or a surprise
            raise_if_cancelling(exc)
            self.fetch_errors += 1
            log.warning("apply.fetch_failed", error=repr(exc))
            await asyncio.sleep(self.fetch_wait_s)
            return []

    def _start(self, msg: Msg) -> None:
        """Take one message (holding one slot until it is done)."""
        try:
            change = wire.decode(msg.data, wire.SiteChange)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("apply.invalid", error=str(exc))
            self.invalid += 1
            self._spawn(self._ack(msg))
            return
        if change.site == self.site:
            self.skipped += 1
            self._spawn(self._ack(msg))
            return
        lane = _lane(change)
        task = self._spawn(self._apply(msg, change, self._lanes.get(lane)))
        self._lanes[lane] = task

        def leave(done: asyncio.Task[None]) -> None:
            if self._lanes.get(lane) is done:
                del self._lanes[lane]

        task.add_done_callback(leave)

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("apply.crashed", error=repr(task.exception()))

    async def _ack(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error):  # redelivered then, and skipped again
            await msg.ack()

    async def _apply(
        self, msg: Msg, change: wire.SiteChange, before: asyncio.Task[None] | None
    ) -> None:
        if before is not None:  # the previous change of this key goes first
            await asyncio.wait([before])
        failures = 0
        while not await self._request(change, msg.data):
            failures += 1
            self.failures += 1
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
            await asyncio.sleep(_RETRY.delay(failures))
        self.applied += 1
        await self._ack(msg)

    async def _request(self, change: wire.SiteChange, data: bytes) -> bool:
        """One ``edgecache.fed.apply`` request; whether a node applied the change."""
        try:
            reply = await self._nc.request(subjects.FED_APPLY, data, timeout=self.timeout_s)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        except nats.errors.Error as exc:
            log.warning("apply.request_failed", error=repr(exc))
            return False
        try:
            answer = wire.REPLY_DECODER.decode(reply.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("apply.bad_reply", error=str(exc), bucket=change.bucket, key=change.key)
            return False
        if isinstance(answer, wire.Error):
            log.warning("apply.refused", code=answer.code, message=answer.message, site=change.site)
            return False
        return True
