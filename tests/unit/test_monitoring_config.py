"""The monitoring plumbing that needs no running service: the compose stack's health checks,
Prometheus scrape config and Grafana provisioning (validated offline), the ports `up` picks,
one metrics port per gateway worker, which requests the S3 port answers as health probes,
and the write-back's reading of JetStream timestamps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from edgecache.common.config import load_config
from edgecache.gateway.probes import _unsigned
from edgecache.gateway.workers import worker_config
from edgecache.launcher.endpoints import pick_metrics_ports, service_endpoints
from edgecache.launcher.ports import port_in_use
from edgecache.writeback.metrics import _age_s

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SERVICES = ("gateway", "cachenode", "writeback", "federator")


def _compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_compose_file_validates_against_the_compose_spec() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_health_checks_probe_readiness_on_the_configured_ports() -> None:
    services = _compose()["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["EDGECACHE_METRICS__HOST"] == "0.0.0.0"  # reachable by Prometheus
        port = int(env[f"EDGECACHE_{name.upper()}__METRICS_PORT"])
        probe = " ".join(services[name]["healthcheck"]["test"])
        # the gateway is probed where a load balancer probes it: its S3 port, unsigned
        probed = int(env["EDGECACHE_PORT"]) if name == "gateway" else port
        assert f"http://127.0.0.1:{probed}/health/ready" in probe, name
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_process_of_every_service() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name in SERVICES:
        env = services[name]["environment"]
        base = int(env[f"EDGECACHE_{name.upper()}__METRICS_PORT"])
        processes = int(env.get("EDGECACHE_GATEWAY__WORKERS", 1)) if name == "gateway" else 1
        targets = [(sd["names"], sd["port"]) for sd in jobs[name]["dns_sd_configs"]]
        assert targets == [([name], base + i) for i in range(processes)], name
    mounted = services["prometheus"]["volumes"][0].split(":")
    assert mounted[0] == "./prometheus.yml" and mounted[1] in services["prometheus"]["command"][0]


def test_grafana_provisions_the_datasource_every_panel_uses() -> None:
    services = _compose()["services"]
    provisioning = COMPOSE / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "edgecache.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "edgecache.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_gateway_workers_get_consecutive_metrics_ports() -> None:
    config = load_config(env={}, overrides={"gateway": {"workers": 3, "metrics_port": 9400}})
    assert [worker_config(config, i).gateway.metrics_port for i in range(3)] == [9400, 9401, 9402]
    off = load_config(env={}, overrides={"gateway": {"workers": 3}})
    assert worker_config(off, 2).gateway.metrics_port == 0


def test_up_picks_free_ports_and_keeps_given_ones() -> None:
    config = load_config(
        env={}, overrides={"gateway": {"workers": 2}, "federator": {"metrics_port": 9555}}
    )
    picked = pick_metrics_ports(config)
    assert picked.federator.metrics_port == 9555
    ports = [
        picked.gateway.metrics_port,
        picked.cachenode.metrics_port,
        picked.writeback.metrics_port,
    ]
    assert all(ports) and len(set(ports)) == 3
    assert not port_in_use("127.0.0.1", picked.gateway.metrics_port + 1)
    urls = {e.service: e for e in service_endpoints(picked)}
    gw = picked.gateway.metrics_port
    assert urls["gateway"].metrics == [
        f"http://127.0.0.1:{gw}/metrics",
        f"http://127.0.0.1:{gw + 1}/metrics",
    ]
    assert urls["federator"].ready == ["http://127.0.0.1:9555/health/ready"]
    assert service_endpoints(load_config(env={}))[0].metrics == []  # no port, no URL


def test_only_unsigned_requests_are_health_probes() -> None:
    def scope(headers: list[tuple[bytes, bytes]] = (), query: bytes = b"") -> dict:
        return {"headers": list(headers), "query_string": query}

    assert _unsigned(scope())
    assert _unsigned(scope([(b"user-agent", b"kube-probe/1.30")], b"verbose=1"))
    assert not _unsigned(scope([(b"authorization", b"AWS4-HMAC-SHA256 Credential=...")]))
    assert not _unsigned(scope(query=b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab"))
    assert not _unsigned(scope(query=b"AWSAccessKeyId=AK&Signature=x&Expires=1"))


def test_oldest_intent_age_reads_jetstream_timestamps() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert abs(_age_s("2027-01-15T07:59:58.123456789Z", now) - 1.876544) < 1e-5
    assert _age_s("2027-01-15T07:59:50Z", now) == 10.0
    assert _age_s("0001-01-01T00:00:00Z", now) == 0.0  # an empty stream
    assert _age_s("2027-01-15T08:00:05Z", now) == 0.0  # a clock ahead of ours
