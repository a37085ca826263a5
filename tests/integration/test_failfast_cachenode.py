"""Fail fast: a cache node killed (SIGKILL) with a request in flight costs its requester
about ``nats.heartbeat_timeout_s`` (2 s), not ``nats.request_timeout_s`` (here 30 s).

The node runs as a process of its own (``python -m edgecache.cachenode``), so that it can
be killed for real; the gateway runs in the test's loop, both on a nats-server of this
module's own (no other test's node may answer in the queue group).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import nats
import pytest
import pytest_asyncio

from edgecache.common import errors, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import Config, load_config
from edgecache.gateway.app import create_app
from edgecache.gateway.httpprotocol import protocol_class
from edgecache.gateway.service import asgi
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving

MiB = 1024 * 1024
AK, SK = "AKIAFAILFAST", "fail-fast-secret"
REQUEST_TIMEOUT_S = 30.0
#: the bound asserted: heartbeat_timeout_s (2 s) plus slack for a loaded 2-core box
FAIL_WITHIN_S = 3.5

pytestmark = pytest.mark.asyncio(loop_scope="module")


class NodeProcess:
    """A cache node in a process of its own, started and SIGKILLed at will."""

    def __init__(self, config: Config, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "EDGECACHE_DATA_DIR": str(data_dir),
            "EDGECACHE_NATS__URL": config.nats.url,
            "EDGECACHE_CACHENODE__CHUNK_BYTES": str(MiB),
            "EDGECACHE_CACHENODE__NODE_ID": "node-failfast",
            "EDGECACHE_LOG__JSON": "true",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "cachenode.log"

    def spawn(self) -> None:
        """Start the process (see :meth:`ready`)."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgecache.cachenode"], env=self.env, stdout=out, stderr=out
            )

    async def ready(self) -> None:
        """Wait until the spawned node serves."""
        assert self.process is not None
        deadline = time.monotonic() + 30
        while b"cachenode.started" not in self.log.read_bytes()[self._offset :]:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the cache node did not start"
            await asyncio.sleep(0.02)

    def kill(self) -> float:
        """SIGKILL the node; the time of the kill (``time.monotonic()``)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        self.process.wait()
        return killed

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def chunk_files(self) -> int:
        return sum(1 for p in (self.data_dir / "cachenode").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path_factory.mktemp("nats-failfast"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def config(server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path_factory.mktemp("failfast")),
            "nats": {"url": server.url, "request_timeout_s": REQUEST_TIMEOUT_S},
            "gateway": {
                "access_key": AK,
                "secret_key": SK,
                "memory_tier_bytes": 0,
                "short_circuit": False,
            },
        },
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def node(config: Config) -> AsyncIterator[NodeProcess]:
    n = NodeProcess(config, Path(config.data_dir))
    n.spawn()
    await n.ready()
    yield n
    n.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def nc(server: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(server.url)
    yield conn
    await conn.drain()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def endpoint(config: Config, nc: Any, node: NodeProcess) -> AsyncIterator[str]:  # noqa: ARG001
    async with serving(asgi(create_app(config, nc)), http=protocol_class()) as url:  # as served
        yield url


def s3(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"total_max_attempts": 1},
        ),
    )


async def test_download_from_a_killed_node_fails_in_seconds(nc: Any, node: NodeProcess) -> None:
    client = EdgecacheClient(nc, timeout_s=REQUEST_TIMEOUT_S, window_frames=2)
    await client.request(wire.CreateBucket(bucket="down"))

    async def body() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield os.urandom(MiB)

    await client.put_object(wire.PutObject(bucket="down", key="big"), body())
    _, pieces = await client.get_object(wire.GetObject(bucket="down", key="big"))
    await anext(pieces)  # the stream runs; with 2 frames of credit the node waits for us
    killed = node.kill()
    node.spawn()  # the next test's node: it starts while this one waits
    with pytest.raises(errors.ServiceUnavailable):
        async for _ in pieces:
            pass
    took = time.monotonic() - killed
    print(f"\nGET stream broke {took:.2f} s after the node was killed")
    assert took < FAIL_WITHIN_S
    await node.ready()


async def test_put_in_flight_to_a_killed_node_is_503_in_seconds(
    endpoint: str, node: NodeProcess
) -> None:
    client = s3(endpoint)
    await asyncio.to_thread(client.create_bucket, Bucket="put")
    url = await asyncio.to_thread(
        client.generate_presigned_url,
        "put_object",
        Params={"Bucket": "put", "Key": "big"},
        ExpiresIn=300,
    )
    target = url.removeprefix(endpoint)
    port = int(endpoint.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 64 * MiB
    writer.write(
        f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    before = node.chunk_files()
    piece = os.urandom(MiB)
    for _ in range(6):  # more than the node's upload window: the gateway then waits for credit
        writer.write(piece)
    await writer.drain()
    while node.chunk_files() <= before:  # the node is writing the object's first chunks
        await asyncio.sleep(0.01)
    killed = node.kill()
    status = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
    took = time.monotonic() - killed
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    error = await reader.readexactly(length)
    writer.close()
    print(
        f"\nPUT in flight answered {status.strip().decode()} {took:.2f} s after the node was killed"
    )
    assert status.startswith(b"HTTP/1.1 503"), status
    assert b"<Code>ServiceUnavailable</Code>" in error
    assert took < FAIL_WITHIN_S

    # and the next request, with no node left at all, gets its 503 at once (no responders)
    started = time.monotonic()
    with pytest.raises(client.exceptions.ClientError) as caught:
        await asyncio.to_thread(client.head_object, Bucket="put", Key="big")
    took = time.monotonic() - started
    print(f"HEAD with no node answered {caught.value.response['Error']['Code']} in {took:.2f} s")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert took < FAIL_WITHIN_S
