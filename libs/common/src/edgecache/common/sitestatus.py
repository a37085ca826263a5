"""Asking the hub federator for every federated site (``edgecache.fed.status``): shared by
``edgecache status`` and the admin API's ``/api/sites``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import nats.errors

from edgecache.common import subjects, wire

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = ["ask_sites"]


async def ask_sites(nc: NATS, *, timeout_s: float = 2.0) -> wire.SiteStatus:
    """Every live site's last heartbeat (its nodes and their stats, its cross-site backlog),
    asked of the hub federator through ``nc`` (a site's NATS or the hub's); no sites if none
    answers within ``timeout_s`` (a lone site, or the hub is unreachable)."""
    try:
        reply = await nc.request(subjects.FED_STATUS, b"", timeout=timeout_s)
        return wire.decode(reply.data, wire.SiteStatus)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return wire.SiteStatus(sites=[])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return wire.SiteStatus(sites=[])
