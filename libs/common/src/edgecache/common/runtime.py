"""Process plumbing shared by the services: config from argv, NATS connection, shutdown.

A service's ``__main__`` calls :func:`run_service` with its ``serve(config, stop)``
coroutine; SIGINT/SIGTERM set ``stop``; ``serve`` unwinds its resources (an
``AsyncExitStack``) and drains its NATS connection before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import nats
import uvloop
from nats.aio.client import Client as NATS

from edgecache.common.config import Config, ConfigError, NatsConfig, load_config
from edgecache.common.logging import configure_logging, get_logger

__all__ = ["ConnectionWatcher", "connect_nats", "run_service"]

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
