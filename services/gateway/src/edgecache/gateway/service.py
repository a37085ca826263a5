"""``serve(config, stop)``: the gateway process — NATS connection, Litestar app, uvicorn.

Shutdown: ``stop`` (set by SIGINT/SIGTERM in :func:`edgecache.common.runtime.run_service`)
makes uvicorn stop accepting, finish in-flight requests (up to
``GRACEFUL_SHUTDOWN_S``) and run the app's lifespan shutdown; then the NATS connection
is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from edgecache.common.config import Config
from edgecache.common.logging import get_logger
from edgecache.common.runtime import connect_nats
from edgecache.gateway.app import create_app
from edgecache.gateway.fastpath import with_fast_hits
from edgecache.gateway.httpprotocol import BODY_IDLE_TIMEOUT_S, HEADER_TIMEOUT_S, protocol_class
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.keepalive import with_keepalive
from edgecache.gateway.memtier import MemoryTier
from edgecache.gateway.workers import run_workers

if TYPE_CHECKING:
    from litestar import Litestar

    from edgecache.gateway.keepalive import ASGIApp

__all__ = ["GRACEFUL_SHUTDOWN_S", "asgi", "serve", "serve_worker", "uvicorn_config"]

log = get_logger("edgecache.gateway")

GRACEFUL_SHUTDOWN_S = 30.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's ``stop`` event decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def asgi(app: Litestar) -> ASGIApp:
    """The gateway app as uvicorn serves it: memory-tier hits answered in front of Litestar
    (:mod:`~edgecache.gateway.fastpath`), and every answer given before its request body
    was read marked to close the connection when it must (:mod:`~edgecache.gateway.keepalive`)."""
    return with_keepalive(with_fast_hits(app))


def uvicorn_config(
    app: object,
    host: str,
    port: int,
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
) -> uvicorn.Config:
    """uvicorn settings for the gateway: uvloop, httptools with the gateway's limits on the
    request head (:mod:`~edgecache.gateway.httpprotocol`), no access
    log (the gateway writes its own line per request), no ``Server: uvicorn``."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_class(header_timeout_s, body_idle_timeout_s),
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
    )


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run the gateway, in ``gateway.workers`` processes sharing its port
    (:mod:`edgecache.gateway.workers`), until ``stop`` is set.

    Raises:
        nats.errors.NoServersError: NATS is unreachable at start.
        OSError: the port cannot be bound.
    """
    await run_workers(config, stop, serve_worker)


async def serve_worker(config: Config, stop: asyncio.Event, sock: socket.socket) -> None:
    """One worker: its NATS connection, memory tier and app, serving on ``sock``."""
    gw = config.gateway
    if not gw.access_key or not gw.secret_key:
        log.warning(
            "gateway.no_credentials", hint="set EDGECACHE_ACCESS_KEY and EDGECACHE_SECRET_KEY"
        )
    tier = MemoryTier(capacity_bytes=gw.memory_tier_bytes, gate_bytes=gw.memory_tier_gate_bytes)
    listener = InvalidationListener(tier) if tier.enabled else None
    nc = await connect_nats(
        config.nats, name="edgecache-gateway", watchers=[listener] if listener else []
    )
    try:
        app = create_app(config, nc, memtier=tier, invalidations=listener)
        server = _Server(
            uvicorn_config(
                asgi(app),
                gw.host,
                gw.port,
                header_timeout_s=gw.header_timeout_s,
                body_idle_timeout_s=gw.body_idle_timeout_s,
            )
        )

        async def stopper() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(stopper())
        try:
            log.info("gateway.listening", endpoint=f"http://{gw.host}:{gw.port}", region=gw.region)
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
    finally:
        await nc.drain()
