"""What ``edgecache up --nats-cluster 3 --cachenodes 3`` plans: three routed nats-servers
with the same users and fsync, R3 state, and three cache node processes that share nothing
on disk."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgecache.common.config import Config, NatsConfig, load_config
from edgecache.launcher import configfile, datadir
from edgecache.launcher import up as up_mod
from edgecache.launcher.natsserver import find_binary, free_port
from edgecache.launcher.sitekey import public_key


def _config(root: Path) -> Config:
    overrides = {"data_dir": str(root), "gateway": {"port": free_port()}, "admin": {"port": 0}}
    return configfile.absolute(load_config(env={}, overrides=overrides))


def test_nats_url_takes_several_servers() -> None:
    assert NatsConfig(url="nats://a:4222").servers() == ["nats://a:4222"]
    assert NatsConfig(url=" nats://a:1, nats://b:2 ,").servers() == ["nats://a:1", "nats://b:2"]


def test_up_plans_a_three_server_cluster_and_three_cache_nodes(tmp_path: Path) -> None:
    plan = up_mod.plan(
        _config(tmp_path), tmp_path, external_nats=False, nats_port=0, nats_cluster=3, cachenodes=3
    )
    names = [spec.name for spec in plan.specs]
    assert names[:3] == [
        "nats-server-1",
        "nats-server-2",
        "nats-server-3",
    ]  # started first, stopped last
    assert names.count("cachenode") == 1 and {"cachenode-2", "cachenode-3"} <= set(names)

    servers = [server for _, server in plan.nats_children]
    assert plan.config.nats.servers() == [s.url for s in servers]
    assert plan.config.nats.replicas == 3
    routes = {f"nats-route://127.0.0.1:{s.cluster_port}" for s in servers}
    for server in servers:
        conf = server.store_dir / "nats-server.conf"
        text = conf.read_text()
        assert "sync_interval: always" in text and "authorization {" in text
        assert f'server_name: "{server.server_name}"' in text
        assert set(server.routes) == routes - {f"nats-route://127.0.0.1:{server.cluster_port}"}
        checked = subprocess.run(
            [find_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stderr

    nodes = [
        load_config(tmp_path / datadir.SERVICES_DIR / f"{n}.toml", env={})
        for n in ("cachenode", "cachenode-2", "cachenode-3")
    ]
    assert len({n.cachenode_dir() for n in nodes}) == 3
    assert (
        nodes[0].cachenode_dir() == tmp_path / "cachenode"
    )  # a one-node data dir keeps its chunks
    ports = [n.cachenode.metrics_port for n in nodes]
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2]
    assert {(n.nats.user, n.nats.password, n.nats.replicas, n.nats.url) for n in nodes} == {
        ("", "", 3, plan.config.nats.url)
    }
    # each node logs in with its own nkey (seed mode 0600), which every server lists
    seeds = [Path(n.nats.nkey_seed_file) for n in nodes]
    assert len(set(seeds)) == 3
    publics = [public_key(seed.read_text().strip()) for seed in seeds]
    assert len(set(publics)) == 3
    for seed in seeds:
        assert seed.stat().st_mode & 0o777 == 0o600
    for server in servers:
        text = (server.store_dir / "nats-server.conf").read_text()
        assert all(f'nkey: "{public}"' in text for public in publics)


def test_up_keeps_one_server_and_one_node_by_default(tmp_path: Path) -> None:
    plan = up_mod.plan(_config(tmp_path), tmp_path, external_nats=False, nats_port=0)
    assert [name for name, _ in plan.nats_children] == ["nats-server"]
    assert plan.config.nats.replicas == 1 and "," not in plan.config.nats.url
    assert [s.name for s in plan.specs].count("cachenode") == 1
    assert not any(s.name.startswith("cachenode-") for s in plan.specs)
