"""What ``edgecache up --site`` and ``edgecache hub`` plan: the site's nats-server joins the
hub as a leaf node with its own JetStream domain and nkey, its services get the federation
grants and ``federation.site``; the hub admits the sites' keys. Every config is checked by
``nats-server -t``."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import click
import pytest

from edgecache.common import subjects
from edgecache.common.config import load_config
from edgecache.launcher import configfile, hub, natsauth
from edgecache.launcher import up as up_mod
from edgecache.launcher.datadir import CONFIG_FILE
from edgecache.launcher.natsserver import find_binary, free_port
from edgecache.launcher.sitekey import load_or_create_site_key, public_key


def _valid(conf: Path) -> None:
    subprocess.run([find_binary(), "-c", str(conf), "-t"], check=True, capture_output=True)


def test_up_site_plans_a_leaf_node_with_its_own_domain(tmp_path: Path) -> None:
    overrides = {
        "data_dir": str(tmp_path),
        "gateway": {"port": free_port()},
        "admin": {"port": 0},
        "federation": {"site": "paris", "hub_url": "nats-leaf://127.0.0.1:7422"},
    }
    config = configfile.absolute(load_config(env={}, overrides=overrides))
    plan = up_mod.plan(config, tmp_path, external_nats=False, nats_port=0)
    key, created = load_or_create_site_key(tmp_path)
    assert not created and plan.site_public_key == key.public
    conf = plan.nats.write_config()
    text = conf.read_text()
    assert 'domain: "paris"' in text and key.seed in text and "nats-leaf://127.0.0.1:7422" in text
    assert oct(conf.stat().st_mode & 0o777) == "0o600"  # it holds the seed
    assert (
        f'"{subjects.site_changes("paris")}"' in text and '"edgecache.fed.site.paris.s3.>"' in text
    )
    _valid(conf)
    for service in ("cachenode", "federator", "gateway"):
        written = tomllib.loads((tmp_path / "services" / f"{service}.toml").read_text())
        assert written["federation"]["site"] == "paris"
    # the cache node logs in with its own nkey, whose user has the site's grants too
    node_nats = tomllib.loads((tmp_path / "services" / "cachenode.toml").read_text())["nats"]
    assert not node_nats.get("password")
    public = public_key(Path(node_nats["nkey_seed_file"]).read_text().strip())
    node_user = text[text.index(f'nkey: "{public}"') :]
    node_user = node_user[: node_user.index("\n    }}")]
    assert '"edgecache.fed.site.paris.s3.>"' in node_user and '"_INBOX.site.paris.cachenode.>"' in node_user
    # every service takes its replies under the site's inboxes, the only ones the hub lets in
    for service in ("cachenode", "federator", "gateway", "writeback"):
        written = tomllib.loads((tmp_path / "services" / f"{service}.toml").read_text())
        assert written["nats"]["inbox_prefix"] == f"_INBOX.site.paris.{service}"
    assert load_config(tmp_path / CONFIG_FILE, env={}).nats.inbox_prefix == "_INBOX.site.paris"


def test_up_site_needs_a_hub_url_and_a_name_that_can_be_a_domain(tmp_path: Path) -> None:
    for federation, error in (
        ({"site": "paris"}, click.UsageError),
        ({"site": "Paris!", "hub_url": "nats-leaf://h:1"}, click.BadParameter),
        ({"site": "hub", "hub_url": "nats-leaf://h:1"}, click.BadParameter),
    ):
        overrides = {
            "data_dir": str(tmp_path),
            "gateway": {"port": free_port()},
            "admin": {"port": 0},
            "federation": federation,
        }
        config = configfile.absolute(load_config(env={}, overrides=overrides))
        with pytest.raises(error):
            up_mod.plan(config, tmp_path, external_nats=False, nats_port=0)


def test_a_lone_site_has_no_federation_grants() -> None:
    """Without a site, the permissions are the lone site's (compose keeps them)."""
    assert natsauth.identities_for("") is natsauth.IDENTITIES
    lone = natsauth.authorization_block({n: "x" for n in natsauth.IDENTITIES})
    assert subjects.FED_PREFIX not in lone and subjects.FEDERATION_STREAM not in lone
    widened = natsauth.identities_for("a")
    for name, perms in natsauth.IDENTITIES.items():
        extra = natsauth.federation_grants("a").get(name)
        if perms is None:
            assert widened[name] is None
            continue
        extra = extra or natsauth.Permissions(publish=(), subscribe=())
        # exactly the grants added, and each identity's inboxes moved under the site's
        assert widened[name].publish == (*_at_site_a(perms.publish), *extra.publish)
        assert widened[name].subscribe == (*_at_site_a(perms.subscribe), *extra.subscribe)


def _at_site_a(names: tuple[str, ...]) -> tuple[str, ...]:
    """A lone site's subjects with each identity's inboxes (``_INBOX.<identity>.>``) under
    site a's (every inbox, ``_INBOX.>``, stays)."""
    return tuple(
        n.replace("_INBOX.", "_INBOX.site.a.", 1) if n.startswith("_INBOX.") and n != "_INBOX.>" else n
        for n in names
    )


def test_hub_plan_admits_the_sites_and_keeps_them(tmp_path: Path) -> None:
    keys = {site: load_or_create_site_key(tmp_path / site)[0].public for site in ("a", "b")}
    sites = hub.parse_site_keys((f"a={keys['a']}",))
    plan = hub.plan_hub(
        tmp_path / "hub", port=free_port(), leaf_port=free_port(), host="127.0.0.1", sites=sites
    )
    _valid(plan.server.write_config())
    # b added on a later start; a is remembered
    plan = hub.plan_hub(
        tmp_path / "hub",
        port=free_port(),
        leaf_port=free_port(),
        host="127.0.0.1",
        sites={"b": keys["b"]},
    )
    assert plan.sites == keys
    text = plan.server.write_config().read_text()
    assert 'domain: "hub"' in text and keys["a"] in text and keys["b"] in text
    assert [s.name for s in plan.specs] == ["nats-server", "federator"]
    federator = tomllib.loads((tmp_path / "hub" / "services" / "federator.toml").read_text())
    assert federator["federator"]["role"] == "hub" and federator["nats"]["user"] == "federator"
    with pytest.raises(click.BadParameter):
        hub.parse_site_keys(("a=not-a-key",))
