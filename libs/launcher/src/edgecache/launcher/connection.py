"""Short NATS connections for the launcher's one-off jobs: creating the JetStream state
before the services start, reading it for ``status``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from edgecache.common.config import NatsConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.config import Config

# nats-py (and edgecache.common.jetstream, which uses it) is imported inside the functions:
# it pulls in aiohttp, about a second of start-up that `edgecache --help` and
# `edgecache <service>` (an exec of the service) should not pay.

__all__ = ["JETSTREAM_READY_S", "connect", "prepare_state"]

JETSTREAM_READY_S = 30.0  # how long `up` waits for JetStream (a cluster elects its leaders)


async def connect(target: str | NatsConfig, timeout_s: float) -> NATS:
    """Connect to NATS for a short job: two attempts, no reconnects, no error noise.

    Args:
        target: the URL (no credentials), or a ``NatsConfig`` (URL, user, password and
            inbox prefix).

    Raises:
        click.ClickException: nothing answered at the URL within ``timeout_s`` seconds, or
            the server refused the credentials.
    """
    import nats

    if isinstance(target, str):
        url, user, password, prefix = target, "", "", "_INBOX"
    else:
        url, user, password, prefix = target.url, target.user, target.password, target.inbox_prefix

    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        errors.append(exc)

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=NatsConfig(url=url).servers(),
                name="edgecache-cli",
                user=user or None,
                password=password or None,
                inbox_prefix=prefix,
                connect_timeout=timeout_s,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # nats-py: 0 would mean "forever"
                reconnect_time_wait=0.2,
                error_cb=remember,
            ),
            timeout_s + 1,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = errors[-1] if errors else exc
        hint = ""
        if "authorization violation" in str(cause).lower():
            hint = (
                f"; it refused {'user ' + repr(user) if user else 'an anonymous client'}: pass "
                "the --data-dir of its `edgecache up`, or set EDGECACHE_NATS__USER and "
                "EDGECACHE_NATS__PASSWORD (docs/security.md)"
            )
        raise click.ClickException(
            f"cannot reach NATS at {url}: {cause or type(cause).__name__}{hint}"
        ) from exc


async def prepare_state(config: Config) -> None:
    """Create the JetStream state (KV buckets, ``WRITEBACK``) once, before the services
    start.

    Raises:
        click.ClickException: NATS is unreachable, or JetStream did not answer within
            :data:`JETSTREAM_READY_S`.
    """
    from edgecache.common.jetstream import ensure_state
    from edgecache.launcher.natscluster import wait_for_jetstream

    nc = await connect(config.nats, config.nats.connect_timeout_s)
    try:
        try:  # a cluster's JetStream answers once it has elected a leader
            await wait_for_jetstream(nc.jetstream(), timeout_s=JETSTREAM_READY_S)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from exc
        await ensure_state(
            nc.jetstream(),
            node_ttl_s=config.federator.node_ttl_s,
            ack_wait_s=config.writeback.ack_wait_s,
            replicas=config.nats.replicas,
        )
    finally:
        await nc.close()
