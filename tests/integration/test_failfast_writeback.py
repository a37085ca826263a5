"""Recover fast: a writeback process SIGKILLed with intents in flight leaves them to the next
one within about ``writeback.ack_wait_s`` (4 s), not the old 60 s.

Writeback A (a process of its own) writes to an origin that accepts connections and never
answers, so its intents stay in flight (reported in progress) until it is killed. Writeback B
starts at the moment of the kill, with the file origin that the cache node (in the test's
loop) also reads, and the test measures how long after the kill every intent is in it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from edgecache.cachenode.service import start_node
from edgecache.common import subjects, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import Config, WritebackConfig, load_config
from edgecache.launcher.natsserver import NatsServer, free_port

MiB = 1024 * 1024
KEYS = [f"k{i}" for i in range(6)]
#: the bound asserted: ack_wait_s (4 s) plus B's start, the pull and the copies, with slack
#: for a loaded 2-core box
RECOVER_WITHIN_S = 8.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path_factory.mktemp("nats-wbfail"))
    s.start()
    yield s
    s.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def silent_origin() -> AsyncIterator[str]:
    """An "S3 endpoint" that takes every connection and request and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    port = free_port()
    srv = await asyncio.start_server(swallow, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    for w in held:
        w.close()
    srv.close()


def spawn_writeback(config: Config, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgecache.writeback"],
            env={
                **os.environ,
                "EDGECACHE_DATA_DIR": config.data_dir,
                "EDGECACHE_NATS__URL": config.nats.url,
                "EDGECACHE_LOG__JSON": "true",
                **env,
            },
            stdout=out,
            stderr=out,
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_log(process: subprocess.Popen[bytes], log: Path, line: bytes) -> None:
    deadline = time.monotonic() + 30
    while line not in log.read_bytes():  # noqa: ASYNC240 - a small log, polled
        assert process.poll() is None, _tail(log)
        assert time.monotonic() < deadline, f"no {line!r} in {log}"
        await asyncio.sleep(0.02)


async def in_flight(js: Any) -> int:
    """Intents delivered and not yet acked, over all partitions."""
    pending = 0
    for p in range(subjects.WRITEBACK_PARTITIONS):
        info = await js.consumer_info(subjects.WRITEBACK_STREAM, subjects.writeback_consumer(p))
        pending += info.num_ack_pending
    return pending


async def test_a_killed_writeback_leaves_its_intents_to_the_next_within_seconds(
    server: NatsServer, silent_origin: str, tmp_path: Path
) -> None:
    assert WritebackConfig().ack_wait_s == 4.0  # the default this measures
    origin = tmp_path / "origin"
    config = load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": server.url, "request_timeout_s": 10.0},
            "origin": {"path": str(origin)},
            "cachenode": {"chunk_bytes": MiB, "node_id": "node-wb"},
        },
    )
    a_log = tmp_path / "writeback-a.log"
    a = spawn_writeback(
        config,
        a_log,
        EDGECACHE_ORIGIN__KIND="s3",
        EDGECACHE_ORIGIN__ENDPOINT_URL=silent_origin,
        EDGECACHE_ORIGIN__REGION="us-east-1",
        AWS_ACCESS_KEY_ID="silent",
        AWS_SECRET_ACCESS_KEY="silent",
    )
    async with AsyncExitStack() as stack:
        stack.callback(_reap, a)
        await start_node(config, stack)
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.drain)
        client = EdgecacheClient(nc, timeout_s=10.0)
        await wait_log(a, a_log, b"writeback.started")
        await client.request(wire.CreateBucket(bucket="wbfail"))
        for key in KEYS:
            await client.put_object(wire.PutObject(bucket="wbfail", key=key), _body(key))
        js = nc.jetstream()
        partitions = {subjects.writeback_partition("wbfail", k) for k in KEYS} | {
            subjects.writeback_partition("wbfail", "")
        }
        while await in_flight(js) < len(partitions):  # A holds one intent of each partition
            await asyncio.sleep(0.05)

        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.wait()
        b_log = tmp_path / "writeback-b.log"
        b = spawn_writeback(config, b_log, EDGECACHE_ORIGIN__PATH=str(origin))
        try:
            while not all((origin / "wbfail" / k).is_file() for k in KEYS):
                assert b.poll() is None, _tail(b_log)
                assert time.monotonic() - killed < 30, _tail(b_log)
                await asyncio.sleep(0.05)
            took = time.monotonic() - killed
            started = b_log.read_bytes().count(b"writeback.started")
            print(
                f"\nbacklog moved by the next writeback {took:.2f} s after the kill (B started: {started})"
            )
            assert took < RECOVER_WITHIN_S
            for k in KEYS:
                assert (origin / "wbfail" / k).read_bytes() == _bytes(k)
        finally:
            b.terminate()
            b.wait(15)


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _bytes(key: str) -> bytes:
    return key.encode() * (200_000 // len(key))


async def _body(key: str) -> AsyncIterator[bytes]:
    yield _bytes(key)
