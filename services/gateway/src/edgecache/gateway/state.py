"""What every request of one gateway shares: the ``s3.*`` client, the config, the
credentials and the SigV4 functions. Built in the app's ``lifespan``; lives on
``app.state.gateway``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edgecache.gateway import auth, sigv4

if TYPE_CHECKING:
    from edgecache.common.client import EdgecacheClient
    from edgecache.common.config import GatewayConfig
    from edgecache.gateway.invalidations import InvalidationListener
    from edgecache.gateway.memtier import MemoryTier
    from edgecache.gateway.shortcircuit import LocalReads

__all__ = ["GatewayState", "RequestCounter"]


class RequestCounter(Protocol):
    """Where finished requests are counted (:class:`edgecache.gateway.metrics.RequestMetrics`)."""

    def observe(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """One request: its S3 action (``""`` if unrouted), HTTP status, seconds from
        arrival to its end, body bytes received and sent."""


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Shared, immutable per-process resources.

    Attributes:
        client: speaks ``s3.*`` to the cache nodes.
        config: the ``[gateway]`` section (region, clock skew, …).
        credentials: access key id → secret access key (one pair today).
        verify: :func:`edgecache.gateway.auth.verify` (replaceable in tests).
        wrap_body: :func:`edgecache.gateway.sigv4.wrap_body`.
        owner: the owner ID and display name shown in listings.
        memtier: the memory tier, or ``None`` when it is off (or no events can keep it
            coherent, as with a stand-in client in tests).
        invalidations: what keeps ``memtier`` coherent.
        local: short-circuit reads of cache nodes' chunk files on this host, or ``None``
            when off (``gateway.short_circuit``).
        metrics: where :meth:`~edgecache.gateway.exchange.Exchange.finish` counts each
            request, or ``None`` (no metrics).
    """

    client: EdgecacheClient
    config: GatewayConfig
    credentials: Mapping[str, str]
    verify: Callable[..., Any] = field(default=auth.verify)
    wrap_body: Callable[..., Any] = field(default=sigv4.wrap_body)
    owner: str = "edgecache"
    memtier: MemoryTier | None = None
    invalidations: InvalidationListener | None = None
    local: LocalReads | None = None
    metrics: RequestCounter | None = None

    def in_sync(self) -> bool:
        """Whether the memory tier may be used now (it saw every invalidation event)."""
        return self.invalidations is not None and self.invalidations.in_sync
