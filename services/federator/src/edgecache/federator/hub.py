"""The hub's federator (``federator.role = "hub"``, run by ``edgecache hub``): site
membership and the hub's ``FEDERATION`` stream.

- ``edgecache.fed.heartbeat`` (a request, :class:`~edgecache.common.wire.SiteHeartbeat`):
  the first one from a site adds its ``CHANGES`` as a source of ``FEDERATION``; each is put
  in KV ``sites`` (domain ``hub``, entries expire after ``federator.site_ttl_s``), restarts
  the site's source if it has stalled (the heartbeat proves the link is up), and is
  answered :class:`~edgecache.common.wire.Ok`.
- ``edgecache.fed.status`` → :class:`~edgecache.common.wire.SiteStatus`: every live site's
  last heartbeat (``edgecache status``, the admin API's ``/sites``).

A site that stops beating leaves KV ``sites`` after the TTL (and is logged ``site.left``);
its source stays, so whatever it appended before it left still reaches the others when it
comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError

from edgecache.common import subjects, wire
from edgecache.common.jetstream import (
    add_site_source,
    current_values,
    ensure_hub_stream,
    restart_stalled_sources,
    stall_options,
)
from edgecache.common.logging import get_logger
from edgecache.common.runtime import connect_nats

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

    from edgecache.common.config import Config

__all__ = ["Hub", "serve_hub"]

log = get_logger(__name__)


async def open_sites(nc: NATS, ttl_s: float, *, replicas: int = 1) -> KeyValue:
    """Create (or open) the hub's KV ``sites`` (entries expire after ``ttl_s``)."""
    js = nc.jetstream()
    config = KeyValueConfig(
        bucket=subjects.KV_SITES, history=1, ttl=ttl_s, storage=StorageType.FILE, replicas=replicas
    )
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # exists with another TTL: keep it
        return await js.key_value(subjects.KV_SITES)


class Hub:
    """Site membership at the hub.

    Args:
        nc: the hub's NATS connection.
        sites: KV ``sites``.
        ttl_s: a site without a heartbeat for this long has left.
    """

    def __init__(
        self, nc: NATS, sites: KeyValue, *, ttl_s: float = 10.0, replicas: int = 1
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.sites = sites
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.sourced: set[str] = set()  # sites whose CHANGES FEDERATION sources
        self.seen: dict[str, float] = {}  # site -> time.monotonic() of its last heartbeat
        self.heartbeats = 0
        self.rejected = 0
        self._restarted: dict[str, float] = {}
        self._relinked_at: dict[str, float] = {}  # site -> when its link last came back
        self._relink: set[str] = set()  # sites whose source to restart at their next heartbeat

    async def start(self) -> None:
        """Create (or keep) ``FEDERATION``; learn which sites it sources."""
        self.sourced = set(await ensure_hub_stream(self._js, replicas=self.replicas))

    async def on_heartbeat(self, msg: Msg) -> None:
        """Subscription callback for ``edgecache.fed.heartbeat.*``: a heartbeat is taken
        only on its own site's subject (only that site's leaf connection may carry it)."""
        try:
            beat = wire.decode(msg.data, wire.SiteHeartbeat)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.rejected += 1
            log.warning("site.heartbeat_invalid", error=str(exc))
            await self._answer(msg, wire.Error(code="InvalidRequest", message=str(exc)))
            return
        if not subjects.is_site_name(beat.site) or msg.subject != subjects.site_heartbeat(beat.site):
            self.rejected += 1
            error = "not a site name" if not subjects.is_site_name(beat.site) else f"sent on {msg.subject}"
            log.warning("site.heartbeat_invalid", site=beat.site, error=error)
            await self._answer(
                msg, wire.Error(code="InvalidRequest", message=f"a heartbeat of {beat.site!r}: {error}")
            )
            return
        try:
            if beat.site not in self.sourced:
                if await add_site_source(self._js, beat.site, replicas=self.replicas):
                    log.info("site.sourced", site=beat.site)
                    self._restarted[beat.site] = time.monotonic()  # its consumer is on its way
                self.sourced.add(beat.site)
            await self.sites.put(beat.site, msg.data)
            # a site whose link just came back (beat.relinked): its source is restarted now,
            # not once it has looked stalled for SOURCE_STALLED_AFTER_S
            relinked = beat.relinked or beat.site in self._relink
            self._relink.discard(beat.site)
            if relinked:
                self._relinked_at[beat.site] = time.monotonic()
            options = stall_options(self._relinked_at.get(beat.site), now=relinked)
            if await restart_stalled_sources(
                self._js, subjects.FEDERATION_STREAM, {beat.site}, restarted=self._restarted, **options
            ):
                log.info("site.source_restarted", site=beat.site)
        except nats.errors.Error as exc:
            log.warning("site.heartbeat_failed", site=beat.site, error=repr(exc))
            await self._answer(msg, wire.Error(code="ServiceUnavailable", message=repr(exc)))
            return
        if beat.site not in self.seen:
            log.info("site.joined", site=beat.site, nodes=len(beat.nodes))
        self.seen[beat.site] = time.monotonic()
        self.heartbeats += 1
        await self._answer(msg, wire.SiteHeartbeatAck(relink=relinked))

    def reconnected(self) -> None:
        """The hub federator's own connection came back (the hub's server restarted, so every
        link broke): each site's source is restarted at its next heartbeat, whether or not
        the site noticed the break."""
        self._relink = set(self.sourced)

    async def status(self) -> wire.SiteStatus:
        """Every live site's last heartbeat, by name."""
        beats = []
        async for value in current_values(self.sites, ">"):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                beats.append(wire.decode(value, wire.SiteHeartbeat))
        return wire.SiteStatus(sites=sorted(beats, key=lambda b: b.site))

    async def on_status(self, msg: Msg) -> None:
        """Subscription callback for ``edgecache.fed.status``."""
        try:
            answer: wire.SiteStatus | wire.Error = await self.status()
        except nats.errors.Error as exc:
            answer = wire.Error(code="ServiceUnavailable", message=repr(exc))
        await self._answer(msg, answer)

    def sweep(self) -> list[str]:
        """Forget (and log) sites whose last heartbeat is older than the TTL; their names."""
        deadline = time.monotonic() - self.ttl_s
        gone = [site for site, seen in self.seen.items() if seen < deadline]
        for site in gone:
            del self.seen[site]
            log.info("site.left", site=site)
        return gone

    async def _answer(self, msg: Msg, answer: msgspec.Struct) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, wire.encode(answer))


class _Reconnects:
    """Tells the hub (once it exists) that its connection came back."""

    def __init__(self) -> None:
        self.hub: Hub | None = None

    def disconnected(self) -> None:
        pass

    def reconnected(self) -> None:
        if self.hub is not None:
            self.hub.reconnected()

    def error(self, exc: Exception) -> None:
        pass


async def serve_hub(config: Config, stop: asyncio.Event) -> None:
    """Run the hub federator until ``stop`` is set.

    Raises:
        nats.errors.NoServersError: the hub's NATS did not answer at start.
    """
    ttl_s = config.federator.site_ttl_s
    async with AsyncExitStack() as stack:
        reconnects = _Reconnects()
        nc = await connect_nats(config.nats, name="edgecache-federator-hub", watchers=[reconnects])
        stack.push_async_callback(nc.drain)
        hub = Hub(
            nc,
            await open_sites(nc, ttl_s, replicas=config.nats.replicas),
            ttl_s=ttl_s,
            replicas=config.nats.replicas,
        )
        await hub.start()
        reconnects.hub = hub
        for subject, cb in (
            (subjects.FED_HEARTBEAT_WILDCARD, hub.on_heartbeat),
            (subjects.FED_STATUS, hub.on_status),
        ):
            sub = await nc.subscribe(subject, cb=cb)
            stack.push_async_callback(sub.unsubscribe)
        log.info("hub.started", nats=config.nats.url, site_ttl_s=ttl_s, sourced=sorted(hub.sourced))
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.1, ttl_s / 4))
            hub.sweep()
        log.info("hub.stopping", sites=sorted(hub.seen))
