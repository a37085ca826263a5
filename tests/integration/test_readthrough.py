"""Read-through caching against a real origin: cold and warm reads, single-flight fills,
range fills, revalidation of objects changed or deleted directly in the origin."""

from __future__ import annotations

import asyncio
import os
from functools import partial

import pytest
import pytest_asyncio

from edgecache.common import errors, wire
from tests.fixtures.readthrough import CHUNK, one, origin_gets, origin_put, readthrough_node

_origin_put = partial(origin_put, content_type="application/x-test")


@pytest_asyncio.fixture(loop_scope="session")
async def rt(make_config, nc):
    """A cache node over a file origin that the test writes into directly."""
    async with readthrough_node(
        make_config, nc, "rt", timeout_s=10.0, window_frames=4, revalidate_after_s=0.2
    ) as node_and_client:
        yield node_and_client


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3])
async def test_cold_then_warm_reads_are_identical(rt, bucket_name, size) -> None:
    node, client = rt
    data = os.urandom(size)
    await _origin_put(node, bucket_name, "obj", data)
    fills = node.counters.fills
    info, cold = await client.get_object_bytes(bucket_name, "obj")
    assert cold == data and info.size == size and info.content_type == "application/x-test"
    gets = origin_gets(-(-size // CHUNK))
    assert node.counters.fills - fills == gets
    _, warm = await client.get_object_bytes(bucket_name, "obj")
    assert warm == data
    assert node.counters.fills - fills == gets  # the warm read filled nothing


async def test_concurrent_cold_gets_fill_each_chunk_once(rt, bucket_name) -> None:
    node, client = rt
    data = os.urandom(6 * CHUNK + 11)
    await _origin_put(node, bucket_name, "hot", data)
    fills = node.counters.fills
    results = await asyncio.gather(*[client.get_object_bytes(bucket_name, "hot") for _ in range(8)])
    assert all(body == data for _, body in results)
    assert node.counters.fills - fills == origin_gets(7)


async def test_cold_range_fills_only_covering_chunks(rt, bucket_name) -> None:
    node, client = rt
    data = os.urandom(10 * CHUNK)
    await _origin_put(node, bucket_name, "big", data)
    fills = node.counters.fills
    first, last = 4 * CHUNK + 10, 5 * CHUNK + 10
    _, body = await client.get_object(wire.GetObject(bucket=bucket_name, key="big", range=f"bytes={first}-{last}"))
    assert b"".join([p async for p in body]) == data[first : last + 1]
    assert node.counters.fills - fills == 1  # one GET for the two chunks under the range
    while node.filler.active:  # the last chunk commits just after its last byte went out
        await asyncio.sleep(0.01)
    manifest = (await node.get_manifest(bucket_name, "big"))[0]
    held = [i for i, c in enumerate(manifest.chunks) if node.store.has(c.id)]
    assert held == [4, 5]  # nothing outside the range was filled


async def test_origin_changes_are_seen_after_revalidation(rt, bucket_name) -> None:
    node, client = rt
    await _origin_put(node, bucket_name, "k", b"first version")
    assert (await client.get_object_bytes(bucket_name, "k"))[1] == b"first version"
    await _origin_put(node, bucket_name, "k", b"second, longer version")
    await asyncio.sleep(0.3)  # past revalidate_after_s
    assert (await client.get_object_bytes(bucket_name, "k"))[1] == b"second, longer version"
    await node.origin.delete_object(bucket_name, "k")
    await asyncio.sleep(0.3)
    with pytest.raises(errors.NoSuchKey):
        await client.get_object_bytes(bucket_name, "k")


async def test_listing_merges_origin_with_pending_writes(rt, bucket_name) -> None:
    node, client = rt
    for key in ("a", "c", "d/1"):
        await _origin_put(node, bucket_name, key, key.encode())
    await client.put_object(wire.PutObject(bucket=bucket_name, key="b", size=1), one(b"b"))
    await client.request(wire.DeleteObject(bucket=bucket_name, key="c"))
    page = await client.request(wire.ListObjects(bucket=bucket_name, delimiter="/"))
    assert [o.key for o in page.contents] == ["a", "b"]
    assert page.common_prefixes == ["d/"]
    buckets = await client.request(wire.ListBuckets())
    assert bucket_name in [b.name for b in buckets.buckets]
