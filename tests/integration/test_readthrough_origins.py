"""Read-through against each real origin (file, moto S3, Azurite), and what clients see when
the origin fails: a fill cut half-way, the origin down with cached and uncached objects.
Eviction under a small capacity keeps dirty chunks pinned."""

from __future__ import annotations

import asyncio
import os
import sys
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio

from edgecache.common import errors, wire
from tests.fixtures.origins import _Process, unique_bucket
from tests.fixtures.ports import free_port
from tests.fixtures.readthrough import CHUNK, MiB, one, origin_gets, origin_put, readthrough_node

_seed = partial(origin_put, content_type="application/x-seed")


def _origin_section(kind: str, request: pytest.FixtureRequest) -> dict:
    if kind == "s3":
        return {"kind": "s3", "endpoint_url": request.getfixturevalue("moto_server"), "region": "us-east-1"}
    if kind == "azure":
        return {"kind": "azure", "connection_string": request.getfixturevalue("azurite")}
    return {"kind": "file"}


@pytest_asyncio.fixture(loop_scope="session", params=["file", "s3", "azure"])
async def node_on(request, make_config, nc):
    """A cache node (1 MiB chunks) in front of each kind of origin, and a client."""
    origin = _origin_section(request.param, request)
    async with readthrough_node(make_config, nc, "o", origin=origin, revalidate_after_s=0.3) as node_and_client:
        yield node_and_client


async def test_cold_and_warm_reads_of_every_size(node_on) -> None:
    node, client = node_on
    bucket = unique_bucket("rt")
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 100 * MiB]
    blobs = {f"k{size}": os.urandom(size) for size in sizes}
    for key, data in blobs.items():
        await _seed(node, bucket, key, data)
    for key, data in blobs.items():
        fills = node.counters.fills
        info, cold = await client.get_object_bytes(bucket, key)
        assert cold == data and info.size == len(data) and info.content_type == "application/x-seed"
        assert node.counters.fills - fills == origin_gets(-(-len(data) // CHUNK))
        _, warm = await client.get_object_bytes(bucket, key)
        assert warm == data
        assert node.counters.fills - fills == origin_gets(-(-len(data) // CHUNK))  # no origin GET for the warm read


async def test_single_flight_and_range_fill(node_on) -> None:
    node, client = node_on
    bucket = unique_bucket("sf")
    data = os.urandom(12 * CHUNK + 5)
    await _seed(node, bucket, "hot", data)
    fills = node.counters.fills
    got = await asyncio.gather(*[client.get_object_bytes(bucket, "hot") for _ in range(6)])
    assert all(body == data for _, body in got)
    assert node.counters.fills - fills == origin_gets(13)  # each chunk fetched from the origin once
    await _seed(node, bucket, "ranged", data)
    fills = node.counters.fills
    first, last = 7 * CHUNK - 3, 7 * CHUNK + 3
    _, body = await client.get_object(wire.GetObject(bucket=bucket, key="ranged", range=f"bytes={first}-{last}"))
    assert b"".join([p async for p in body]) == data[first : last + 1]
    assert node.counters.fills - fills == 1  # one GET for the two chunks under the range
    while node.filler.active:  # the last chunk commits just after its last byte went out
        await asyncio.sleep(0.01)
    manifest = (await node.get_manifest(bucket, "ranged"))[0]
    assert [i for i, c in enumerate(manifest.chunks) if node.store.has(c.id)] == [6, 7]


async def test_listing_merges_origin_with_pending_writes(node_on) -> None:
    node, client = node_on
    bucket = unique_bucket("ls")
    for key in ("a", "c", "d/1", "d/2"):
        await _seed(node, bucket, key, key.encode())
    await client.put_object(wire.PutObject(bucket=bucket, key="b", size=1), one(b"b"))
    await client.request(wire.DeleteObject(bucket=bucket, key="c"))
    flat = await client.request(wire.ListObjects(bucket=bucket))
    assert [o.key for o in flat.contents] == ["a", "b", "d/1", "d/2"]
    page = await client.request(wire.ListObjects(bucket=bucket, delimiter="/", max_keys=2))
    assert [o.key for o in page.contents] == ["a", "b"] and page.is_truncated
    rest = await client.request(wire.ListObjects(bucket=bucket, delimiter="/", continuation_token=page.next_token))
    assert rest.common_prefixes == ["d/"] and not rest.contents and not rest.is_truncated
    assert bucket in [b.name for b in (await client.request(wire.ListBuckets())).buckets]


async def test_changed_and_deleted_in_origin(node_on) -> None:
    node, client = node_on
    bucket = unique_bucket("ch")
    await _seed(node, bucket, "k", b"version one")
    assert (await client.get_object_bytes(bucket, "k"))[1] == b"version one"
    await _seed(node, bucket, "k", b"version two, longer")
    await asyncio.sleep(0.4)
    assert (await client.get_object_bytes(bucket, "k"))[1] == b"version two, longer"
    await node.origin.delete_object(bucket, "k")
    await asyncio.sleep(0.4)
    with pytest.raises(errors.NoSuchKey):
        await client.get_object_bytes(bucket, "k")


# -- an origin that goes away ------------------------------------------------------------------
@pytest.fixture
def own_moto(aws_test_env, tmp_path: Path):
    """A moto server of this test's own, which the test may kill."""
    port = free_port()
    server = _Process(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        port=port, log=tmp_path / "moto.log", cwd=tmp_path,
    )
    yield f"http://127.0.0.1:{port}", server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def node_on_own_moto(own_moto, make_config, nc):
    url, server = own_moto
    origin = {"kind": "s3", "endpoint_url": url, "region": "us-east-1", "timeout_s": 2.0}
    async with readthrough_node(
        make_config, nc, "m", origin=origin, window_frames=2, revalidate_after_s=0.2, fill_concurrency=2
    ) as (node, client):
        yield node, client, server


async def test_fill_cut_half_way_fails_the_read_and_keeps_no_partial_chunk(node_on_own_moto) -> None:
    node, client, server = node_on_own_moto
    bucket = unique_bucket("cut")
    data = os.urandom(40 * CHUNK)
    await _seed(node, bucket, "big", data)
    info, body = await client.get_object(wire.GetObject(bucket=bucket, key="big"))
    assert info.size == len(data)
    received = 0
    with pytest.raises(errors.S3Error):
        async for piece in body:
            received += len(piece)
            if received >= 3 * CHUNK and server.proc.poll() is None:
                server.proc.kill()  # the origin dies mid-fill
    assert 0 < received < len(data)
    manifest = (await node.get_manifest(bucket, "big"))[0]
    for chunk in manifest.chunks:  # what is in the store is whole; the rest is absent
        size = node.store.size_of(chunk.id)
        assert size in (None, chunk.size)
        if size is not None:
            index = manifest.chunks.index(chunk)
            assert await node.store.read(chunk.id) == data[index * CHUNK : (index + 1) * CHUNK]
    with pytest.raises(errors.ServiceUnavailable):  # the uncached rest cannot be served now
        await client.get_object_bytes(bucket, "big")


async def test_origin_down_serves_cached_and_refuses_uncached(node_on_own_moto) -> None:
    node, client, server = node_on_own_moto
    bucket = unique_bucket("down")
    await _seed(node, bucket, "cached", b"in the cache")
    await _seed(node, bucket, "uncached", b"only in the origin")
    assert (await client.get_object_bytes(bucket, "cached"))[1] == b"in the cache"
    server.stop()
    await asyncio.sleep(0.3)  # past revalidate_after_s: the cached copy is stale now
    assert (await client.get_object_bytes(bucket, "cached"))[1] == b"in the cache"  # stale-if-error
    with pytest.raises(errors.ServiceUnavailable) as exc:
        await client.get_object_bytes(bucket, "uncached")
    assert exc.value.retry_after_s


# -- eviction -----------------------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def small_node(make_config, nc):
    """A node with 8 MiB of cache (1 MiB chunks) and no writeback running: PUTs stay dirty."""
    async with readthrough_node(
        make_config, nc, "s", capacity_bytes=8 * CHUNK, high_watermark=0.9, low_watermark=0.5
    ) as node_and_client:
        yield node_and_client


async def test_eviction_keeps_dirty_chunks_and_refills_clean_ones(small_node) -> None:
    node, client = small_node
    bucket = unique_bucket("ev")
    await client.request(wire.CreateBucket(bucket=bucket))
    dirty = os.urandom(3 * CHUNK)
    await client.put_object(wire.PutObject(bucket=bucket, key="dirty", size=len(dirty)), one(dirty))
    cold = os.urandom(10 * CHUNK)
    await _seed(node, bucket, "cold", cold)
    evictions = node.store.stats.evictions
    assert (await client.get_object_bytes(bucket, "cold"))[1] == cold
    while node.filler.active:  # a fill commits its chunk just after handing out the last byte
        await asyncio.sleep(0.01)
    await node.store.evict()  # the node's own eviction loop may have been first: count both
    stats = node.store.stats
    assert stats.evictions > evictions
    assert stats.used_bytes <= 0.5 * 8 * CHUNK or stats.used_bytes == stats.dirty_bytes
    assert stats.dirty_bytes == 3 * CHUNK  # the un-written-back PUT is pinned
    assert (await client.get_object_bytes(bucket, "dirty"))[1] == dirty
    fills = node.counters.fills
    assert (await client.get_object_bytes(bucket, "cold"))[1] == cold  # refilled
    assert node.counters.fills > fills
    assert node.stats().evictions == node.store.stats.evictions
