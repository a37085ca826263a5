"""The nats-servers of a federation: the hub's (JetStream domain ``hub``, a leaf node
listener, the sites' nkeys) and what a site's server adds (its own domain, a leaf remote to
the hub). ``edgecache hub``, ``edgecache up --site`` and the test fixtures
(tests/fixtures/federation.py) all build them here, so the tests run what the launcher runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from edgecache.common import subjects
from edgecache.common.config import Config
from edgecache.launcher.hubauth import hub_authorization_block
from edgecache.launcher.natsserver import LeafRemote, NatsServer, free_port
from edgecache.launcher.sitekey import SiteKey, load_or_create_site_key

__all__ = [
    "DEFAULT_LEAF_PORT",
    "check_site_name",
    "hub_server",
    "site_nats_options",
    "site_server_options",
]

DEFAULT_LEAF_PORT = 7422  # nats-server's conventional leaf node port


def check_site_name(site: str) -> str:
    """``site`` if it can name a site (``[a-z0-9][a-z0-9-]*``, at most 32 characters, not
    ``hub``): it is a JetStream domain and a subject token.

    Raises:
        click.BadParameter: it cannot.
    """
    if not subjects.is_site_name(site):
        raise click.BadParameter(
            f"{site!r}: a site name is [a-z0-9][a-z0-9-]*, at most 32 characters, not "
            f"{subjects.HUB_DOMAIN!r}"
        )
    return site


def hub_server(
    store_dir: Path,
    *,
    site_keys: Mapping[str, str],
    passwords: Mapping[str, str],
    port: int = 0,
    leaf_port: int = 0,
    monitor_port: int = 0,
    sync_interval: str | None = "always",
) -> NatsServer:
    """The hub's nats-server: JetStream domain ``hub``, leaf node connections on
    ``leaf_port`` from the sites whose nkey public keys ``site_keys`` lists (site name →
    ``U…``), each limited to :func:`edgecache.launcher.hubauth.leaf_permissions`; clients
    on ``port`` with the passwords of :data:`~edgecache.launcher.hubauth.HUB_IDENTITIES`.
    0 ports pick free ones."""
    server = NatsServer(
        store_dir,
        port=port,
        authorization=hub_authorization_block(site_keys, passwords),
        sync_interval=sync_interval,
        server_name=subjects.HUB_DOMAIN,
        jetstream_domain=subjects.HUB_DOMAIN,
        monitor_port=monitor_port,
    )
    server.leaf_port = leaf_port or _free_port(server.host, server.port)
    return server


def _free_port(host: str, taken: int) -> int:
    while (port := free_port(host)) == taken:
        pass
    return port


def site_server_options(site: str, hub_url: str, key: SiteKey) -> dict[str, Any]:
    """What a site's :class:`NatsServer` adds to a lone site's: its JetStream domain (the
    site's name), its server name, and a leaf remote to ``hub_url``
    (``nats-leaf://host:7422``) authenticated with the site's nkey ``key``."""
    return {
        "jetstream_domain": check_site_name(site),
        "server_name": f"site-{site}",
        "leaf_remote": LeafRemote(url=hub_url, seed=key.seed),
    }


def site_nats_options(
    config: Config, root: Path, *, nats_cluster: int = 1
) -> tuple[dict[str, Any], SiteKey]:
    """For ``edgecache up --site NAME --hub-url URL``: what the private nats-server adds
    (:func:`site_server_options`, with the site's nkey from ``<root>/federation/``, made on
    first use) and the key (its public half goes into the hub's config).

    Raises:
        click.UsageError: no hub URL, or a NATS cluster (one server per site for now).
        click.BadParameter: the site's name cannot name a site.
    """
    fed = config.federation
    if not fed.hub_url:
        raise click.UsageError("--site needs --hub-url (the hub's nats-leaf://host:7422)")
    if nats_cluster > 1:
        raise click.UsageError("--site runs one nats-server per site: not with --nats-cluster")
    key, _created = load_or_create_site_key(root)
    return site_server_options(fed.site, fed.hub_url, key), key
