"""What ``edgecache up`` and the compose stack tell nats-server and the services: users and
permissions from one table (edgecache.launcher.natsauth), each service's own identity,
JetStream writes fsynced before they are acknowledged."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from edgecache.common.config import Config, load_config
from edgecache.launcher import configfile, credentials, datadir, natsauth, nodekeys, status
from edgecache.launcher import up as up_mod
from edgecache.launcher.natsserver import find_binary, free_port
from edgecache.launcher.sitekey import public_key

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config(root: Path, **sections: dict) -> Config:
    overrides: dict = {"data_dir": str(root), "gateway": {"port": free_port()}, **sections}
    return configfile.absolute(load_config(env={}, overrides=overrides))


def _validate(conf: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, env=env, timeout=30
    )


def test_up_gives_each_service_its_own_identity(tmp_path: Path) -> None:
    plan = up_mod.plan(_config(tmp_path), tmp_path, external_nats=False, nats_port=0)
    users = tmp_path / datadir.NATS_CREDENTIALS_FILE
    assert _mode(users) == 0o600
    identities = credentials.load_or_create_nats_identities(tmp_path, natsauth.IDENTITIES)
    assert set(identities) == {
        "gateway",
        "cachenode",
        "writeback",
        "federator",
        "platform",
        "admin",
    }

    # the server: every identity, no anonymous user, fsync before ack; valid as written
    conf = tmp_path / datadir.NATS_DIR / "nats-server.conf"
    assert _mode(conf) == 0o600
    text = conf.read_text()
    assert "sync_interval: always" in text
    assert "no_auth_user" not in text
    for identity in identities.values():
        assert f'{{user: "{identity.user}", password: "{identity.password}"' in text
    result = _validate(conf)
    assert result.returncode == 0, result.stderr

    # the services: each reads its own copy of the config, with its own identity
    shared = load_config(plan.config_path, env={})
    assert (shared.nats.user, shared.nats.password) == ("", "")
    for spec in plan.specs[1:]:
        path = Path(spec.argv[spec.argv.index("--config") + 1])
        assert path == tmp_path / datadir.SERVICES_DIR / f"{spec.name}.toml"
        assert _mode(path) == 0o600
        nats = load_config(path, env={}).nats
        assert nats.url == shared.nats.url == plan.nats.url
        if spec.name == "cachenode":  # its own nkey, listed by the server, and no password
            seed = nodekeys.node_key_file(tmp_path, spec.name)
            assert (nats.user, nats.password, nats.nkey_seed_file) == ("", "", str(seed))
            assert _mode(seed) == 0o600
            assert f'nkey: "{public_key(seed.read_text().strip())}"' in text
            assert nats.inbox_prefix == "_INBOX.cachenode"
            continue
        mine = identities[natsauth.SERVICE_IDENTITIES[spec.name]]
        assert (nats.user, nats.password, nats.inbox_prefix, nats.nkey_seed_file) == (
            spec.name,
            mine.password,
            f"_INBOX.{spec.name}",
            "",
        )
    assert plan.admin.user == "admin"

    # a second start keeps the passwords (a platform service configured once keeps working)
    again = up_mod.plan(_config(tmp_path), tmp_path, external_nats=False, nats_port=0)
    assert credentials.load_or_create_nats_identities(tmp_path, natsauth.IDENTITIES) == identities
    assert again.admin.password == plan.admin.password
    node_seed = nodekeys.node_key_file(tmp_path, "cachenode").read_text().strip()
    assert f'nkey: "{public_key(node_seed)}"' in text  # and the cache node keeps its key


def test_up_with_an_external_nats_uses_the_configured_identity(tmp_path: Path) -> None:
    nats = {"url": "nats://nats.example:4222", "user": "edge", "password": "pw"}
    plan = up_mod.plan(_config(tmp_path, nats=nats), tmp_path, external_nats=True, nats_port=0)
    assert plan.nats is None
    assert not (tmp_path / datadir.NATS_CREDENTIALS_FILE).exists()
    assert (plan.admin.user, plan.admin.password) == ("edge", "pw")
    for spec in plan.specs:
        path = Path(spec.argv[spec.argv.index("--config") + 1])
        assert load_config(path, env={}).nats.user == "edge"


def test_status_sends_the_admin_identity_only_to_its_own_server(tmp_path: Path) -> None:
    plan = up_mod.plan(_config(tmp_path), tmp_path, external_nats=False, nats_port=0)
    admin = credentials.load_nats_identity(tmp_path, "admin")
    assert admin is not None
    mine = status.nats_config_for(None, None, str(tmp_path))
    assert (mine.url, mine.user, mine.password) == (plan.nats.url, "admin", admin.password)
    assert status.nats_config_for(plan.nats.url, None, str(tmp_path)).user == "admin"
    other = status.nats_config_for("nats://elsewhere:4222", None, str(tmp_path))
    assert (other.user, other.password) == ("", "")


def test_nats_credentials_file_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / datadir.NATS_CREDENTIALS_FILE).write_text("[gateway]\nuser = 1\n")
    with pytest.raises(Exception, match="delete the file"):
        credentials.load_or_create_nats_identities(tmp_path, ["gateway"])


def test_compose_nats_config_is_the_table_and_validates() -> None:
    conf = COMPOSE / "nats-server.conf"
    text = conf.read_text()
    assert natsauth.authorization_block() in text, (
        "compose/nats-server.conf is out of date: paste in\n" + natsauth.authorization_block()
    )
    assert "sync_interval: always" in text
    env = {natsauth.password_variable(name): "x" for name in natsauth.IDENTITIES}
    result = _validate(conf, env)
    assert result.returncode == 0, result.stderr
    assert _validate(conf, {}).returncode != 0  # no password, no server


def test_compose_services_connect_as_their_identities() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = compose["services"]
    nats_env = services["nats"]["environment"]
    for name in natsauth.IDENTITIES:
        assert natsauth.password_variable(name) in nats_env
    for service, identity in natsauth.SERVICE_IDENTITIES.items():
        env = services[service]["environment"]
        assert env["EDGECACHE_NATS__USER"] == identity
        assert env["EDGECACHE_NATS__INBOX_PREFIX"] == natsauth.inbox_prefix(identity)
        assert natsauth.password_variable(identity) in env["EDGECACHE_NATS__PASSWORD"]
