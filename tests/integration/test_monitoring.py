"""Metrics and health of every service, against the real services: the four run in this
event loop (their own ``serve``), on a nats-server of the module's own that a test stops and
starts again, with an S3 client (boto3) driving real traffic through the gateway."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import nats
import pytest
import pytest_asyncio
from botocore.config import Config as BotoConfig
from prometheus_client.parser import text_string_to_metric_families

from edgecache.common import subjects
from edgecache.common.config import Config, load_config
from edgecache.launcher.natsserver import NatsServer, free_port
from edgecache.origin import open_origin

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "cachenode", "writeback", "federator")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Monitored:
    config: Config
    nats: NatsServer
    http: httpx.AsyncClient
    s3: Any  # a boto3 client of the gateway

    def metrics_url(self, service: str) -> str:
        port = getattr(self.config, service).metrics_port
        return f"http://127.0.0.1:{port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway.port}"

    async def scrape(self, service: str) -> Samples:
        """Every sample of the service's ``/metrics``: (name, labels) → value."""
        response = await self.http.get(self.metrics_url(service) + "/metrics")
        assert response.status_code == 200, response.text
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    async def ready(self, url: str) -> int:
        try:
            return (await self.http.get(url + "/health/ready")).status_code
        except httpx.TransportError:
            return 0


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent: a counter not yet born)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much the sample ``name`` with ``labels`` moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def total(samples: Samples, name: str) -> float:
    """The sum of ``name`` over all its label sets."""
    return sum(v for (n, _), v in samples.items() if n == name)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15.0) -> None:
    """Poll ``check`` (an HTTP probe: nothing to await instead) every 50 ms."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def monitored(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Monitored]:
    from edgecache.cachenode.service import serve as cachenode
    from edgecache.federator.service import serve as federator
    from edgecache.gateway.service import serve as gateway
    from edgecache.writeback.service import serve as writeback

    root = tmp_path_factory.mktemp("monitoring")
    nats = NatsServer(root / "nats")
    nats.start()
    access, secret = "MONITORINGTESTKEY", secrets.token_urlsafe(30)
    config = load_config(
        env={},
        overrides={
            "data_dir": str(root / "data"),
            "nats": {"url": nats.url, "request_timeout_s": 10.0},
            "gateway": {
                "port": free_port(),
                "access_key": access,
                "secret_key": secret,
                "workers": 1,
                "metrics_port": free_port(),
            },
            "cachenode": {
                "chunk_bytes": MiB,
                "metrics_port": free_port(),
                "heartbeat_s": 0.2,
                "replicas": 1,
            },
            "writeback": {"metrics_port": free_port(), "backoff_base_s": 0.1},
            "federator": {"metrics_port": free_port()},
        },
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(serve(config, stop))
        for serve in (federator, writeback, cachenode, gateway)
    ]
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{config.gateway.port}",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    async with httpx.AsyncClient(timeout=5.0) as http:
        m = Monitored(config, nats, http, s3)
        for service in SERVICES:

            async def up(service: str = service) -> bool:
                if any(t.done() for t in tasks):  # a service died: show why
                    for t in tasks:
                        if t.done():
                            t.result()
                return await m.ready(m.metrics_url(service)) == 200

            await until(up, f"{service} ready")
        yield m
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    nats.stop()


async def test_every_service_counts_real_traffic(monitored: Monitored) -> None:
    m = monitored
    before = {s: await m.scrape(s) for s in SERVICES}
    bucket = f"metrics-{secrets.token_hex(4)}"
    body = secrets.token_bytes(4096)
    await asyncio.to_thread(m.s3.create_bucket, Bucket=bucket)
    await asyncio.to_thread(m.s3.put_object, Bucket=bucket, Key="written", Body=body)
    # an object only the origin has: the first GET misses every tier, later ones hit
    origin = open_origin(m.config)
    await origin.start()

    async def one() -> AsyncIterator[bytes]:
        yield body

    await origin.put_object(bucket, "cold", one(), size=len(body))
    await origin.close()
    for _ in range(3):
        got = await asyncio.to_thread(m.s3.get_object, Bucket=bucket, Key="cold")
        assert await asyncio.to_thread(got["Body"].read) == body

    gw_before, gw = before["gateway"], await m.scrape("gateway")
    count = "edgecache_gateway_request_duration_seconds_count"
    assert delta(gw, gw_before, count, operation="PutObject", status="200") == 1
    assert delta(gw, gw_before, count, operation="GetObject", status="200") == 3
    received = "edgecache_gateway_received_bytes_total"
    assert delta(gw, gw_before, received, operation="PutObject") == len(body)
    sent = "edgecache_gateway_sent_bytes_total"
    assert delta(gw, gw_before, sent, operation="GetObject") == 3 * len(body)
    # the miss filled the memory tier, and a later GET was answered from it
    assert delta(gw, gw_before, "edgecache_gateway_memory_tier_fills_total") >= 1
    hits = delta(gw, gw_before, "edgecache_gateway_memory_tier_hits_total")
    assert hits >= 1
    tier_sent = delta(gw, gw_before, "edgecache_gateway_memory_tier_sent_bytes_total")
    assert tier_sent == hits * len(body)
    assert value(gw, "edgecache_gateway_memory_tier_used_bytes") >= len(body)
    assert value(gw, "edgecache_gateway_nats_connected") == 1

    node_before, node = before["cachenode"], await m.scrape("cachenode")
    n = {"node": next(dict(lb)["node"] for (name, lb) in node if name.endswith("misses_total"))}
    # one fill from the origin; every GET of the one-chunk object that the memory tier did
    # not answer read its chunk once: from disk (a hit) or following the fill (a miss)
    node_hits = delta(node, node_before, "edgecache_cachenode_hits_total", **n)
    node_misses = delta(node, node_before, "edgecache_cachenode_misses_total", **n)
    assert node_misses >= 1 and node_hits + node_misses + hits == 3
    assert delta(node, node_before, "edgecache_cachenode_fills_total", **n) == 1
    assert delta(node, node_before, "edgecache_cachenode_fill_bytes_total", **n) == len(body)
    assert delta(node, node_before, "edgecache_cachenode_received_bytes_total", **n) == len(body)
    assert value(node, "edgecache_cachenode_used_bytes", **n) >= 2 * len(body)
    capacity = value(node, "edgecache_cachenode_capacity_bytes", **n)
    assert capacity == m.config.cachenode.capacity_bytes
    node_count = "edgecache_cachenode_request_duration_seconds_count"
    assert delta(node, node_before, node_count, operation="PutObject", outcome="ok") == 1

    # write-back is asynchronous: wait for the PUT's object to reach the origin
    wb_before = before["writeback"]

    async def written_back() -> bool:
        wb = await m.scrape("writeback")
        done = value(wb, "edgecache_writeback_written_bytes_total") - value(
            wb_before, "edgecache_writeback_written_bytes_total"
        )
        return done == len(body) and value(wb, "edgecache_writeback_backlog_intents") == 0

    await until(written_back, "the write-back of the PUT")
    wb = await m.scrape("writeback")
    assert (
        value(wb, "edgecache_writeback_intents_done_total")
        - value(wb_before, "edgecache_writeback_intents_done_total")
        >= 2
    )  # the bucket and the object
    assert value(wb, "edgecache_writeback_oldest_intent_age_seconds") == 0
    assert value(wb, "edgecache_writeback_failing_keys") == 0

    fed = await m.scrape("federator")
    assert value(fed, "edgecache_federator_live_nodes") == 1
    assert value(fed, "edgecache_federator_heartbeats_total") > value(
        before["federator"], "edgecache_federator_heartbeats_total"
    )
    for service in SERVICES:  # process metrics, per process
        samples = gw if service == "gateway" else await m.scrape(service)
        assert value(samples, "process_resident_memory_bytes") > 0, service


async def test_writeback_backlog_and_failures_come_from_the_stream(monitored: Monitored) -> None:
    """An intent of a type no replica knows waits in WRITEBACK for a retry (it is never
    dropped): the backlog and oldest-age gauges, read from the stream, show it, and the
    replica counts the failure."""
    m = monitored
    before = await m.scrape("writeback")
    nc = await nats.connect(m.nats.url)
    try:
        future = {"type": "object.future.v9", "id": secrets.token_hex(8), "at_ns": 1, "bucket": "b"}
        await nc.jetstream().publish(subjects.writeback_subject(0), json.dumps(future).encode())
    finally:
        await nc.close()

    async def waiting() -> bool:
        wb = await m.scrape("writeback")
        failed = value(wb, "edgecache_writeback_intent_failures_total") - value(
            before, "edgecache_writeback_intent_failures_total"
        )
        return failed == 1 and value(wb, "edgecache_writeback_oldest_intent_age_seconds") > 0

    await until(waiting, "the unknown intent to wait for its retry")
    wb = await m.scrape("writeback")
    assert value(wb, "edgecache_writeback_backlog_intents") == 1  # its scheduled retry


async def test_gateway_health_on_the_s3_port_needs_no_credentials(monitored: Monitored) -> None:
    m = monitored
    ready = await m.http.get(m.s3_url + "/health/ready")
    assert ready.status_code == 200
    report = ready.json()
    assert report["ok"] is True and report["service"] == "gateway"
    assert report["checks"] == {"nats": "ok", "jetstream": "ok"}
    live = await m.http.get(m.s3_url + "/health/live")
    assert (live.status_code, live.json()["ok"]) == (200, True)
    # any other unsigned request is still refused the S3 way ...
    other = await m.http.get(m.s3_url + "/health/other")
    assert other.status_code == 403 and b"<Code>AccessDenied</Code>" in other.content
    # ... and a signed request of the same path is S3's: the bucket "health" does not exist
    with pytest.raises(m.s3.exceptions.NoSuchBucket):
        await asyncio.to_thread(m.s3.get_object, Bucket="health", Key="ready")


async def test_readiness_follows_nats(monitored: Monitored) -> None:
    m = monitored
    urls = [m.metrics_url(s) for s in SERVICES] + [m.s3_url]

    async def all_ready(status: int) -> bool:
        return all([await m.ready(url) == status for url in urls])

    m.nats.stop()
    try:
        await until(lambda: all_ready(503), "every service not ready")
        for url in urls:
            live = await m.http.get(url + "/health/live")
            assert live.status_code == 200, url
        report = json.loads((await m.http.get(m.metrics_url("cachenode") + "/health/ready")).text)
        assert report["ok"] is False
        assert report["checks"]["nats"] == "not connected"
        assert report["checks"]["chunk_store"] == "ok"
        # the backlog cannot be read: it is left out rather than reported stale
        wb = await m.scrape("writeback")
        assert ("edgecache_writeback_backlog_intents", frozenset()) not in wb
        assert value(wb, "edgecache_writeback_nats_connected") == 0
    finally:
        m.nats.start()
    await until(lambda: all_ready(200), "every service ready again")
    gw = await m.scrape("gateway")
    assert value(gw, "edgecache_gateway_nats_reconnects_total") >= 1
    node = await m.scrape("cachenode")
    assert total(node, "edgecache_cachenode_nats_reconnects_total") >= 1


async def test_dashboard_and_docs_name_exactly_the_exported_metrics(monitored: Monitored) -> None:
    """Makes a PUT and a GET first, so that every labelled child exists whichever of this
    module's tests ran before on this fixture (a full suite once ran it on a fresh one)."""
    m = monitored
    bucket = f"names-{secrets.token_hex(4)}"
    await asyncio.to_thread(m.s3.create_bucket, Bucket=bucket)
    await asyncio.to_thread(m.s3.put_object, Bucket=bucket, Key="k", Body=b"named")
    got = await asyncio.to_thread(m.s3.get_object, Bucket=bucket, Key="k")
    assert await asyncio.to_thread(got["Body"].read) == b"named"
    exported = {name for s in SERVICES for (name, _) in (await m.scrape(s))}
    dashboard = json.loads(
        (ROOT / "compose" / "grafana" / "dashboards" / "edgecache.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    named = {n for e in exprs for n in re.findall(r"\b(?:edgecache|process)_[a-z_]+\b", e)}
    assert named and named <= exported, named - exported
    docs = (ROOT / "docs" / "operations.md").read_text()
    table = docs[docs.index("### Metrics") :]
    table = table[: table.index("\n## ")]  # the section, not the federated site's metrics below
    family = re.compile(r"_(bucket|count|sum)$")  # a histogram's samples
    families = exported | {family.sub("", n) for n in exported}
    documented = set(re.findall(r"`(edgecache_[a-z_]+)`", table))
    assert documented <= families, documented - families

    def in_docs(name: str) -> bool:
        templated = re.sub(r"^edgecache_[a-z]+_nats_", "edgecache_<service>_nats_", name)
        words = name.split("_")
        tails = ["_".join(words[i:]) for i in range(1, len(words) - 1)]
        return (
            f"`{name}`" in table
            or f"`{templated}" in table
            or any(f"…_{t}`" in table for t in tails)
        )

    ours = {
        family.sub("", n)
        for n in exported
        if n.startswith("edgecache_") and not n.endswith("_created")
    }
    assert {n for n in ours if not in_docs(n)} == set()


async def test_unknown_paths_are_404(monitored: Monitored) -> None:
    response = await monitored.http.get(monitored.metrics_url("federator") + "/nothing")
    assert response.status_code == 404
