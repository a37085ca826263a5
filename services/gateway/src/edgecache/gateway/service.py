"""``serve(config, stop)``: the gateway process — NATS connection, Litestar app, uvicorn.

Shutdown: ``stop`` (set by SIGINT/SIGTERM in :func:`edgecache.common.runtime.run_service`)
makes uvicorn stop accepting, finish in-flight requests (up to
``GRACEFUL_SHUTDOWN_S``) and run the app's lifespan shutdown; then the NATS connection
is drained.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import uvicorn

from edgecache.common.config import Config
from edgecache.common.logging import get_logger
from edgecache.common.monitor import Monitor, Server
from edgecache.common.runtime import connect_nats
from edgecache.gateway.app import create_app
from edgecache.gateway.fastpath import hit_answerer, with_fast_hits
from edgecache.gateway.httpprotocol import BODY_IDLE_TIMEOUT_S, HEADER_TIMEOUT_S, protocol_class
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.keepalive import with_keepalive
from edgecache.gateway.memtier import MemoryTier
from edgecache.gateway.metrics import RequestMetrics, gateway_collector
from edgecache.gateway.probes import with_health
from edgecache.gateway.tls import TlsListener, tls_options, tls_wanted
from edgecache.gateway.workers import listening_socket, run_workers

if TYPE_CHECKING:
    from litestar import Litestar

    from edgecache.gateway.fastpath import Hits
    from edgecache.gateway.keepalive import ASGIApp

__all__ = ["GRACEFUL_SHUTDOWN_S", "asgi", "serve", "serve_worker", "uvicorn_config"]

log = get_logger("edgecache.gateway")

GRACEFUL_SHUTDOWN_S = 30.0


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
    hits: Hits | None = None,
    **options: Any,
) -> uvicorn.Config:
    """uvicorn settings for the gateway: uvloop, httptools with the gateway's limits on the
    request head (:mod:`~edgecache.gateway.httpprotocol`) and, given ``hits``
    (:func:`~edgecache.gateway.fastpath.hit_answerer`), memory-tier hits answered by the
    protocol before the ASGI layers; no access log (the gateway writes its own line per
    request), no ``Server: uvicorn``; ``options`` (uvicorn's own, e.g. the TLS files) are
    added or override these."""
    settings: dict[str, Any] = {
        "loop": "uvloop",
        "http": protocol_class(header_timeout_s, body_idle_timeout_s, hits),
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": int(GRACEFUL_SHUTDOWN_S),
    }
    return uvicorn.Config(app, host=host, port=port, **{**settings, **options})  # type: ignore[arg-type]


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run the gateway, in ``gateway.workers`` processes sharing its port
    (:mod:`edgecache.gateway.workers`), until ``stop`` is set.

    Raises:
        nats.errors.NoServersError: NATS is unreachable at start.
        OSError: the port cannot be bound.
    """
    await run_workers(config, stop, serve_worker)


async def serve_worker(config: Config, stop: asyncio.Event, sock: socket.socket) -> None:
    """One worker: its NATS connection, memory tier and app, serving on ``sock``, and over
    TLS on ``gateway.tls_port`` when a certificate is configured (:mod:`.tls`); its metrics
    and health on ``gateway.metrics_port`` (this worker's: see
    :func:`~edgecache.gateway.workers.worker_config`), and health on ``sock`` too."""
    gw = config.gateway
    tls_on = tls_wanted(gw)
    if not gw.access_key or not gw.secret_key:
        log.warning(
            "gateway.no_credentials", hint="set EDGECACHE_ACCESS_KEY and EDGECACHE_SECRET_KEY"
        )
    tier = MemoryTier(capacity_bytes=gw.memory_tier_bytes, gate_bytes=gw.memory_tier_gate_bytes)
    listener = InvalidationListener(tier) if tier.enabled else None
    monitor = Monitor("gateway", host=config.metrics.host, port=gw.metrics_port)
    nc = await connect_nats(
        config.nats, name="edgecache-gateway", watchers=[listener] if listener else []
    )
    try:
        monitor.watch_nats(nc)
        # no port, no scraper: the request path then counts nothing
        requests = RequestMetrics(monitor.registry) if gw.metrics_port else None
        app = create_app(config, nc, memtier=tier, invalidations=listener, metrics=requests)
        monitor.registry.register(gateway_collector(lambda: getattr(app.state, "gateway", None)))
        served = with_health(asgi(app), monitor.health)
        limits = {
            "header_timeout_s": gw.header_timeout_s,
            "body_idle_timeout_s": gw.body_idle_timeout_s,
            "hits": hit_answerer(app),
        }
        server = Server(uvicorn_config(served, gw.host, gw.port, **limits))
        tls = None
        if tls_on:
            tls_config = uvicorn_config(served, gw.host, gw.tls_port, **limits, **tls_options(gw))
            tls = TlsListener(Server(tls_config), listening_socket(gw.host, gw.tls_port))

        async def stopper() -> None:
            await stop.wait()
            if tls is not None:
                await tls.stop()  # before the HTTP server's lifespan closes the app's state
            server.should_exit = True

        watcher = asyncio.create_task(stopper())
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with monitor:
                log.info(
                    "gateway.listening",
                    endpoint=f"http://{gw.host}:{gw.port}",
                    region=gw.region,
                    metrics=monitor.url if gw.metrics_port else None,
                )
                if tls is not None:
                    while not server.started and not serving.done():
                        await asyncio.sleep(0.01)
                    if server.started:
                        await tls.start()
                        log.info(
                            "gateway.listening",
                            endpoint=f"https://{gw.host}:{gw.tls_port}",
                            region=gw.region,
                        )
                await serving
        finally:
            watcher.cancel()
            if tls is not None:
                await tls.stop()
            server.should_exit = True  # the TLS listener failed to start: stop HTTP too
            await asyncio.gather(serving, return_exceptions=True)
    finally:
        await nc.drain()
