"""The federator against a real nats-server: heartbeats land in KV ``nodes``, expire after
the TTL, show up in ``edgecache status``; joins and leaves are logged; SIGTERM stops it.

KV ``nodes`` gets its TTL from whoever creates it first, and the session's nats-server is
shared, so these tests run their own server with a 1 s TTL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from edgecache.common import subjects, wire
from edgecache.common.config import Config
from edgecache.federator.membership import ChangeKind, Membership
from edgecache.federator.service import serve
from edgecache.launcher.natsserver import NatsServer

T = TypeVar("T")
TTL_S = 1.0
EDGECACHE = Path(sys.executable).parent / "edgecache"


def _config(url: str) -> Config:
    return msgspec.convert({"nats": {"url": url}, "federator": {"node_ttl_s": TTL_S}}, Config)


def _beat(node_id: str, *, started: float = 1000.0, used: int = 0) -> wire.Heartbeat:
    return wire.Heartbeat(
        id=uuid.uuid4().hex,
        at_ns=time.time_ns(),
        node_id=node_id,
        host="host-" + node_id,
        started=started,
        stats=wire.NodeStats(capacity_bytes=10 * 1024**3, used_bytes=used, hits=3),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path_factory.mktemp("federator-nats"))
    srv.start()
    yield srv
    srv.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def federator(server: NatsServer) -> AsyncIterator[None]:
    """The federator's ``serve`` running in this event loop."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(_config(server.url), stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest_asyncio.fixture(loop_scope="session")
async def client(server: NatsServer, federator: None) -> AsyncIterator[NATS]:
    conn = await nats.connect(server.url)
    yield conn
    await conn.drain()


async def _eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
    """Await ``check()`` every 0.1 s until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _node_in_kv(nc: NATS, node_id: str) -> wire.Heartbeat | None:
    try:
        kv = await nc.jetstream().key_value(subjects.KV_NODES)
    except nats.js.errors.BucketNotFoundError:  # the federator has not created it yet
        return None
    try:
        entry = await kv.get(node_id)
    except nats.js.errors.KeyNotFoundError:
        return None
    return wire.decode(entry.value, wire.Heartbeat) if entry.value else None


# == Membership (pure) ========================================================================
def test_membership_join_restart_leave() -> None:
    now = [0.0]
    members = Membership(ttl_s=2.0, clock=lambda: now[0])
    assert members.observe(_beat("a")).kind is ChangeKind.JOINED
    assert members.observe(_beat("a")) is None  # a routine beat
    now[0] = 1.0
    assert members.observe(_beat("b")).kind is ChangeKind.JOINED
    assert members.node_ids() == ["a", "b"]
    now[0] = 2.0
    assert members.expire() == []  # a is silent for exactly the TTL: not yet gone
    now[0] = 2.5
    left = members.expire()
    assert [(c.kind, c.heartbeat.node_id) for c in left] == [(ChangeKind.LEFT, "a")]
    assert "a" not in members and members.get("a") is None and len(members) == 1
    assert members.observe(_beat("b", started=2000.0)).kind is ChangeKind.RESTARTED
    assert members.get("b").started == 2000.0


def test_membership_keeps_a_beating_node() -> None:
    now = [0.0]
    members = Membership(ttl_s=1.0, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 0.5
        members.observe(_beat("a"))
        assert members.expire() == []
    assert members.get("a") is not None


# == against nats-server =======================================================================
async def test_heartbeat_lands_in_kv_then_expires(client: NATS) -> None:
    async def beat_and_look() -> wire.Heartbeat | None:
        await client.publish(subjects.heartbeat("node-a"), wire.encode(_beat("node-a", used=42)))
        return await _node_in_kv(client, "node-a")

    stored = await _eventually(beat_and_look)
    assert stored.node_id == "node-a"
    assert stored.stats.used_bytes == 42

    async def gone() -> bool:
        return await _node_in_kv(client, "node-a") is None

    started = time.monotonic()
    await _eventually(gone, timeout_s=5 * TTL_S + 5)
    assert time.monotonic() - started >= TTL_S * 0.5  # it expired, it was not dropped at once


async def test_bad_heartbeats_are_dropped(client: NATS) -> None:
    await client.publish(subjects.heartbeat("garbage"), b"{not json")
    await client.publish(subjects.heartbeat("liar"), wire.encode(_beat("someone-else")))

    async def beat_and_look() -> wire.Heartbeat | None:
        await client.publish(subjects.heartbeat("honest"), wire.encode(_beat("honest")))
        return await _node_in_kv(client, "honest")

    await _eventually(beat_and_look)  # everything before it was handled too (one subscription)
    assert await _node_in_kv(client, "garbage") is None
    assert await _node_in_kv(client, "someone-else") is None
    assert await _node_in_kv(client, "liar") is None


async def test_status_shows_live_nodes(client: NATS, server: NatsServer) -> None:
    async def beat_and_look() -> wire.Heartbeat | None:
        await client.publish(subjects.heartbeat("node-s"), wire.encode(_beat("node-s", used=1536)))
        return await _node_in_kv(client, "node-s")

    await _eventually(beat_and_look)

    async def status(*args: str) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            str(EDGECACHE),
            "status",
            "--nats-url",
            server.url,
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())

    beating = asyncio.create_task(_keep_beating(client, "node-s"))
    try:
        table = await status()
        as_json = await status("--json")
    finally:
        beating.cancel()
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("node-s"))
    assert row.split()[:2] == ["node-s", "host-node-s"]
    assert "1.5 KiB/10.0 GiB" in row
    assert "writeback backlog: 0 intent(s)" in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    node = next(n for n in report["nodes"] if n["node_id"] == "node-s")
    assert node["stats"]["used_bytes"] == 1536
    assert report["writeback"]["intents"] == 0
    assert len(report["writeback"]["partitions"]) == subjects.WRITEBACK_PARTITIONS


async def _keep_beating(nc: NATS, node_id: str) -> None:
    while True:
        await nc.publish(subjects.heartbeat(node_id), wire.encode(_beat(node_id, used=1536)))
        await asyncio.sleep(TTL_S / 4)


# == as a process: logs and shutdown ===========================================================
def _start_federator(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgecache.federator", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_federator_process_logs_joins_and_leaves_and_stops_on_sigterm(
    server: NatsServer, tmp_path: Path
) -> None:
    config = tmp_path / "federator.toml"
    config.write_text(f'[nats]\nurl = "{server.url}"\n[federator]\nnode_ttl_s = {TTL_S}\n')
    log = tmp_path / "federator.log"
    proc = _start_federator(config, log)
    nc = await nats.connect(server.url)
    try:

        def events() -> list[dict]:
            return [
                json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
            ]

        async def joined() -> bool:
            await nc.publish(subjects.heartbeat("node-p"), wire.encode(_beat("node-p")))
            return any(e["event"] == "node.joined" and e["node"] == "node-p" for e in events())

        await _eventually(joined)

        async def left() -> bool:
            return any(e["event"] == "node.left" and e["node"] == "node-p" for e in events())

        await _eventually(left, timeout_s=5 * TTL_S + 5)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        await nc.drain()
    assert code == 0, log.read_text()
    assert any(e["event"] == "federator.stopping" for e in events())


# == a restarted nats-server ====================================================================
async def test_nodes_bucket_comes_back_after_a_nats_restart(tmp_path: Path) -> None:
    """KV ``nodes`` lives in memory: a restarted server has lost it; the federator
    recreates it on the next heartbeat instead of failing every put from then on."""
    srv = NatsServer(tmp_path / "nats")
    srv.start()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(_config(srv.url), stop))
    nc = await nats.connect(srv.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    try:

        async def beat_and_look() -> wire.Heartbeat | None:
            await nc.publish(subjects.heartbeat("node-r"), wire.encode(_beat("node-r")))
            return await _node_in_kv(nc, "node-r")

        await _eventually(beat_and_look)
        await asyncio.to_thread(srv.stop)
        await asyncio.to_thread(srv.start)
        await _eventually(beat_and_look, timeout_s=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.close()
        srv.stop()
