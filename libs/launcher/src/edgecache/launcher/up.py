"""``edgecache up``: the whole stack on this machine, each service a supervised child.

:func:`plan` settles what will run (credentials, ports, the private nats-server with one
NATS identity per service, the effective ``edgecache.toml`` and each service's copy of it);
:func:`run` starts it, prints the banner when the gateway answers, supervises until a
signal and stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec

from edgecache.common.config import AdminConfig, Config, NatsConfig
from edgecache.launcher.admintoken import load_or_create_admin_token
from edgecache.launcher.configfile import write_config
from edgecache.launcher.connection import prepare_state
from edgecache.launcher.credentials import (
    load_or_create_credentials,
    load_or_create_nats_identities,
)
from edgecache.launcher.datadir import CONFIG_FILE, LOGS_DIR, NATS_DIR, SERVICES_DIR
from edgecache.launcher.endpoints import pick_metrics_ports
from edgecache.launcher.leafnodes import site_nats_options
from edgecache.launcher.natsauth import ADMIN, IDENTITIES, SERVICE_IDENTITIES, authorization_block
from edgecache.launcher.natscluster import NatsCluster
from edgecache.launcher.natsserver import NatsServer, find_binary, free_port
from edgecache.launcher.nodekeys import load_or_create_node_keys, node_key_file
from edgecache.launcher.ports import http_answers, port_in_use, wait_tcp
from edgecache.launcher.render import render_banner
from edgecache.launcher.sitekey import SiteKey
from edgecache.launcher.supervisor import ChildSpec, FatalExit, Supervisor, tail
from edgecache.launcher.tlscert import default_names, ensure_self_signed

__all__ = [
    "NATS_CHILD",
    "SECOND_SIGNAL_AFTER_S",
    "SYNC_INTERVAL",
    "UP_ORDER",
    "Endpoint",
    "Plan",
    "child_env",
    "plan",
    "run",
]

# `up` starts them in this order after nats-server and stops them in reverse: the gateway
# first (no new requests), then the cache node, writeback, federator, nats-server last.
UP_ORDER: tuple[str, ...] = ("federator", "writeback", "cachenode", "gateway")
NATS_CHILD = "nats-server"
# what makes an acknowledged write survive a power loss: JetStream fsyncs each write before
# it acknowledges it (the server's default is every 2 minutes)
SYNC_INTERVAL = "always"
SECOND_SIGNAL_AFTER_S = 1.0  # a signal this soon after the first is the same Ctrl-C


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the gateway is probed (a wildcard listen address becomes loopback)."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``up`` will run: the final config (written to ``config_path``; each service reads
    its copy with its own NATS identity) and the children."""

    config: Config
    config_path: Path
    specs: list[ChildSpec]
    endpoint: Endpoint
    nats: NatsServer | None  # the private nats-server, if any
    new_credentials: bool
    admin: NatsConfig  # how `up` itself connects, to create the JetStream state
    admin_url: str = ""  # the admin API (served by the federator), "" when it is off
    tls_endpoint: Endpoint | None = None  # the gateway's HTTPS endpoint, if it serves one
    ca_file: Path | None = None  # the CA of a self-signed certificate (for AWS_CA_BUNDLE)
    #: every private nats-server with its child's name (one, or a cluster's; ``nats`` is
    #: the first)
    nats_children: tuple[tuple[str, NatsServer], ...] = ()
    #: a federated site's nkey public key (for the hub's config), "" otherwise
    site_public_key: str = ""


def child_env() -> dict[str, str]:
    """The services' environment: ours without ``EDGECACHE_*`` (the config file is their
    only source of config, so they see exactly what ``up`` resolved)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def plan(
    config: Config,
    root: Path,
    *,
    external_nats: bool,
    nats_port: int,
    tls_self_signed: bool = False,
    nats_cluster: int = 1,
    cachenodes: int = 1,
) -> Plan:
    """Settle credentials, ports and the private nats-server; write ``edgecache.toml`` and
    ``services/<service>.toml``. Every service whose ``metrics_port`` is 0 gets a free one
    (:func:`~edgecache.launcher.endpoints.pick_metrics_ports`).

    ``nats_cluster`` > 1: the private NATS is a cluster of that many servers
    (:class:`~edgecache.launcher.natscluster.NatsCluster`, children ``nats-server-<i>``,
    store dirs ``<data-dir>/nats/nats-<i>``), ``nats.url`` lists them all and
    ``nats.replicas`` is the cluster's size. ``cachenodes`` > 1: that many cache node
    processes (see :func:`cachenode_configs`).

    The private nats-server admits only the identities of
    :data:`~edgecache.launcher.natsauth.IDENTITIES` (passwords in
    ``nats-credentials.toml``) and each cache node's own nkey
    (:mod:`~edgecache.launcher.nodekeys`: node *i*'s file names its seed,
    ``nats.nkey_seed_file``, and no password), and fsyncs JetStream writes before
    acknowledging them. Each service's file names its own identity. With an external NATS every service, and ``up``,
    connect as the config's ``nats.user`` (if any).

    HTTPS: with ``tls_self_signed`` the gateway's certificate is made (or kept) under
    ``<data-dir>/tls/`` (:mod:`~edgecache.launcher.tlscert`); else with
    ``gateway.tls_cert_file`` and ``tls_key_file`` as given; else none.

    Raises:
        click.ClickException: half the credentials given, half the TLS files given, or a
            gateway port taken.
    """
    gw = config.gateway
    if bool(gw.access_key) != bool(gw.secret_key):
        raise click.ClickException(
            "set both EDGECACHE_ACCESS_KEY and EDGECACHE_SECRET_KEY, or neither"
        )
    created = False
    if not gw.access_key:
        access, secret, created = load_or_create_credentials(root)
        gw = msgspec.structs.replace(gw, access_key=access, secret_key=secret)
    if port_in_use(gw.host or "0.0.0.0", gw.port):
        raise click.ClickException(
            f"port {gw.port} is in use: pick another with --port or EDGECACHE_PORT"
        )
    ca_file = None
    if tls_self_signed:
        made = ensure_self_signed(root, default_names(gw.host))
        ca_file = made.ca_file
        gw = msgspec.structs.replace(
            gw,
            tls_cert_file=str(made.cert_file.resolve()),
            tls_key_file=str(made.key_file.resolve()),
        )
    if bool(gw.tls_cert_file) != bool(gw.tls_key_file):
        raise click.ClickException("give both --tls-cert and --tls-key, or --tls-self-signed")
    if gw.tls_cert_file and port_in_use(gw.host or "0.0.0.0", gw.tls_port):
        raise click.ClickException(f"port {gw.tls_port} is in use: pick another with --tls-port")
    config = pick_metrics_ports(msgspec.structs.replace(config, gateway=gw), cachenodes=cachenodes)
    admin_config = _admin_config(config, root)

    logs = root / LOGS_DIR
    specs: list[ChildSpec] = []
    nats_server = None
    identity_of = {name: config.nats for name in UP_ORDER}
    admin = config.nats
    nats_children: list[tuple[str, NatsServer]] = []
    site_key = None
    node_keys: dict[str, SiteKey] = {}  # cache node child name -> its own nkey
    if not external_nats:
        identities = load_or_create_nats_identities(root, IDENTITIES, site=config.federation.site)
        passwords = {n: i.password for n, i in identities.items()}
        node_keys = load_or_create_node_keys(root, cachenode_names(cachenodes))
        options = {
            "authorization": authorization_block(
                passwords,
                site=config.federation.site,
                nkeys={SERVICE_IDENTITIES["cachenode"]: [k.public for k in node_keys.values()]},
            ),
            "sync_interval": SYNC_INTERVAL,
        }
        if config.federation.site:  # a federated site: its domain and the leaf remote
            site_options, site_key = site_nats_options(config, root, nats_cluster=nats_cluster)
            options.update(site_options)
        if nats_cluster > 1:
            ports = (
                (nats_port, *(free_port() for _ in range(nats_cluster - 1))) if nats_port else ()
            )
            cluster = NatsCluster(root / NATS_DIR, nats_cluster, ports=ports, **options)
            nats_children = [(f"{NATS_CHILD}-{i + 1}", s) for i, s in enumerate(cluster.servers)]
            url, replicas = cluster.url, nats_cluster
        else:
            nats_children = [(NATS_CHILD, NatsServer(root / NATS_DIR, port=nats_port, **options))]
            url, replicas = nats_children[0][1].url, config.nats.replicas
        for child, server in nats_children:
            argv = [find_binary(), "-c", str(server.write_config())]
            specs.append(ChildSpec(child, argv, logs / f"{child}.log"))
        nats_server = nats_children[0][1]
        # the shared file names no identity: each service's copy names its own
        nats = msgspec.structs.replace(
            config.nats,
            url=url,
            user="",
            password="",
            inbox_prefix=NatsConfig().inbox_prefix,
            replicas=replicas,
        )
        config = msgspec.structs.replace(config, nats=nats)
        identity_of = {n: identities[SERVICE_IDENTITIES[n]].apply(nats) for n in UP_ORDER}
        admin = identities[ADMIN].apply(nats)
    if config.origin.kind == "file":
        config.origin_path().mkdir(parents=True, exist_ok=True)
    config_path = root / CONFIG_FILE
    write_config(config, config_path)
    (root / SERVICES_DIR).mkdir(mode=0o700, exist_ok=True)
    env = child_env()
    for name in UP_ORDER:
        own = msgspec.structs.replace(config, nats=identity_of[name])
        if name == "federator":  # the admin API's token goes to the federator only
            own = msgspec.structs.replace(own, admin=admin_config)
        processes = cachenode_configs(own, cachenodes) if name == "cachenode" else [(name, own)]
        for child, child_config in processes:
            if child in node_keys:  # the node logs in with its own nkey, not the password
                seed_file = str(node_key_file(root, child).resolve())
                nats = msgspec.structs.replace(
                    child_config.nats, user="", password="", nkey_seed_file=seed_file
                )
                child_config = msgspec.structs.replace(child_config, nats=nats)
            service_path = root / SERVICES_DIR / f"{child}.toml"
            write_config(child_config, service_path)
            argv = [sys.executable, "-m", f"edgecache.{name}", "--config", str(service_path)]
            specs.append(ChildSpec(child, argv, logs / f"{child}.log", env))
    probe_host = "127.0.0.1" if gw.host in ("", "0.0.0.0", "::") else gw.host
    endpoint = Endpoint(probe_host, gw.port)
    admin_url = ""
    if admin_config.port:
        admin_host = (
            "127.0.0.1" if admin_config.host in ("", "0.0.0.0", "::") else admin_config.host
        )
        admin_url = f"http://{admin_host}:{admin_config.port}"
    tls_endpoint = Endpoint(probe_host, gw.tls_port, "https") if gw.tls_cert_file else None
    return Plan(
        config,
        config_path,
        specs,
        endpoint,
        nats_server,
        created,
        admin,
        admin_url,
        tls_endpoint,
        ca_file,
        tuple(nats_children),
        site_key.public if site_key is not None else "",
    )


def cachenode_names(count: int) -> list[str]:
    """The child names of ``count`` cache node processes: ``cachenode``, ``cachenode-2``, …"""
    return ["cachenode", *(f"cachenode-{i}" for i in range(2, count + 1))]


def cachenode_configs(config: Config, count: int) -> list[tuple[str, Config]]:
    """The child name and config of each of ``count`` cache node processes on this host.

    The first is ``cachenode`` with ``config`` as it is (chunk store ``cachenode.data_dir``,
    default ``<data-dir>/cachenode``: a one-node data dir keeps its chunks). Node ``i`` > 1
    is ``cachenode-<i>`` with its own chunk store ``<data-dir>/cachenode-<i>`` (its node id,
    when not configured, derives from it; a configured one gets ``-<i>``) and metrics port
    ``metrics_port + i - 1`` (0 stays 0: none).
    """
    nodes = [("cachenode", config)]
    base = config.cachenode
    for i, child in enumerate(cachenode_names(count)[1:], start=2):
        section = msgspec.structs.replace(
            base,
            data_dir=str(Path(config.data_dir) / f"cachenode-{i}"),
            node_id=f"{base.node_id}-{i}" if base.node_id else "",
            metrics_port=base.metrics_port + i - 1 if base.metrics_port else 0,
        )
        nodes.append((child, msgspec.structs.replace(config, cachenode=section)))
    return nodes


def run(
    config: Config,
    root: Path,
    *,
    external_nats: bool,
    nats_port: int,
    ready_timeout_s: float,
    stop_timeout_s: float,
    tls_self_signed: bool = False,
    nats_cluster: int = 1,
    cachenodes: int = 1,
) -> int:
    """``edgecache up`` once the config is resolved and the data dir locked: start the
    children, print the banner when the gateway answers, supervise until a signal, stop.

    Returns:
        The exit code: 0 after a signal, 1 when the stack could not start.

    Raises:
        click.ClickException: see :func:`plan`; NATS unreachable.
    """
    the_plan = plan(
        config,
        root,
        external_nats=external_nats,
        nats_port=nats_port,
        tls_self_signed=tls_self_signed,
        nats_cluster=nats_cluster,
        cachenodes=cachenodes,
    )
    logs = root / LOGS_DIR
    supervisor = Supervisor(the_plan.specs)
    stops = 0
    first_stop_at = 0.0

    def on_signal(signum: int, frame: object) -> None:
        # One Ctrl-C under `make up` arrives twice at once (from the terminal to the whole
        # foreground group, and forwarded by `uv run`): only a second press counts.
        nonlocal stops, first_stop_at
        now = time.monotonic()
        if not stops:
            stops, first_stop_at = 1, now
        elif now - first_stop_at >= SECOND_SIGNAL_AFTER_S:
            stops += 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def say(line: str) -> None:
        click.echo(f"edgecache: {line}", err=True)

    try:
        for child, server in the_plan.nats_children:
            supervisor.start(child)

            def nats_alive(child: str = child) -> bool:
                return supervisor.pid(child) is not None and not stops

            if not wait_tcp(server.host, server.port, 10.0, nats_alive):
                say(f"{child} did not start:\n{tail(logs / f'{child}.log')}")
                return 1
        asyncio.run(prepare_state(msgspec.structs.replace(the_plan.config, nats=the_plan.admin)))
        supervisor.start_all()
        deadline = time.monotonic() + ready_timeout_s
        ready = False
        endpoint, tls = the_plan.endpoint, the_plan.tls_endpoint

        def answers() -> bool:
            http = http_answers(endpoint.host, endpoint.port)
            return http and (tls is None or port_in_use(tls.host, tls.port))

        while not stops:
            supervisor.poll()
            if not ready and answers():
                ready = True
                click.echo(
                    render_banner(
                        the_plan.config,
                        endpoint.url,
                        root,
                        the_plan.new_credentials,
                        nats_users=the_plan.nats is not None,
                        admin_url=the_plan.admin_url,
                        tls_url=tls.url if tls is not None else None,
                        ca_file=the_plan.ca_file,
                    )
                )
                if the_plan.site_public_key:
                    say(
                        f"site {the_plan.config.federation.site!r} joins the hub at "
                        f"{the_plan.config.federation.hub_url} with nkey "
                        f"{the_plan.site_public_key} (the hub needs: edgecache hub --site "
                        f"{the_plan.config.federation.site}={the_plan.site_public_key})"
                    )
                sys.stdout.flush()
            elif not ready and time.monotonic() > deadline:
                gateway_log = logs / "gateway.log"
                say(
                    f"the gateway did not answer on {endpoint.url} within "
                    f"{ready_timeout_s:.0f}s; see {gateway_log}:\n{tail(gateway_log)}"
                )
                return 1
            time.sleep(0.1)
        return 0
    except FatalExit as exc:
        say(f"{exc}; see {logs}:\n{exc.log_tail}")
        return 1
    finally:
        if stops:
            say("stopping (Ctrl-C again to kill)")
        supervisor.stop(timeout_s=stop_timeout_s, force=lambda: stops > 1)
        say("stopped")


def _admin_config(config: Config, root: Path) -> AdminConfig:
    """The federator's ``[admin]`` section: the configured one, with the token from
    ``<data-dir>/admin-token`` (generated on first use) unless the config sets one.

    Raises:
        click.ClickException: the admin port is in use.
    """
    admin = config.admin
    if not admin.port:
        return admin
    if port_in_use(admin.host or "0.0.0.0", admin.port):
        raise click.ClickException(
            f"admin port {admin.port} is in use: pick another with --admin-port or "
            "EDGECACHE_ADMIN_PORT (0 turns the admin API off)"
        )
    return msgspec.structs.replace(admin, token=admin.token or load_or_create_admin_token(root))
