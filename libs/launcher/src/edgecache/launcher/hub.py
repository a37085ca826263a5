"""``edgecache hub``: the hub of a federation of sites on this machine, each part a supervised
child: a nats-server (JetStream domain ``hub``, a leaf node listener that admits the sites
by nkey, :mod:`edgecache.launcher.leafnodes`) and the hub federator
(``federator.role = "hub"``: site membership, the hub's ``FEDERATION`` stream).

Layout of the hub's ``<data-dir>``::

    nats-credentials.toml   the hub identities' passwords (federator, admin; mode 0600)
    federation/sites.json   each site's name and nkey public key (``--site NAME=KEY``, kept)
    nats/                   the nats-server's config and JetStream store
    services/federator.toml the hub federator's config
    logs/<child>.log        each child's output
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec

from edgecache.common.config import Config, NatsConfig
from edgecache.launcher.configfile import write_config
from edgecache.launcher.credentials import load_or_create_nats_identities
from edgecache.launcher.datadir import LOGS_DIR, NATS_DIR, SERVICES_DIR, write_private
from edgecache.launcher.hubauth import HUB_IDENTITIES
from edgecache.launcher.leafnodes import DEFAULT_LEAF_PORT, check_site_name, hub_server
from edgecache.launcher.natsauth import ADMIN
from edgecache.launcher.natsserver import NatsServer, find_binary
from edgecache.launcher.ports import wait_tcp
from edgecache.launcher.sitekey import FEDERATION_DIR
from edgecache.launcher.supervisor import ChildSpec, FatalExit, Supervisor, tail
from edgecache.launcher.up import NATS_CHILD, child_env

__all__ = ["HUB_READY_PREFIX", "HubPlan", "parse_site_keys", "plan_hub", "run_hub"]

HUB_READY_PREFIX = "edgecache hub is up:"  # "<prefix> nats=URL leaf=URL sites=a,b"
SITES_FILE = "sites.json"
FEDERATOR_CHILD = "federator"


def parse_site_keys(values: tuple[str, ...]) -> dict[str, str]:
    """``("a=UABC…", …)`` → ``{"a": "UABC…"}``.

    Raises:
        click.BadParameter: not ``NAME=KEY``, a bad site name, or not a user public nkey.
    """
    out = {}
    for value in values:
        site, sep, key = value.partition("=")
        if not sep or not key.startswith("U") or len(key) != 56:
            raise click.BadParameter(
                f"{value!r}: give NAME=KEY, KEY the site's public nkey (U…, 56 characters)"
            )
        out[check_site_name(site)] = key
    return out


def _site_keys(root: Path, added: dict[str, str]) -> dict[str, str]:
    """The sites the hub admits: ``<root>/federation/sites.json`` with ``added`` merged in
    (and saved)."""
    path = root / FEDERATION_DIR / SITES_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    merged = {**known, **added}
    if merged != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


@dataclass(frozen=True, slots=True)
class HubPlan:
    """What ``edgecache hub`` runs."""

    server: NatsServer
    specs: list[ChildSpec]
    sites: dict[str, str]  # name → public nkey
    admin: NatsConfig  # the operator's identity on the hub (edgecache status --nats-url)

    @property
    def leaf_url(self) -> str:
        return f"nats-leaf://{self.server.host}:{self.server.leaf_port}"


def plan_hub(root: Path, *, port: int, leaf_port: int, host: str, sites: dict[str, str]) -> HubPlan:
    """Settle the hub's identities, admitted sites and ports; write the nats-server's and the
    federator's configs under ``root`` (created)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    identities = load_or_create_nats_identities(root, HUB_IDENTITIES)
    site_keys = _site_keys(root, sites)
    server = hub_server(
        root / NATS_DIR,
        site_keys=site_keys,
        passwords={n: i.password for n, i in identities.items()},
        port=port,
        leaf_port=leaf_port or DEFAULT_LEAF_PORT,
    )
    server.host = host
    logs = root / LOGS_DIR
    nats = NatsConfig(url=server.url)
    federator = msgspec.convert(
        {"data_dir": str(root), "federator": {"role": "hub"}, "admin": {"port": 0}}, Config
    )
    federator = msgspec.structs.replace(federator, nats=identities["federator"].apply(nats))
    (root / SERVICES_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    service_path = root / SERVICES_DIR / f"{FEDERATOR_CHILD}.toml"
    write_config(federator, service_path)
    specs = [
        ChildSpec(
            NATS_CHILD,
            [find_binary(), "-c", str(server.write_config())],
            logs / f"{NATS_CHILD}.log",
        ),
        ChildSpec(
            FEDERATOR_CHILD,
            [sys.executable, "-m", "edgecache.federator", "--config", str(service_path)],
            logs / f"{FEDERATOR_CHILD}.log",
            child_env(),
        ),
    ]
    return HubPlan(server, specs, site_keys, identities[ADMIN].apply(nats))


def run_hub(plan: HubPlan, root: Path, *, stop_timeout_s: float) -> int:
    """Start the hub's children, print the ready line, supervise until a signal, stop.

    Returns:
        0 after a signal, 1 when the hub could not start.
    """
    supervisor = Supervisor(plan.specs)
    stops = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stops
        stops += 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def say(line: str) -> None:
        click.echo(f"edgecache hub: {line}", err=True)

    logs = root / LOGS_DIR
    try:
        supervisor.start(NATS_CHILD)
        if not wait_tcp(
            plan.server.host, plan.server.port, 10.0, lambda: supervisor.pid(NATS_CHILD) is not None
        ):
            say(f"{NATS_CHILD} did not start:\n{tail(logs / f'{NATS_CHILD}.log')}")
            return 1
        supervisor.start(FEDERATOR_CHILD)
        click.echo(
            f"{HUB_READY_PREFIX} nats={plan.server.url} leaf={plan.leaf_url} sites={','.join(sorted(plan.sites))}"
        )
        click.echo(
            f"  operator: nats://{plan.admin.user}:<password in {root / 'nats-credentials.toml'}>@…"
        )
        sys.stdout.flush()
        while not stops:
            supervisor.poll()
            time.sleep(0.1)
        return 0
    except FatalExit as exc:
        say(f"{exc}; see {logs}:\n{exc.log_tail}")
        return 1
    finally:
        supervisor.stop(timeout_s=stop_timeout_s, force=lambda: stops > 1)
        say("stopped")
