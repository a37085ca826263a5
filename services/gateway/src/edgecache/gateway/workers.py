"""Gateway worker processes sharing one port.

One Python process serves HTTP on one core. ``gateway.workers`` processes (0: one per
core) each bind their own listening socket to the same address with ``SO_REUSEPORT``, and
the kernel spreads new connections over them. Each worker is a whole gateway — its own
NATS connection and its own memory tier, kept coherent by the same invalidation events —
so nothing is shared but the port. The first worker is the service's own process; it
starts the others (``multiprocessing``, spawn) and stops them when it stops, and starts
one again if it dies. A worker also dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import socket
from collections.abc import Awaitable, Callable

import msgspec
import uvloop

from edgecache.common.backoff import Backoff
from edgecache.common.config import Config
from edgecache.common.logging import configure_logging, get_logger

__all__ = ["freeze_startup", "listening_socket", "run_workers", "worker_config", "worker_count"]

log = get_logger("edgecache.gateway")

Serve = Callable[[Config, asyncio.Event, socket.socket], Awaitable[None]]
_RESTART = Backoff(base_s=0.5, max_s=10.0)


def worker_count(config: Config) -> int:
    """How many worker processes ``config`` asks for (``0``: one per core)."""
    return config.gateway_workers()


def per_worker(config: Config) -> Config:
    """``config`` with the memory tier's capacity split between the workers (the
    configured capacity bounds the whole gateway service)."""
    gw = config.gateway
    share = gw.memory_tier_bytes // worker_count(config)
    return msgspec.structs.replace(
        config, gateway=msgspec.structs.replace(gw, memory_tier_bytes=share)
    )


def worker_config(config: Config, index: int) -> Config:
    """``config`` for worker ``index`` (0: the service's own process): its metrics and health
    port is ``gateway.metrics_port + index`` (none when ``metrics_port`` is 0).

    Why a port per worker rather than prometheus-client's multiprocess mode: each worker is
    a whole gateway with its own NATS connection, memory tier and readiness, so each is
    scraped and probed as what it is (a Prometheus target of its own; ``sum`` over them is
    the gateway), process metrics (``process_resident_memory_bytes``) stay per process, the
    tier's counters are read at scrape time without a shared file per metric, and a
    restarted worker leaves no files behind.
    """
    gw = config.gateway
    if not gw.metrics_port:
        return config
    return msgspec.structs.replace(
        config, gateway=msgspec.structs.replace(gw, metrics_port=gw.metrics_port + index)
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, listening
    (backlog 2048).

    Raises:
        OSError: the address cannot be bound (in use without ``SO_REUSEPORT``, no such
            interface, a privileged port).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def run_workers(config: Config, stop: asyncio.Event, serve: Serve) -> None:
    """Serve in this process and in ``worker_count(config) - 1`` others until ``stop``;
    a worker that dies is started again (backoff 0.5 s doubling to 10 s).

    Raises:
        OSError: this process cannot bind ``gateway.host:gateway.port``.
    """
    config = per_worker(config)
    count = worker_count(config)
    sock = listening_socket(config.gateway.host, config.gateway.port)
    if count == 1:
        await serve(config, stop, sock)
        return
    context = multiprocessing.get_context("spawn")
    children: dict[int, multiprocessing.process.BaseProcess] = {}

    def start(index: int) -> None:
        process = context.Process(
            target=_worker_main,
            args=(worker_config(config, index), serve, index),
            name=f"gateway-{index}",
        )
        process.start()
        children[index] = process

    async def keep_alive() -> None:
        restarts = 0
        while not stop.is_set():
            await asyncio.sleep(0.5)
            for index, process in list(children.items()):
                if not process.is_alive() and not stop.is_set():
                    restarts += 1
                    log.warning("gateway.worker_died", worker=index, exitcode=process.exitcode)
                    await asyncio.sleep(_RESTART.delay(restarts))
                    start(index)

    for index in range(1, count):
        start(index)
    watcher = asyncio.create_task(keep_alive())
    try:
        await serve(config, stop, sock)
    finally:
        watcher.cancel()
        for process in children.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in children.values():
            await asyncio.to_thread(process.join, 35)
            if process.is_alive():
                process.kill()


def freeze_startup() -> None:
    """Put what a gateway process built before serving (its modules: ~80k objects, kept
    for its whole life) out of the cyclic garbage collector's sight: a full collection then
    walks only what serving made. Measured on the shared 2-core box under 4 KiB hits, full
    collections of the unfrozen heap took 0.1-0.9 s of wall time each (load 3-16), a pause
    for every request of the worker (docs/benchmarks.md). Call once per process, at its
    entry point, after its imports (never in a process that runs anything else, such as a
    test session)."""
    gc.collect()
    gc.freeze()


def _worker_main(config: Config, serve: Serve, index: int) -> None:
    """A worker process: dies with its parent, stops on SIGTERM/SIGINT."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    configure_logging(config.log, service="gateway")
    freeze_startup()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sock = listening_socket(config.gateway.host, config.gateway.port)
        await serve(config, stop, sock)

    uvloop.run(main())
