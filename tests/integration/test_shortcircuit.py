"""Short-circuit reads: a gateway on the cache node's host reads cache hits from the chunk
files (edgecache.gateway.shortcircuit, edgecache.cachenode.shortcircuit) and sends the same
bytes as the framed stream; a corrupt chunk file is never served; leases are released."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import botocore.config
import nats
import pytest_asyncio

from edgecache.common import wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import Config
from edgecache.common.hostid import host_id
from edgecache.gateway.app import create_app
from edgecache.gateway.shortcircuit import LocalReads
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving
from tests.fixtures.nodes import wait_committed
from tests.fixtures.readthrough import origin_put

AK, SK = "AKIASHORTCIRCUIT", "short-circuit-secret"
MiB = 1024 * 1024


class Gateway:
    def __init__(self, endpoint: str, app: Any) -> None:
        self.endpoint = endpoint
        self.app = app

    @property
    def local(self) -> Any:
        return self.app.state.gateway.local

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )


@contextlib.asynccontextmanager
async def _gateway(nats_server: NatsServer, config: Config) -> AsyncIterator[Gateway]:
    nc = await nats.connect(nats_server.url)
    app = create_app(config, nc)
    try:
        async with serving(app) as url:
            yield Gateway(url, app)
    finally:
        await nc.drain()


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(
    nats_server: NatsServer, cachenode: Any, make_config: Callable[..., Config]
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """(short-circuit gateway, streaming-only gateway), both in front of ``cachenode``."""
    local = make_config(gateway={"access_key": AK, "secret_key": SK})
    streamed = make_config(gateway={"access_key": AK, "secret_key": SK, "short_circuit": False})
    async with _gateway(nats_server, local) as a, _gateway(nats_server, streamed) as b:
        assert a.local is not None and b.local is None
        yield a, b


async def _get(gw: Gateway, bucket: str, key: str, range_: str | None = None) -> bytes:
    def run() -> bytes:
        kwargs = {"Range": range_} if range_ else {}
        return gw.s3().get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()

    return await asyncio.to_thread(run)


async def _cached_object(node: Any, client: EdgecacheClient, bucket: str, key: str, size: int) -> bytes:
    """An object in the (file) origin, read once through the node so every chunk is cached."""
    data = os.urandom(size)
    await origin_put(node, bucket, key, data, content_type="application/x-test")
    _, got = await client.get_object_bytes(bucket, key)
    assert got == data
    await wait_committed(node, bucket, key)
    return data


async def _no_files(span: wire.FileSpan) -> AsyncIterator[bytes]:
    raise AssertionError(f"a file frame was not expected: {span}")
    yield b""  # pragma: no cover - makes this an async generator


async def _wait_no_leases(node: Any) -> None:
    for _ in range(200):
        if len(node.store.leases) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(node.store.leases)} leases still held")


RANGES = [
    None,
    "bytes=0-0",
    "bytes=1000000-2500000",  # crosses two chunk boundaries
    f"bytes={MiB - 1}-{MiB}",  # the last byte of one chunk and the first of the next
    f"bytes={MiB}-{2 * MiB - 1}",  # exactly one chunk
    "bytes=-1500000",  # suffix
    f"bytes={3 * MiB}-",  # the tail
]


async def test_short_circuit_and_stream_give_identical_bytes(
    gateways: tuple[Gateway, Gateway], cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    local, streamed = gateways
    data = await _cached_object(cachenode, client, bucket_name, "big/obj", 3 * MiB + 12345)
    for range_ in RANGES:
        plans, completed = local.local.plans, local.local.completed
        fast = await _get(local, bucket_name, "big/obj", range_)
        slow = await _get(streamed, bucket_name, "big/obj", range_)
        assert fast == slow, range_
        if range_ is None:
            assert fast == data
        assert local.local.plans == plans + 1, range_  # the short-circuit path was taken
        assert local.local.completed == completed + 1, range_
    assert local.local.fallbacks == 0 and local.local.resumed == 0
    # more readers at once than buffers: all whole, every buffer given back
    bodies = await asyncio.gather(*(_get(local, bucket_name, "big/obj") for _ in range(8)))
    assert all(b == data for b in bodies)
    assert local.local.in_use == 0
    await _wait_no_leases(cachenode)
    assert cachenode.store.leases.released >= len(RANGES)


async def test_a_dirty_object_just_written_is_read_from_its_files(
    gateways: tuple[Gateway, Gateway], cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    local, _ = gateways
    await client.request(wire.CreateBucket(bucket=bucket_name))
    data = os.urandom(2 * MiB + 7)

    async def body() -> AsyncIterator[bytes]:
        yield data

    await client.put_object(wire.PutObject(bucket=bucket_name, key="w", size=len(data)), body())
    plans = local.local.plans
    assert await _get(local, bucket_name, "w") == data
    assert local.local.plans == plans + 1


def _corrupt(node: Any, chunk_id: str) -> None:
    paths = node.store.paths_of(chunk_id)
    path = next(p for p in paths if p.exists())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # a payload byte: the CRC32C no longer matches
    path.write_bytes(raw)


async def test_a_corrupt_first_chunk_is_never_served_the_get_streams_instead(
    gateways: tuple[Gateway, Gateway], cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    local, _ = gateways
    data = await _cached_object(cachenode, client, bucket_name, "c1", 3 * MiB)
    manifest = (await cachenode.catalog.get(bucket_name, "c1")).manifest
    _corrupt(cachenode, manifest.chunks[0].id)
    fallbacks = local.local.fallbacks
    assert await _get(local, bucket_name, "c1") == data  # the node refetched the chunk
    assert local.local.fallbacks == fallbacks + 1
    await _wait_no_leases(cachenode)


async def test_a_corrupt_later_chunk_is_never_served_the_rest_is_streamed(
    gateways: tuple[Gateway, Gateway], cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    local, _ = gateways
    data = await _cached_object(cachenode, client, bucket_name, "c2", 4 * MiB + 1)
    manifest = (await cachenode.catalog.get(bucket_name, "c2")).manifest
    _corrupt(cachenode, manifest.chunks[2].id)
    resumed, failed = local.local.resumed, local.local.failed_chunks
    assert await _get(local, bucket_name, "c2") == data
    assert local.local.resumed == resumed + 1 and local.local.failed_chunks == failed + 1
    # a range starting in the (now refetched) chunk reads from the files again
    assert await _get(local, bucket_name, "c2", f"bytes={2 * MiB + 5}-") == data[2 * MiB + 5 :]
    await _wait_no_leases(cachenode)


async def test_a_missing_chunk_file_falls_back(
    gateways: tuple[Gateway, Gateway], cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    local, _ = gateways
    data = await _cached_object(cachenode, client, bucket_name, "gone", 2 * MiB)
    manifest = (await cachenode.catalog.get(bucket_name, "gone")).manifest
    for path in cachenode.store.paths_of(manifest.chunks[0].id):
        path.unlink(missing_ok=True)  # behind the node's back
    fallbacks = local.local.fallbacks
    assert await _get(local, bucket_name, "gone") == data
    assert local.local.fallbacks == fallbacks + 1


async def test_plans_only_for_this_host_and_leases_pin_until_released(
    cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    await _cached_object(cachenode, client, bucket_name, "p", 2 * MiB + 3)
    request = wire.GetObject(bucket=bucket_name, key="p", range="bytes=10-1048600")
    # a plain request, or one from another host, streams
    for other in (None, "another-host/x/y"):
        reply, body = await client.get_object_or_plan(
            wire.GetObject(bucket=bucket_name, key="p", local_host=other), read_file=_no_files
        )
        assert isinstance(reply, wire.ObjectInfo) and body is not None
        await body.aclose()
    reply, body = await client.get_object_or_plan(
        wire.GetObject(bucket=bucket_name, key="p", range=request.range, local_host=host_id()), read_file=_no_files
    )
    assert isinstance(reply, wire.ReadPlan) and body is None
    assert [(p.offset, p.length) for p in reply.pieces] == [(10, MiB - 10), (0, 1048600 - MiB + 1)]
    assert (reply.info.range_first, reply.info.range_last) == (10, 1048600)
    ids = [p.chunk_id for p in reply.pieces]
    assert all(cachenode.store.leases.pinned(i) for i in ids)
    assert not cachenode.store._evictable(ids[0])  # noqa: SLF001 - the eviction predicate itself
    await client.release_lease(reply)
    await _wait_no_leases(cachenode)
    assert not any(cachenode.store.leases.pinned(i) for i in ids)


async def test_a_cold_object_is_read_from_the_files_of_its_fill_then_planned_once_cached(
    cachenode: Any, client: EdgecacheClient, bucket_name: str
) -> None:
    data = os.urandom(2 * MiB + 5)
    await origin_put(cachenode, bucket_name, "cold", data, content_type="x/y")
    plans, hits_before = cachenode.counters.plans, cachenode.counters.misses
    local = LocalReads()
    request = wire.GetObject(bucket=bucket_name, key="cold", local_host=host_id())
    # not committed here: streamed as file frames, read from the fill's files as they land
    spans: list[wire.FileSpan] = []

    def read_file(span: wire.FileSpan) -> AsyncIterator[bytes]:
        spans.append(span)
        return local.read_span(span)

    reply, body = await client.get_object_or_plan(request, read_file=read_file)
    assert isinstance(reply, wire.ObjectInfo) and body is not None
    assert b"".join([piece async for piece in body]) == data
    assert local.bytes == len(data)  # every byte came from a file, none through nats-server
    assert any(not s.committed for s in spans)  # some followed the fill as it landed
    assert {s.lease_id for s in spans} == {spans[0].lease_id}  # one lease for the stream
    await client.release_lease(spans[0])
    assert cachenode.counters.plans == plans
    assert cachenode.counters.misses > hits_before
    await wait_committed(cachenode, bucket_name, "cold")
    reply, body = await client.get_object_or_plan(request, read_file=_no_files)
    assert isinstance(reply, wire.ReadPlan) and body is None
    assert cachenode.counters.plans == plans + 1
    await client.release_lease(reply)
    await _wait_no_leases(cachenode)
    local.close()
