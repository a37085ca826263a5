"""The ``edgecache`` command line: ``up`` (the whole stack on one machine), one service in
the foreground, ``status``, and ``warm`` / ``purge`` (through the admin API).

This module holds the click commands and their flags only; the work is done by
:mod:`~edgecache.launcher.up` and :mod:`~edgecache.launcher.status`. Flags fall back to
environment variables (``EDGECACHE_DATA_DIR``, ``EDGECACHE_PORT``, …); the services
themselves get exactly one source of config: the TOML file ``up`` writes for each, the
resolved ``<data-dir>/edgecache.toml`` with the service's own NATS identity
(``<data-dir>/services/<service>.toml``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Literal, NoReturn

import click
import msgspec

from edgecache.common.config import NatsConfig
from edgecache.launcher import adminclient, configfile, hub, status, up
from edgecache.launcher.datadir import lock_data_dir
from edgecache.launcher.render import render_status
from edgecache.launcher.sitekey import load_or_create_site_key

__all__ = ["SERVICES", "main"]

SERVICES: tuple[str, ...] = ("gateway", "cachenode", "writeback", "federator")


_stop_timeout = click.option(
    "--stop-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds each child gets to stop after SIGTERM before SIGKILL.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecache-launcher", prog_name="edgecache")
def main() -> None:
    """edgecache: an S3-compatible edge cache and write-back object store over NATS."""


def _service_command(name: str) -> click.Command:
    @click.command(name=name, help=f"Run the {name} service in the foreground.")
    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="TOML config file (default: $EDGECACHE_CONFIG, else defaults + env).",
    )
    def command(config_file: str | None) -> NoReturn:
        argv = [sys.executable, "-m", f"edgecache.{name}"]
        if config_file:
            argv += ["--config", config_file]
        os.execv(sys.executable, argv)  # noqa: S606 - replaces this process on purpose

    return command


for _name in SERVICES:
    main.add_command(_service_command(_name))


@main.command("up")
@click.option(
    "--data-dir",
    envvar="EDGECACHE_DATA_DIR",
    type=click.Path(file_okay=False),
    help="State, origin (file) and logs.  [env: EDGECACHE_DATA_DIR; default: ./.edgecache]",
)
@click.option(
    "--port",
    envvar="EDGECACHE_PORT",
    type=click.IntRange(1, 65535),
    help="Gateway HTTP port.  [env: EDGECACHE_PORT; default: 9000]",
)
@click.option(
    "--nats-url",
    envvar="EDGECACHE_NATS_URL",
    help="Use this NATS (with JetStream) instead of starting a private nats-server."
    "  [env: EDGECACHE_NATS_URL]",
)
@click.option(
    "--nats-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the private nats-server; 0 picks a free one.",
)
@click.option(
    "--nats-cluster",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Run the private NATS as a cluster of this many nats-servers (3: any one may be"
    " lost), with every stream and KV bucket replicated on each (nats.replicas).",
)
@click.option(
    "--cachenodes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Cache node processes, each with its own chunk store (<data-dir>/cachenode-<i>).",
)
@click.option(
    "--origin",
    envvar="EDGECACHE_ORIGIN",
    type=click.Choice(["file", "s3", "azure"]),
    help="Where objects live durably.  [env: EDGECACHE_ORIGIN; default: file]",
)
@click.option(
    "--origin-endpoint-url",
    envvar="EDGECACHE_ORIGIN_ENDPOINT_URL",
    help="S3-compatible origin endpoint.  [env: EDGECACHE_ORIGIN_ENDPOINT_URL]",
)
@click.option(
    "--origin-path",
    envvar="EDGECACHE_ORIGIN_PATH",
    type=click.Path(file_okay=False),
    help="File origin directory.  [env: EDGECACHE_ORIGIN_PATH; default: <data-dir>/origin]",
)
@click.option(
    "--config",
    "config_file",
    envvar="EDGECACHE_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML config; flags and env override it.  [env: EDGECACHE_CONFIG]",
)
@click.option(
    "--admin-port",
    envvar="EDGECACHE_ADMIN_PORT",
    type=click.IntRange(0, 65535),
    help="Admin API port (served by the federator); 0 turns it off."
    "  [env: EDGECACHE_ADMIN_PORT; default: 14000]",
)
@click.option(
    "--tls-port",
    type=click.IntRange(1, 65535),
    help="Gateway HTTPS port, served when a certificate is given.  [default: 9001]",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="The gateway's certificate chain (PEM) for HTTPS; with --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True),
    help="The private key (PEM) of --tls-cert.",
)
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve HTTPS with a certificate of a private CA made in <data-dir>/tls/ (kept across"
    " runs); clients trust it with AWS_CA_BUNDLE=<data-dir>/tls/ca.pem.",
)
@click.option(
    "--ready-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the gateway to answer HTTP before giving up.",
)
@_stop_timeout
@click.option(
    "--site",
    envvar="EDGECACHE_FEDERATION__SITE",
    help="Run as the federated site NAME (its JetStream domain), joined to --hub-url"
    " (docs/operations.md, \"Two sites and a hub\").  [env: EDGECACHE_FEDERATION__SITE]",
)
@click.option(
    "--hub-url",
    envvar="EDGECACHE_FEDERATION__HUB_URL",
    help="The hub's leaf node URL, nats-leaf://HOST:7422.  [env: EDGECACHE_FEDERATION__HUB_URL]",
)
def up_command(
    data_dir: str | None,
    port: int | None,
    nats_url: str | None,
    nats_port: int,
    nats_cluster: int,
    cachenodes: int,
    origin: str | None,
    origin_endpoint_url: str | None,
    origin_path: str | None,
    config_file: str | None,
    admin_port: int | None,
    tls_port: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_self_signed: bool,
    ready_timeout: float,
    stop_timeout: float,
    site: str | None = None,
    hub_url: str | None = None,
) -> None:
    """Run the whole stack on this machine: nats-server, federator, writeback, one cache
    node and the gateway, each a child process, restarted if it dies. --nats-cluster 3
    runs three clustered nats-servers with replicated state instead, --cachenodes N that
    many cache nodes (docs/operations.md, "Running a 3-server site").

    Credentials come from EDGECACHE_ACCESS_KEY / EDGECACHE_SECRET_KEY, else from
    <data-dir>/credentials (generated on first run, mode 0600). The private nats-server
    admits only the NATS identities in <data-dir>/nats-credentials.toml (one per service,
    `platform` for other platform services, `admin`; generated on first run, mode 0600),
    each with least-privilege permissions, and fsyncs JetStream writes before acknowledging
    them. The resolved config is written to <data-dir>/edgecache.toml, and to
    <data-dir>/services/<service>.toml with each service's identity; their logs go to
    <data-dir>/logs/. Prints "edgecache is up: endpoint=URL nats=URL" when the gateway
    answers. Ctrl-C or SIGTERM stops everything (gateway first, nats-server last).

    The federator serves the admin API and the status page on --admin-port (default
    14000, on 127.0.0.1) with the bearer token in <data-dir>/admin-token (generated on
    first run, mode 0600); `edgecache warm` and `edgecache purge` use it.
    """
    overrides = {
        "data_dir": data_dir,
        "gateway": {
            "port": port,
            "tls_port": tls_port,
            "tls_cert_file": str(Path(tls_cert).resolve()) if tls_cert else None,
            "tls_key_file": str(Path(tls_key).resolve()) if tls_key else None,
        },
        "nats": {"url": nats_url},
        "origin": {"kind": origin, "endpoint_url": origin_endpoint_url, "path": origin_path},
        "admin": {"port": admin_port},
        "federation": {"site": site, "hub_url": hub_url},
    }
    config = configfile.resolve(config_file, overrides)
    root = Path(config.data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # a private nats-server unless a NATS URL was given (flag, env or config file)
    external_nats = bool(nats_url) or config.nats.url != NatsConfig().url
    if external_nats and nats_cluster > 1:
        raise click.UsageError("--nats-cluster starts private nats-servers: not with a NATS URL")
    with lock_data_dir(root):
        code = up.run(
            config,
            root,
            external_nats=external_nats,
            nats_port=nats_port,
            nats_cluster=nats_cluster,
            cachenodes=cachenodes,
            ready_timeout_s=ready_timeout,
            stop_timeout_s=stop_timeout,
            tls_self_signed=tls_self_signed,
        )
    raise SystemExit(code)


@main.command("status")
@click.option(
    "--nats-url",
    envvar="EDGECACHE_NATS_URL",
    help="NATS to read.  [env: EDGECACHE_NATS_URL; default: the one `up` wrote in "
    "<data-dir>/edgecache.toml, else nats://127.0.0.1:4222]",
)
@click.option(
    "--data-dir",
    envvar="EDGECACHE_DATA_DIR",
    default=".edgecache",
    type=click.Path(file_okay=False),
    help="Where `up` runs.  [env: EDGECACHE_DATA_DIR]",
)
@click.option(
    "--config",
    "config_file",
    envvar="EDGECACHE_CONFIG",
    type=click.Path(dir_okay=False),
    help="Take the NATS URL from this TOML config.  [env: EDGECACHE_CONFIG]",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds for NATS to answer."
)
def status_command(
    nats_url: str | None, data_dir: str, config_file: str | None, as_json: bool, timeout: float
) -> None:
    """Show the live cache nodes (KV nodes), the write-back backlog, and each service's
    metrics and health URLs (from the config).

    Connects as the config's nats.user (--config, EDGECACHE_NATS__USER/__PASSWORD), else,
    for the private nats-server of the `up` in --data-dir, as its `admin` identity.
    Exits 1 with a message on stderr when NATS is unreachable or holds no edgecache state.
    """
    nats = status.nats_config_for(nats_url, config_file, data_dir)
    result = asyncio.run(status.read_status(nats, timeout_s=timeout))
    result = msgspec.structs.replace(result, services=status.endpoints_for(config_file, data_dir))
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(render_status(result))


def _job_command(kind: Literal["purge", "warm"], summary: str) -> click.Command:
    @click.command(name=kind, help=summary)
    @click.argument("url", metavar="s3://BUCKET/PREFIX")
    @click.option(
        "--exact",
        is_flag=True,
        help="Only the object named BUCKET/PREFIX (no listing), not every key under it.",
    )
    @click.option(
        "--data-dir",
        envvar="EDGECACHE_DATA_DIR",
        default=".edgecache",
        type=click.Path(file_okay=False),
        help="Where `up` runs (its config and admin-token).  [env: EDGECACHE_DATA_DIR]",
    )
    @click.option(
        "--admin-url",
        envvar="EDGECACHE_ADMIN_URL",
        help="The admin API.  [env: EDGECACHE_ADMIN_URL; default: from <data-dir>/edgecache.toml]",
    )
    @click.option(
        "--token",
        envvar="EDGECACHE_ADMIN_TOKEN",
        help="Its bearer token.  [env: EDGECACHE_ADMIN_TOKEN; default: <data-dir>/admin-token]",
    )
    def command(
        url: str, exact: bool, data_dir: str, admin_url: str | None, token: str | None
    ) -> None:
        target = adminclient.parse_s3_url(url)
        base_url, secret = adminclient.admin_endpoint(admin_url, token, data_dir)
        job = adminclient.run_job(kind, target, base_url, secret, key=exact)
        raise SystemExit(0 if job["state"] == "done" and not job["failed"] else 1)

    return command


main.add_command(
    _job_command(
        "purge",
        "Drop the cached copies of every object under s3://BUCKET/PREFIX (cache nodes and "
        "gateway memory tiers), so the next GET fills from the origin. Objects not yet "
        "written back are kept and reported as skipped. Exits 1 if any object failed.",
    )
)
main.add_command(
    _job_command(
        "warm",
        "Fill every object under s3://BUCKET/PREFIX (listed at the origin) into the cache, "
        "so the next GETs are hits. Exits 1 if any object failed.",
    )
)


@main.command("hub")
@click.option(
    "--data-dir",
    envvar="EDGECACHE_HUB_DATA_DIR",
    type=click.Path(file_okay=False),
    default="./.edgecache-hub",
    show_default=True,
    help="The hub's identities, admitted sites, NATS store and logs.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (clients and leaf nodes).")
@click.option("--port", type=click.IntRange(0, 65535), default=7222, show_default=True, help="NATS client port.")
@click.option(
    "--leaf-port",
    type=click.IntRange(0, 65535),
    default=7422,
    show_default=True,
    help="Leaf node port: the sites' --hub-url is nats-leaf://HOST:PORT.",
)
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="NAME=KEY",
    help="Admit site NAME with its nkey public key KEY (printed by `edgecache up --site NAME`,"
    " and in <site data-dir>/federation/site.pub); kept in <data-dir>/federation/sites.json."
    " Repeatable.",
)
@_stop_timeout
def hub_command(data_dir: str, host: str, port: int, leaf_port: int, sites: tuple[str, ...], stop_timeout: float) -> None:
    """Run the hub of a federation of sites: a nats-server with JetStream domain `hub` and a
    leaf node listener that admits each site by its nkey, and the hub federator (site
    membership, the FEDERATION stream that sources every site's change log). Sites join
    with `edgecache up --site NAME --hub-url nats-leaf://HOST:LEAF_PORT`
    (docs/operations.md, "Two sites and a hub")."""
    root = Path(data_dir).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    added = hub.parse_site_keys(sites)
    with lock_data_dir(root):
        the_plan = hub.plan_hub(root, port=port, leaf_port=leaf_port, host=host, sites=added)
        code = hub.run_hub(the_plan, root, stop_timeout_s=stop_timeout)
    raise SystemExit(code)


@main.command("site-key")
@click.option(
    "--data-dir",
    envvar="EDGECACHE_DATA_DIR",
    type=click.Path(file_okay=False),
    default="./.edgecache",
    show_default=True,
    help="The site's data dir (the one its `edgecache up --site` uses).",
)
def site_key_command(data_dir: str) -> None:
    """Print this site's nkey public key (made in <data-dir>/federation/site.nk on first use),
    for the hub's `edgecache hub --site NAME=KEY`."""
    root = Path(data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, _created = load_or_create_site_key(root)
    click.echo(key.public)
