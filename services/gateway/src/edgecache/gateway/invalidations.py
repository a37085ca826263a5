"""Keeps the gateway's memory tier coherent: applies the invalidation events of every
publisher (``edgecache.events.invalidate``) and drops the whole tier whenever it cannot
prove that it saw all of them.

Each publisher (the catalog of a cache node) numbers its events 1, 2, 3, … from its start
(``publisher``, ``publisher_started_ns``, ``seq`` in :class:`~edgecache.common.wire.Invalidation`).
The tier is dropped when:

* a publisher's ``seq`` skips a number (an event was lost);
* a publisher that started after this subscription did, shows up with ``seq`` > 1;
* the NATS connection is lost (events published meanwhile are lost to core NATS), or
  nats-py reports this subscription as a slow consumer (it dropped messages).

While disconnected nothing is served from the tier (every request goes through a node, or
fails with 503 like any other request without NATS); it fills again after reconnecting.

**Read barrier.** A writer's acknowledgement leaves its cache node after the invalidation
(same connection, and NATS keeps one connection's order), so nats-server has queued the
event for this gateway before the writer can even learn of its write. A hit must not be
answered before this gateway has *applied* that event: :meth:`settled` sends a PING and
waits for the PONG (which nats-server queues behind everything queued for us before it),
then lets the subscription apply what arrived. Concurrent hits share one PING, so under
load it costs one loopback round trip per batch, not per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
from nats.errors import SlowConsumerError

from edgecache.common import subjects, wire
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from edgecache.gateway.memtier import MemoryTier

__all__ = ["InvalidationListener"]

log = get_logger(__name__)

_DECODER = msgspec.json.Decoder(wire.Invalidation)
_MAX_PUBLISHERS = 4096  # publishers remembered; beyond it the oldest is forgotten
_BARRIER_TIMEOUT_S = 2  # a PING unanswered this long: serve through the nodes
_MAX_YIELDS = 1000  # turns of the event loop to apply queued events before giving up


class InvalidationListener:
    """Feeds ``edgecache.events.invalidate`` into a :class:`MemoryTier`.

    Call :meth:`start` once connected and :meth:`stop` before draining; it is a
    :class:`~edgecache.common.runtime.ConnectionWatcher` of its connection
    (:meth:`disconnected`, :meth:`reconnected`, :meth:`error`).
    """

    def __init__(self, tier: MemoryTier) -> None:
        self._nc: NATS | None = None
        self._tier = tier
        self._sub: Subscription | None = None
        self._since_ns = 0
        self._last: dict[tuple[str, int], int] = {}  # (publisher, started_ns) -> last seq
        self.in_sync = False
        self._next: asyncio.Future[bool] | None = None  # the next PING, not yet sent
        self._pinging: asyncio.Task[None] | None = None

    async def start(self, nc: NATS) -> None:
        """Subscribe on ``nc``; the tier serves from now on."""
        self._nc = nc
        self._since_ns = time.time_ns()
        self._sub = await self._nc.subscribe(
            subjects.EVENTS_INVALIDATE, cb=self._on_event, pending_msgs_limit=1_000_000
        )
        await self._nc.flush()
        self.in_sync = True

    async def stop(self) -> None:
        self.in_sync = False
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection is closing
                pass
            self._sub = None

    async def settled(self) -> bool:
        """Wait until every event nats-server queued for this gateway before now is applied
        (the read barrier above). ``False``: that could not be shown (no connection, a
        timeout, an endless stream of events): answer without the tier."""
        if not self.in_sync or self._nc is None:
            return False
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        waiter = self._next
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.create_task(self._ping())
        return await asyncio.shield(waiter)

    async def _ping(self) -> None:
        """Send PINGs while requests wait for one that was sent after they arrived."""
        while self._next is not None:
            waiter, self._next = self._next, None  # later arrivals wait for the next PING
            ok = await self._round_trip()
            if not waiter.done():
                waiter.set_result(ok and self.in_sync)

    async def _round_trip(self) -> bool:
        assert self._nc is not None
        try:
            await self._nc.flush(timeout=_BARRIER_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - disconnected, timed out: no proof
            return False
        for _ in range(_MAX_YIELDS):  # the subscription's task applies what arrived
            if self._sub is None or self._sub.pending_msgs == 0:
                return True
            await asyncio.sleep(0)
        return False

    def disconnected(self) -> None:
        """The connection is gone: events may be lost from now on."""
        self._out_of_sync("disconnected")

    def reconnected(self) -> None:
        """nats-py resubscribed: events flow again; the tier starts empty."""
        self._tier.clear()
        self._since_ns = time.time_ns()
        self._last.clear()
        self.in_sync = self._sub is not None

    def error(self, exc: Exception) -> None:
        """An asynchronous error of the connection: if nats-py dropped messages of this
        subscription (a slow consumer), what it missed is gone with the tier."""
        if isinstance(exc, SlowConsumerError) and exc.sub is self._sub:
            self._out_of_sync("slow_consumer")
            self.in_sync = self._sub is not None

    def _out_of_sync(self, why: str) -> None:
        self.in_sync = False
        self._tier.clear()
        self._last.clear()
        log.warning("memtier.cleared", reason=why)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = _DECODER.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._out_of_sync("undecodable_event")  # cannot tell what changed
            self.in_sync = True
            return
        self.apply(event)

    def apply(self, event: wire.Invalidation) -> None:
        """Apply one event: drop what it names, and check its publisher's sequence."""
        publisher = (event.publisher, event.publisher_started_ns)
        last = self._last.get(publisher)
        expected = 1 if last is None else last + 1
        gap = event.seq != expected and not (
            last is None and event.publisher_started_ns < self._since_ns
        )
        self._last[publisher] = max(event.seq, last or 0)
        if len(self._last) > _MAX_PUBLISHERS:
            del self._last[next(iter(self._last))]
        if gap:
            log.warning(
                "memtier.gap", publisher=event.publisher, seq=event.seq, expected=expected
            )
            self._tier.clear()
            return
        if event.key is None:
            self._tier.invalidate_bucket(event.bucket)
        else:
            self._tier.invalidate(event.bucket, event.key)
