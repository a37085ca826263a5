"""The federator's NATS wiring: heartbeats in, KV ``nodes`` out, joins and leaves logged.

Every cache node publishes a :class:`~edgecache.common.wire.Heartbeat` on
``edgecache.heartbeat.<node_id>`` every ``cachenode.heartbeat_s``; the federator checks
it, puts it in KV ``nodes`` under the node id (the bucket's TTL, ``federator.node_ttl_s``,
removes a node that stops beating) and keeps the same live set in a
:class:`~edgecache.federator.membership.Membership` for what comes next (placement,
invalidation).

KV ``nodes`` is kept in memory, so a restarted nats-server comes back without it; the
federator then creates the JetStream state again on the next heartbeat.

With ``admin.port`` and ``admin.token`` set, it also serves the admin API
(:mod:`.adminserver`, :mod:`.adminapi`) in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.js.errors import NoStreamResponseError

from edgecache.common import subjects, wire
from edgecache.common.jetstream import ensure_state
from edgecache.common.logging import get_logger
from edgecache.common.metrics import Sample, Snapshot
from edgecache.common.monitor import Monitor
from edgecache.common.runtime import connect_nats, until_stopped
from edgecache.federator.hub import serve_hub
from edgecache.federator.membership import Change, ChangeKind, Membership
from edgecache.federator.sitelink import site_samples, start_site

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

    from edgecache.common.config import Config

__all__ = ["Federator", "federator_monitor", "federator_samples", "serve"]

log = get_logger(__name__)


class Federator:
    """Turns heartbeats into KV ``nodes`` entries and membership changes.

    Args:
        open_nodes: creates (or opens) the JetStream state and returns KV ``nodes``; called
            once by :meth:`start` and again whenever the bucket has gone missing.
        membership: the live set, updated on every heartbeat and every :meth:`sweep`.
    """

    def __init__(
        self, open_nodes: Callable[[], Awaitable[KeyValue]], membership: Membership
    ) -> None:
        self._open_nodes = open_nodes
        self.nodes: KeyValue | None = None
        self.membership = membership
        self.heartbeats = 0  # heartbeats put in KV nodes
        self.rejected = 0  # heartbeats dropped: undecodable, or the subject is not its node's
        self.changes: Counter[str] = Counter()  # ChangeKind value -> how many

    async def start(self) -> None:
        """Open KV ``nodes``."""
        self.nodes = await self._open_nodes()

    async def _put(self, node_id: str, value: bytes) -> None:
        assert self.nodes is not None, "start() first"
        try:
            await self.nodes.put(node_id, value)
        except NoStreamResponseError:  # the bucket is gone (a restarted nats-server)
            log.warning("nodes.missing", action="recreating the JetStream state")
            self.nodes = await self._open_nodes()
            await self.nodes.put(node_id, value)

    async def on_heartbeat(self, msg: Msg) -> None:
        """Subscription callback for ``edgecache.heartbeat.*``.

        A heartbeat that does not decode, or whose ``node_id`` is not the one in its
        subject, is logged and dropped; a failed KV put is logged and left to the next beat.
        """
        try:
            beat = wire.decode(msg.data, wire.Heartbeat)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("heartbeat.invalid", subject=msg.subject, error=str(exc))
            self.rejected += 1
            return
        if msg.subject != subjects.heartbeat(beat.node_id):
            log.warning("heartbeat.mismatch", subject=msg.subject, node=beat.node_id)
            self.rejected += 1
            return
        try:
            await self._put(beat.node_id, msg.data)
        except nats.errors.Error as exc:
            log.warning("nodes.put_failed", node=beat.node_id, error=repr(exc))
            return
        self.heartbeats += 1
        change = self.membership.observe(beat)
        if change is not None:
            self._report(change)

    def sweep(self) -> None:
        """Drop (and log) nodes whose last heartbeat is older than the TTL."""
        for change in self.membership.expire():
            self._report(change)

    async def sweep_forever(self, interval_s: float) -> None:
        """:meth:`sweep` every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

    def _report(self, change: Change) -> None:
        beat = change.heartbeat
        self.changes[change.kind.value] += 1
        log.info(
            f"node.{change.kind.value}",
            node=beat.node_id,
            host=beat.host,
            members=len(self.membership),
        )


def federator_samples(federator: Federator) -> Iterator[Sample]:
    """The federator's counters and its live set, as samples."""
    yield ("heartbeats", "counter", "Heartbeats put in KV nodes", federator.heartbeats)
    yield ("rejected_heartbeats", "counter", "Heartbeats dropped as invalid", federator.rejected)
    for kind in ChangeKind:
        doc = f"Cache nodes that {kind.value}"
        yield (f"nodes_{kind.value}", "counter", doc, federator.changes[kind.value])
    yield ("live_nodes", "gauge", "Cache nodes alive (heartbeat within the TTL)", len(federator.membership))


def federator_monitor(config: Config, nc: NATS, federator: Federator) -> Monitor:
    """The federator's :class:`~edgecache.common.monitor.Monitor` on
    ``federator.metrics_port`` (``async with`` it to serve)."""
    monitor = Monitor("federator", host=config.metrics.host, port=config.federator.metrics_port)
    monitor.watch_nats(nc)
    monitor.registry.register(Snapshot("federator", lambda: federator_samples(federator)))
    return monitor


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run the federator until ``stop`` is set, then unsubscribe and drain.

    Raises:
        nats.errors.NoServersError: NATS did not answer at start.
        edgecache.common.runtime.LoopEnded: a loop (the node sweep, the site's applier
            or its link) ended before ``stop``.
    """
    if config.federator.role == "hub":
        await serve_hub(config, stop)
        return
    ttl_s = config.federator.node_ttl_s
    async with AsyncExitStack() as stack:
        nc = await connect_nats(config.nats, name="edgecache-federator")
        stack.push_async_callback(nc.drain)
        js = nc.jetstream()

        async def open_nodes() -> KeyValue:
            state = await ensure_state(js, node_ttl_s=ttl_s, replicas=config.nats.replicas)
            return state.nodes

        federator = Federator(open_nodes, Membership(ttl_s))
        await federator.start()
        monitor = await stack.enter_async_context(federator_monitor(config, nc, federator))
        sub = await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=federator.on_heartbeat)
        stack.push_async_callback(sub.unsubscribe)
        sweeper = asyncio.create_task(
            federator.sweep_forever(max(0.05, min(1.0, ttl_s / 4))), name="node-sweep"
        )
        stack.push_async_callback(_cancel, sweeper)
        loops = [sweeper]
        if config.federation.site:
            site = await start_site(config, nc, federator.membership)
            for task in site.tasks:
                stack.push_async_callback(_cancel, task)
            loops += site.tasks
            monitor.registry.register(Snapshot("federator", lambda: site_samples(site.link)))
        if config.admin.port and config.admin.token:
            # imported only when on: Litestar and uvicorn take seconds to import
            from edgecache.federator.adminserver import serve_admin

            await serve_admin(config, stack, federator.membership, nc)
        elif config.admin.port:
            log.warning("admin.off", reason="admin.token is empty: the admin API never runs open")
        log.info("federator.started", nats=config.nats.url, node_ttl_s=ttl_s)
        await until_stopped(stop, loops)
        log.info("federator.stopping", members=len(federator.membership))

