"""The monitoring HTTP server of one service process: Prometheus metrics and health.

One small server per process, on ``<service>.metrics_port`` (0: none), served by uvicorn
in the service's own event loop:

- ``GET /metrics``: the process's registry in the Prometheus text format (or OpenMetrics,
  as the scraper asks; prometheus-client's ASGI app);
- ``GET /health/live``: 200 while the event loop answers;
- ``GET /health/ready``: 200 when every readiness check passes, else 503
  (:class:`~edgecache.common.health.Health`); both answer a JSON
  :class:`~edgecache.common.health.HealthReport`.

Anything else is 404. Nothing here needs credentials: bind it where only the scraper and
the orchestrator reach it (``metrics.host``, loopback by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn
from prometheus_client import make_asgi_app

from edgecache.common.health import Health
from edgecache.common.logging import get_logger
from edgecache.common.metrics import nats_collector, new_registry

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from prometheus_client import CollectorRegistry

__all__ = ["HEALTH_PATHS", "Monitor", "Server", "answer_health"]

log = get_logger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HEALTH_PATHS = ("/health/live", "/health/ready")
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


async def answer_health(scope: Scope, send: Send, health: Health) -> bool:
    """Answer ``scope`` if it is a GET or HEAD of ``/health/live`` or ``/health/ready``;
    ``False`` (nothing sent) for any other request."""
    path = scope.get("path")
    if path not in HEALTH_PATHS or scope.get("method") not in ("GET", "HEAD"):
        return False
    report = health.live() if path == HEALTH_PATHS[0] else await health.ready()
    body = msgspec.json.encode(report)
    await send(
        {"type": "http.response.start", "status": 200 if report.ok else 503, "headers": _JSON}
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
    return True


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's ``stop`` event decides
    (set ``should_exit``). Also the gateway's S3 server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Monitor:
    """The metrics registry, the health checks and the server of one service process.

    Use: build it first, connect NATS, :meth:`watch_nats`, register the service's
    collectors on :attr:`registry` and checks on :attr:`health`, then ``async with`` it
    (which serves until the block ends; a ``port`` of 0 serves nothing).

    Args:
        service: ``gateway``, ``cachenode``, ``writeback`` or ``federator``.
        host: the address to listen on (``metrics.host``).
        port: the TCP port (``<service>.metrics_port``); 0: no server.
    """

    def __init__(self, service: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.registry: CollectorRegistry = new_registry()
        self.health = Health(service)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self._metrics = make_asgi_app(self.registry)
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None

    def watch_nats(self, nc: NATS) -> None:
        """Report ``nc``'s figures (:func:`~edgecache.common.metrics.nats_collector`) and
        make readiness depend on it (:meth:`Health.watch_nats`)."""
        self.registry.register(nats_collector(self.service, lambda: nc))
        self.health.watch_nats(nc)

    def refresh_before_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await ``refresh`` before each scrape (at most ``health.timeout_s``; a failure is
        logged and the scrape goes on): for figures only a NATS request can get."""
        self._refreshers.append(refresh)

    @property
    def url(self) -> str:
        """``http://host:port`` of the server (meaningful once started)."""
        return f"http://{self.host}:{self.port}"

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: ``/metrics``, ``/health/live``, ``/health/ready``."""
        if scope["type"] != "http" or await answer_health(scope, send, self.health):
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            for refresh in self._refreshers:
                try:
                    await asyncio.wait_for(refresh(), self.health.timeout_s)
                except Exception as exc:  # noqa: BLE001 - stale figures beat no scrape
                    log.warning("metrics.refresh_failed", error=repr(exc))
            await self._metrics(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": _JSON})
        await send({"type": "http.response.body", "body": b'{"error":"not found"}'})

    async def start(self) -> None:
        """Start serving (nothing when ``port`` is 0); returns once the port listens.

        Raises:
            OSError: the port cannot be bound.
        """
        if not self.port:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)  # OSError here
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        server = self._server = Server(config)
        self._task = asyncio.create_task(
            server.serve(sockets=[sock]), name=f"{self.service}-monitor"
        )
        while not server.started and not self._task.done():
            await asyncio.sleep(0.005)
        log.info("monitor.listening", url=self.url, service=self.service)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Monitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
