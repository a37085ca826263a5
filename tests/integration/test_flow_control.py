"""Flow control bounds the whole connection: many downloads on one NATS connection never
make nats-server mark it a slow consumer, however busy the reader is.

The cache node runs in a thread of its own (its own event loop, as another process would):
the test blocks its own loop to play a busy gateway that reads nothing for a while, and
the node keeps sending whatever credit lets it send.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats

from edgecache.common import placement, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import Config, load_config
from edgecache.common.credit import CreditBudget
from edgecache.common.heartbeats import Liveness
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.nats import server_log

MiB = 1024 * 1024
KiB = 1024


class NodeThread:
    """A cache node (the real ``start_node``) on its own event loop in a thread."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cachenode", daemon=True)

    def _run(self) -> None:
        from edgecache.cachenode.service import start_node

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with AsyncExitStack() as stack:
                await start_node(self._config, stack)
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> NodeThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("the cache node did not start") from self._error
        return self

    def block(self, seconds: float) -> None:
        """Keep the node's event loop busy for ``seconds`` (a busy node reads nothing)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(time.sleep, seconds)

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _config(server: NatsServer, tmp_path: Path, **nats: Any) -> Config:
    return load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": server.url, "request_timeout_s": 5.0, **nats},
            "cachenode": {"node_id": f"flow-{secrets.token_hex(3)}"},
        },
    )


async def _one(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def _download_concurrently(
    client: EdgecacheClient, bucket: str, key: str, readers: int, *, busy_s: float
) -> list[bytes | BaseException]:
    """Start ``readers`` downloads of one object at once, block this event loop for
    ``busy_s`` (nothing reads the socket meanwhile), then read every body to the end."""

    async def fetch() -> bytes:
        _, body = await client.get_object(wire.GetObject(bucket=bucket, key=key))
        return b"".join([piece async for piece in body])

    tasks = [asyncio.ensure_future(fetch()) for _ in range(readers)]
    await asyncio.sleep(0.05)  # every request that may go out is out
    time.sleep(busy_s)  # noqa: ASYNC251 - a busy gateway: the server buffers what the node sends
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_many_downloads_on_one_connection_are_not_a_slow_consumer(
    start_nats_server, tmp_path: Path
) -> None:
    """16 downloads of an 8 MiB object with the default settings of client and server (8
    frames of 1 MiB per stream, ``max_pending`` 64 MiB): the streams would ask for 128 MiB at
    once, and the server would drop the connection, had they not shared one budget."""
    server = start_nats_server()
    with NodeThread(_config(server, tmp_path)):
        nc = await nats.connect(server.url)
        try:
            client = EdgecacheClient(nc, timeout_s=5.0, window_frames=8)
            await client.request(wire.CreateBucket(bucket="flow"))
            data = os.urandom(8 * MiB)
            await client.put_object(wire.PutObject(bucket="flow", key="big", size=len(data)), _one(data))
            results = await _download_concurrently(client, "flow", "big", 16, busy_s=1.5)
        finally:
            await nc.close()
    failures = [r if isinstance(r, BaseException) else len(r) for r in results if r != data]
    assert not failures, f"{len(failures)} of 16 bodies broke: {failures[:4]}"
    assert "Slow Consumer" not in server_log(server)


async def test_a_small_max_pending_and_32_streams(start_nats_server, tmp_path: Path) -> None:
    """A server that buffers only 4 MiB per connection, 64 KiB frames, 32 downloads at once
    (8 frames each would be 16 MiB): with ``nats.download_credit_bytes`` at a quarter of the
    server's ``max_pending`` every body completes, byte for byte."""
    server = start_nats_server(max_pending_bytes=4 * MiB, max_payload_bytes=64 * KiB)
    config = _config(server, tmp_path, download_credit_bytes=MiB)
    with NodeThread(config):
        nc = await nats.connect(server.url)
        try:
            budget = CreditBudget(nc, max_bytes=config.nats.download_credit_bytes)
            client = EdgecacheClient(nc, timeout_s=5.0, window_frames=8, budget=budget)
            await client.request(wire.CreateBucket(bucket="flow"))
            data = os.urandom(MiB + 5)
            await client.put_object(wire.PutObject(bucket="flow", key="obj", size=len(data)), _one(data))
            results = await _download_concurrently(client, "flow", "obj", 32, busy_s=1.0)
            assert (budget.available, budget.waiting) == (budget.frames, 0)  # nothing leaked
        finally:
            await nc.close()
    failures = [r if isinstance(r, BaseException) else len(r) for r in results if r != data]
    assert not failures, f"{len(failures)} of 32 bodies broke: {failures[:4]}"
    assert "Slow Consumer" not in server_log(server)


async def test_relayed_downloads_do_not_deadlock_two_budgets(start_nats_server, tmp_path: Path) -> None:
    """Two nodes, the object's chunks on its owner only: a download that lands on the other
    node is relayed (owner → node → client), so it holds credit of the client's budget and of
    the node's at once. Had the relay asked its peer for more than the client had granted
    it, it would hold node credit while waiting for client credit, and the two budgets
    would wait on each other until every stream timed out."""
    from edgecache.cachenode.service import start_node

    server = start_nats_server(max_payload_bytes=64 * KiB)
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("a", "b"):
            config = load_config(
                env={},
                overrides={
                    "data_dir": str(tmp_path / name),
                    "nats": {"url": server.url, "request_timeout_s": 5.0, "download_credit_bytes": 256 * KiB},
                    "cachenode": {
                        "chunk_bytes": MiB, "fill_run_bytes": MiB, "replicas": 1,
                        "node_id": f"{name}-{secrets.token_hex(3)}", "stream_idle_timeout_s": 5.0,
                    },
                    "origin": {"kind": "file", "path": str(tmp_path / "origin")},
                },
            )
            nodes.append(await start_node(config, stack))
        for node in nodes:
            beat = wire.Heartbeat(
                id=secrets.token_hex(4), at_ns=time.time_ns(), node_id=node.node_id, host="test",
                started=node.started, stats=node.stats(),
            )
            await node.state.nodes.put(node.node_id, wire.encode(beat))
        for node in nodes:
            await node.live.refresh()
        data = os.urandom(4 * MiB)
        await nodes[0].origin.create_bucket("relay")
        await nodes[0].origin.put_object("relay", "obj", _one(data), size=len(data))
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.close)
        budget = CreditBudget(nc, max_bytes=256 * KiB)  # 4 frames for 32 streams
        client = EdgecacheClient(nc, timeout_s=5.0, window_frames=8, budget=budget)
        await client.get_object_bytes("relay", "obj")  # the owner fills it from the origin
        results = await _download_concurrently(client, "relay", "obj", 32, busy_s=0)
        failures = [r if isinstance(r, BaseException) else len(r) for r in results if r != data]
        assert not failures, f"{len(failures)} of 32 bodies broke: {failures[:4]}"
        owner = placement.owner("relay", "obj", [n.node_id for n in nodes])
        relay = next(n for n in nodes if n.node_id != owner)
        assert relay.counters.hits > 0 and not relay.store.stats.chunks  # it served by relaying
        assert (budget.available, budget.waiting) == (budget.frames, 0)
        assert all(n.credit.available == n.credit.frames for n in nodes)


async def test_many_uploads_into_one_node_are_not_a_slow_consumer(start_nats_server, tmp_path: Path) -> None:
    """16 uploads of 8 MiB at once into one node whose event loop is busy for 1.5 s (the
    server's default ``max_pending``, 64 MiB): with a window of 8 frames each, the uploaders
    would be granted 128 MiB at once and the server would drop the node's connection, had
    the upload streams into the node not shared one budget (``nats.upload_credit_bytes``).

    What is tested is the server's verdict, not the node's liveness: the client waits 8 s
    for a heartbeat, not 2 s (once, under a full suite on a 2-core box, the node's first
    heartbeats after the 1.5-s block came more than 2 s after the requests, and all 16
    uploads were given up while the node completed them)."""
    server = start_nats_server()
    node = NodeThread(_config(server, tmp_path))
    with node:
        nc = await nats.connect(server.url)
        try:
            client = EdgecacheClient(nc, timeout_s=10.0, window_frames=8, liveness=Liveness(timeout_s=8.0))
            await client.request(wire.CreateBucket(bucket="uploads"))
            data = [os.urandom(8 * MiB) for _ in range(16)]

            async def put(i: int) -> None:
                await client.put_object(wire.PutObject(bucket="uploads", key=f"k{i}", size=len(data[i])), _one(data[i]))

            node.block(1.5)
            results = await asyncio.gather(*(put(i) for i in range(16)), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            assert not failures, f"{len(failures)} of 16 uploads failed: {failures[:4]}"
            for i in (0, 15):
                assert (await client.get_object_bytes("uploads", f"k{i}"))[1] == data[i]
        finally:
            await nc.close()
    assert "Slow Consumer" not in server_log(server)
