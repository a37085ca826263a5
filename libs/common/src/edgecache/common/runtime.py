"""Process plumbing shared by the services: config from argv, NATS connection, shutdown.

A service's ``__main__`` calls :func:`run_service` with its ``serve(config, stop)``
coroutine; SIGINT/SIGTERM set ``stop``; ``serve`` unwinds its resources (an
``AsyncExitStack``) and drains its NATS connection before it returns.

A service's background loops (a consumer, a sweep, heartbeats) run for its whole life;
``serve`` waits with :func:`until_stopped`, so that a loop that ends early ends the
service with an error instead of leaving it up with a part of it dead (the supervisor,
``edgecache up`` or compose, starts it again).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

import nats
import uvloop
from nats.aio.client import Client as NATS

from edgecache.common.config import Config, ConfigError, NatsConfig, load_config
from edgecache.common.logging import configure_logging, get_logger

__all__ = ["ConnectionWatcher", "LoopEnded", "connect_nats", "run_service", "until_stopped"]

log = get_logger(__name__)


class ConnectionWatcher(Protocol):
    """Told of what happens to a NATS connection (see :func:`connect_nats`)."""

    def disconnected(self) -> None: ...

    def reconnected(self) -> None: ...

    def error(self, exc: Exception) -> None: ...


async def connect_nats(
    config: NatsConfig, *, name: str, watchers: Sequence[ConnectionWatcher] = ()
) -> NATS:
    """Connect to NATS at ``config.url`` as the nkey whose seed is in
    ``config.nkey_seed_file`` if set, else as ``config.user`` (none when empty), with reply
    subjects under ``config.inbox_prefix``, reconnecting forever on loss. ``watchers`` hear
    of every disconnect, reconnect and asynchronous error (a slow consumer, for one) after
    it is logged.

    A publish or subscription the server's permissions refuse is not an exception here:
    the server drops it and says so, and ``on_error`` logs it as ``nats.error``.

    Raises:
        nats.errors.NoServersError: no server answered within ``connect_timeout_s``.
        nats.errors.Error: the server refused the credentials (``Authorization Violation``).
        OSError: ``config.nkey_seed_file`` cannot be read.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc))
        for watcher in watchers:
            watcher.error(exc)

    async def on_disconnect() -> None:
        log.warning("nats.disconnected")
        for watcher in watchers:
            watcher.disconnected()

    async def on_reconnect() -> None:
        log.info("nats.reconnected")
        for watcher in watchers:
            watcher.reconnected()

    return await nats.connect(
        servers=config.servers(),
        name=name,
        user=None if config.nkey_seed_file else config.user or None,
        password=None if config.nkey_seed_file else config.password or None,
        nkeys_seed=config.nkey_seed_file or None,
        inbox_prefix=config.inbox_prefix,
        connect_timeout=config.connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


class LoopEnded(RuntimeError):
    """A loop meant to run until the service stops ended before (its exception, if it
    raised one, is the ``__cause__``)."""


async def until_stopped(stop: asyncio.Event, loops: Collection[asyncio.Future[None]]) -> None:
    """Wait until ``stop`` is set.

    Raises:
        LoopEnded: one of ``loops`` ended first (raised, returned, or was cancelled), named
            by its task name; the other loops are left running for the caller to cancel.
    """
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopped, *loops}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if stop.is_set():
        return
    ended = next(loop for loop in loops if loop.done())
    name = ended.get_name() if isinstance(ended, asyncio.Task) else repr(ended)
    cause = None if ended.cancelled() else ended.exception()
    log.error("service.loop_ended", loop=name, error=repr(cause))
    raise LoopEnded(f"{name} ended before the service stopped: {cause!r}") from cause


def run_service(
    name: str,
    serve: Callable[[Config, asyncio.Event], Awaitable[None]],
    argv: list[str] | None = None,
) -> None:
    """Parse ``--config``, load the config, configure logging and run ``serve`` on uvloop
    until SIGINT/SIGTERM. Exits 2 on a config error, with the message on stderr."""
    parser = argparse.ArgumentParser(prog=f"edgecache {name}")
    parser.add_argument("--config", help="TOML config file (default: $EDGECACHE_CONFIG)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edgecache {name}: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log, service=name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    uvloop.run(main())
