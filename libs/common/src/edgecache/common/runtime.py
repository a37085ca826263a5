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
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import nkeys
import uvloop
from nats import errors as nats_errors
from nats.aio.client import Client as NATS

from edgecache.common.config import Config, ConfigError, NatsConfig, load_config
from edgecache.common.logging import configure_logging, get_logger

__all__ = [
    "ConnectionWatcher",
    "LoopEnded",
    "NatsCredentialsError",
    "raise_if_cancelling",
    "connect_nats",
    "run_service",
    "until_stopped",
]

log = get_logger(__name__)


class NatsCredentialsError(Exception):
    """This process's NATS credentials cannot work: the server refused them (``Authorization
    Violation``), or the nkey seed file cannot be read or holds no seed. Trying again cannot
    help; the message names the credential (the user, or the nkey's public key and its
    seed file), never the secret."""


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

    A server that refuses the TCP connection or does not answer is tried again every
    0.5 s for as long as it takes (a service may start before its server); a server that
    refuses the credentials is not: this raises at once. Once connected, every loss is
    retried forever, refused credentials included (a server being reconfigured).

    A publish or subscription the server's permissions refuse is not an exception here:
    the server drops it and says so, and ``on_error`` logs it as ``nats.error``.

    Raises:
        NatsCredentialsError: the server refused the credentials (``Authorization
            Violation``), or ``config.nkey_seed_file`` cannot be read or holds no nkey seed.
    """
    credential = _credential(config)
    connected = False

    async def on_error(exc: Exception) -> None:
        if not connected and _refused(exc):
            # raised inside nats-py's connect loop, which lets it through: it stops trying
            raise NatsCredentialsError(f"NATS at {_where(config)} refused {credential}: {exc}") from exc
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

    nc = NATS()
    try:
        await nc.connect(
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
    except NatsCredentialsError:
        await nc.close()  # the refused connection's socket
        raise
    connected = True
    return nc


def _credential(config: NatsConfig) -> str:
    """What ``config`` logs in as, for a message: ``nkey U… (seed file …)``, ``user …`` or
    ``no credentials``.

    Raises:
        NatsCredentialsError: the seed file cannot be read or holds no nkey seed.
    """
    if config.nkey_seed_file:
        path = Path(config.nkey_seed_file)
        try:
            seed = path.read_bytes().strip()
        except OSError as exc:
            raise NatsCredentialsError(f"nats.nkey_seed_file {path} cannot be read: {exc.strerror}") from exc
        try:
            public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        except Exception as exc:  # noqa: BLE001 - nkeys raises its own types, and binascii's
            raise NatsCredentialsError(f"nats.nkey_seed_file {path} holds no nkey seed") from exc
        return f"nkey {public} (seed file {path})"
    if config.user:
        return f"user {config.user!r}"
    users = {urlsplit(s).username for s in config.servers()} - {None}
    if users:
        return f"user {', '.join(sorted(users))!r} (in nats.url)"
    return "no credentials (anonymous)"


def _where(config: NatsConfig) -> str:
    """The servers of ``config``, without any password in their URLs."""
    return ", ".join(re.sub(r"//[^/@]*@", "//", s) for s in config.servers())


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` (from nats-py's connect) says the server refused the credentials."""
    return isinstance(exc, nats_errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def raise_if_cancelling(exc: BaseException) -> None:
    """Raise :class:`asyncio.CancelledError` (from ``exc``) if the current task is being
    cancelled: nats-py turns a cancelled wait on a closed connection into
    ``ConnectionClosedError``, and a loop that logs and retries errors must not swallow its
    own cancellation that way. Otherwise return."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


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
    until SIGINT/SIGTERM. Exits 2 on a config error, or when NATS refuses the service's
    credentials (:class:`NatsCredentialsError`: a restart cannot fix either), with the
    message on stderr."""
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

    try:
        uvloop.run(main())
    except NatsCredentialsError as exc:
        log.error("nats.credentials_refused", error=str(exc))
        print(f"edgecache {name}: {exc}", file=sys.stderr)
        sys.exit(2)
