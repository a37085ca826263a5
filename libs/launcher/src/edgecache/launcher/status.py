"""``edgecache status``: what the cluster's NATS says about it, the live cache nodes (KV
``nodes``) and the write-back backlog (stream ``WRITEBACK``)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec

from edgecache.common import subjects, wire
from edgecache.common.backlog import (
    MAX_FAILING_SHOWN,
    Backlog,
    FailingIntent,
    PartitionBacklog,
    read_backlog,
)
from edgecache.common.config import ConfigError, NatsConfig, load_config
from edgecache.launcher.connection import connect
from edgecache.launcher.credentials import load_nats_identity
from edgecache.launcher.datadir import CONFIG_FILE
from edgecache.launcher.endpoints import ServiceEndpoints, service_endpoints
from edgecache.launcher.natsauth import ADMIN

__all__ = [
    "MAX_FAILING_SHOWN",
    "Backlog",
    "ClusterStatus",
    "FailingIntent",
    "NodeStatus",
    "PartitionBacklog",
    "endpoints_for",
    "nats_config_for",
    "read_status",
]


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One live cache node, as ``status --json`` prints it (times in s)."""

    node_id: str
    host: str
    started: float
    uptime_s: float
    last_seen_s: float
    stats: wire.NodeStats


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    nodes: list[NodeStatus]
    writeback: Backlog
    # each service's metrics and health URLs, from the config (see endpoints_for)
    services: list[ServiceEndpoints] = []
    # every federated site's last heartbeat, from the hub federator (empty: a lone site, or
    # the hub is unreachable)
    sites: list[wire.SiteHeartbeat] = []


async def read_status(target: str | NatsConfig, *, timeout_s: float = 5.0) -> ClusterStatus:
    """Read KV ``nodes`` and the ``WRITEBACK`` stream's state from NATS: ``target`` is its
    URL, or a ``NatsConfig`` (URL and identity).

    Raises:
        click.ClickException: NATS is unreachable, or it holds no edgecache state.
    """
    from nats.js.errors import NotFoundError  # heavy: see edgecache.launcher.connection

    from edgecache.common.sitestatus import ask_sites  # nats-py too

    url = target if isinstance(target, str) else target.url
    nc = await connect(target, timeout_s)
    try:
        js = nc.jetstream(timeout=timeout_s)
        try:
            kv = await js.key_value(subjects.KV_NODES)
            await js.stream_info(subjects.WRITEBACK_STREAM)  # is the state there at all?
        except NotFoundError:
            raise click.ClickException(
                f"NATS at {url} has no edgecache state yet (no KV {subjects.KV_NODES!r} "
                f"or stream {subjects.WRITEBACK_STREAM!r}): is edgecache running there?"
            ) from None
        now = time.time()
        nodes: list[NodeStatus] = []
        watcher = await kv.watchall(ignore_deletes=True)
        async for entry in watcher:
            if entry is None:  # the initial values are all delivered
                break
            try:
                beat = wire.decode(entry.value, wire.Heartbeat)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            nodes.append(
                NodeStatus(
                    node_id=beat.node_id,
                    host=beat.host,
                    started=beat.started,
                    uptime_s=max(0.0, now - beat.started),
                    last_seen_s=max(0.0, now - beat.at_ns / 1e9),
                    stats=beat.stats,
                )
            )
        await watcher.stop()
        backlog = await read_backlog(js)
        sites = (await ask_sites(nc, timeout_s=min(timeout_s, 2.0))).sites
    finally:
        await nc.close()
    return ClusterStatus(
        nats_url=url, nodes=sorted(nodes, key=lambda n: n.node_id), writeback=backlog, sites=sites
    )


def _config_path(config_file: str | None, data_dir: str) -> str | None:
    """The config ``status`` reads: ``--config``, else the one ``up`` wrote in the data dir."""
    written = Path(data_dir) / CONFIG_FILE
    return config_file or (str(written) if written.exists() else None)


def endpoints_for(config_file: str | None, data_dir: str) -> list[ServiceEndpoints]:
    """Every service's metrics and health URLs, from the config ``status`` reads (the one
    ``up`` wrote in ``data_dir`` holds the ports it picked).

    Raises:
        click.ClickException: the config file is invalid.
    """
    try:
        return service_endpoints(load_config(_config_path(config_file, data_dir)))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def nats_config_for(nats_url: str | None, config_file: str | None, data_dir: str) -> NatsConfig:
    """Where ``status`` connects, and as whom.

    The URL: ``--nats-url``, else the config file's, else the one ``up`` wrote in the data
    dir, else the default (env included). The identity: the config's ``nats.user`` (file or
    ``EDGECACHE_NATS__*``), else, for the private nats-server of the ``up`` in
    ``data_dir``, its ``admin`` identity from ``nats-credentials.toml``.

    Raises:
        click.ClickException: a config file or credentials file is invalid.
    """
    written = Path(data_dir) / CONFIG_FILE
    path = config_file or (str(written) if written.exists() else None)
    try:
        nats = load_config(path).nats
        private_url = load_config(written, env={}).nats.url if written.exists() else None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if nats_url:
        nats = msgspec.structs.replace(nats, url=nats_url)
    if not nats.user and nats.url == private_url:
        admin = load_nats_identity(Path(data_dir), ADMIN)
        if admin is not None:  # only ever sent to the server it belongs to
            nats = admin.apply(nats)
    return nats
