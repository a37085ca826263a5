"""A site federator's side of the federation: the site's streams, its heartbeat to the hub,
and keeping its ``FEDERATION`` source moving after a broken link.

Every ``federator.site_heartbeat_s`` the federator asks the hub federator
(``edgecache.fed.heartbeat``) with a :class:`~edgecache.common.wire.SiteHeartbeat`: the
site's live cache nodes with their stats (from the federator's own membership), the
cross-site backlog (changes not yet applied here) and how far its ``FEDERATION`` lags the
hub's. The first heartbeat makes the hub source the site's ``CHANGES``. An answer proves
the link is up: a stalled source of the hub's ``FEDERATION`` is then restarted at once
rather than after nats-server's own 30 s wait and backoff
(:func:`edgecache.common.jetstream.restart_stalled_sources`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import nats.errors

from edgecache.common import ids, subjects, wire
from edgecache.common.jetstream import (
    ensure_site_streams,
    restart_stalled_sources,
    source_activity,
    stall_options,
)
from edgecache.common.logging import get_logger
from edgecache.common.metrics import Sample
from edgecache.federator.applier import ChangeApplier

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.config import Config
    from edgecache.federator.membership import Membership

__all__ = ["Site", "SiteLink", "site_samples", "start_site"]

log = get_logger(__name__)


class SiteLink:
    """This site's heartbeat to the hub, and its ``FEDERATION`` source kept moving.

    Args:
        nc: the site's NATS connection.
        site: this site's name.
        membership: the site's live cache nodes (their last heartbeats).
        applier: the consumer of ``FEDERATION`` (for the backlog and counters).
        heartbeat_s: seconds between heartbeats.
    """

    def __init__(
        self,
        nc: NATS,
        site: str,
        membership: Membership,
        applier: ChangeApplier,
        *,
        heartbeat_s: float = 1.0,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.site = site
        self.membership = membership
        self.applier = applier
        self.heartbeat_s = heartbeat_s
        self.replicas = replicas
        self.linked = False  # the hub answered the last heartbeat
        self.lost = False  # the hub was answering, then stopped; until it answers again
        self._relinked_at: float | None = None  # time.monotonic() the link last came back
        self.last: wire.SiteHeartbeat | None = None  # the last heartbeat sent
        self.heartbeats = 0  # heartbeats the hub answered
        self.restarts = 0  # stalled FEDERATION sources restarted
        self._restarted: dict[str, float] = {}

    async def start(self) -> None:
        """Create (or keep) the site's ``CHANGES`` and ``FEDERATION``.

        Raises:
            nats.errors.TimeoutError, JetStream API errors: the site's JetStream did not answer.
        """
        await ensure_site_streams(self._js, self.site, replicas=self.replicas)
        self._restarted[subjects.HUB_DOMAIN] = time.monotonic()  # its consumer is on its way

    async def lag(self) -> int:
        """Messages the site's ``FEDERATION`` lags behind the hub's (-1: unknown)."""
        try:
            activity = await source_activity(self._js, subjects.FEDERATION_STREAM)
        except (TimeoutError, nats.errors.Error):
            return -1
        return activity.get(subjects.HUB_DOMAIN, (0.0, -1))[1]

    async def heartbeat(self) -> wire.SiteHeartbeat:
        """This site's heartbeat now."""
        nodes = [
            beat for n in self.membership.node_ids() if (beat := self.membership.get(n)) is not None
        ]
        return wire.SiteHeartbeat(
            id=ids.new_id(),
            at_ns=time.time_ns(),
            site=self.site,
            nodes=nodes,
            backlog=await self.applier.backlog(),
            lag=await self.lag(),
            applied=self.applier.applied,
            failed_applies=self.applier.failures,
            relinked=self.lost,
        )

    async def beat(self) -> bool:
        """Send one heartbeat; whether the hub answered (then restart stalled sources)."""
        beat = await self.heartbeat()
        self.last = beat
        try:
            reply = await self._nc.request(
                subjects.site_heartbeat(self.site), wire.encode(beat), timeout=max(self.heartbeat_s, 1.0)
            )
            answer = wire.REPLY_DECODER.decode(reply.data)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            answer = None
        except (nats.errors.Error, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("site.heartbeat_failed", error=repr(exc))
            answer = None
        linked = isinstance(answer, wire.SiteHeartbeatAck | wire.Ok)
        if linked != self.linked:
            log.info("site.hub_linked" if linked else "site.hub_unreachable", site=self.site)
        told = isinstance(answer, wire.SiteHeartbeatAck) and answer.relink  # the hub restarted
        relinked = linked and (self.lost or told)
        self.lost = (self.lost or self.linked) and not linked
        self.linked = linked
        if not linked:
            return False
        self.heartbeats += 1
        try:
            # the link is back: the source's consumer at the hub is gone or about to be
            # found so (nats-server waits 30 s and more); restart it now, and soon again
            # if it stays silent
            if relinked:
                self._relinked_at = time.monotonic()
            options = stall_options(self._relinked_at, now=relinked)
            restarted = await restart_stalled_sources(
                self._js,
                subjects.FEDERATION_STREAM,
                {subjects.HUB_DOMAIN},
                restarted=self._restarted,
                **options,
            )
        except nats.errors.Error as exc:
            log.warning("site.source_restart_failed", error=repr(exc))
            return True
        if restarted:
            self.restarts += 1
            log.info("site.source_restarted", site=self.site, source=subjects.HUB_DOMAIN)
        return True

    async def run(self) -> None:
        """Heartbeat every ``heartbeat_s`` until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.beat()
            except nats.errors.Error as exc:  # the site's own server is restarting
                log.warning("site.heartbeat_failed", error=repr(exc))
            await asyncio.sleep(max(0.0, self.heartbeat_s - (time.monotonic() - started)))


def site_samples(link: SiteLink) -> Iterator[Sample]:
    """The site's federation counters and its last heartbeat's figures, as samples."""
    applier, last = link.applier, link.last
    yield (
        "site_changes_applied",
        "counter",
        "Other sites' changes a cache node applied",
        applier.applied,
    )
    yield (
        "site_changes_skipped",
        "counter",
        "This site's own changes read back from FEDERATION",
        applier.skipped,
    )
    yield (
        "site_apply_failures",
        "counter",
        "edgecache.fed.apply requests unanswered or refused (retried)",
        applier.failures,
    )
    yield (
        "site_backlog",
        "gauge",
        "Other sites' changes not yet applied here (-1: unknown)",
        last.backlog if last else -1,
    )
    yield (
        "site_lag",
        "gauge",
        "Messages FEDERATION lags behind the hub's (-1: unknown)",
        last.lag if last else -1,
    )
    yield ("site_hub_linked", "gauge", "1 if the hub answered the last heartbeat", int(link.linked))
    yield ("site_source_restarts", "counter", "Stalled FEDERATION sources restarted", link.restarts)


@dataclass
class Site:
    """A running site side of the federator: its applier, its link and their tasks."""

    applier: ChangeApplier
    link: SiteLink
    tasks: list[asyncio.Task[None]]


async def start_site(config: Config, nc: NATS, membership: Membership) -> Site:
    """Create the site's streams and start its applier and its heartbeat to the hub
    (``config.federation.site`` set); cancel :attr:`Site.tasks` at shutdown.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the site's JetStream did not answer.
    """
    fed = config.federator
    applier = ChangeApplier(
        nc, config.federation.site, max_in_flight=fed.apply_in_flight, timeout_s=fed.apply_timeout_s
    )
    link = SiteLink(
        nc,
        config.federation.site,
        membership,
        applier,
        heartbeat_s=fed.site_heartbeat_s,
        replicas=config.nats.replicas,
    )
    await link.start()
    log.info("site.started", site=config.federation.site)
    return Site(
        applier,
        link,
        [
            asyncio.create_task(applier.run(), name="federation-apply"),
            asyncio.create_task(link.run(), name="site-link"),
        ],
    )
