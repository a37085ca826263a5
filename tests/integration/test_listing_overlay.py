"""Listings with a delimiter merge one origin level with the dirty overlay."""

from __future__ import annotations

from functools import partial

import pytest_asyncio

from edgecache.common import wire
from tests.fixtures.readthrough import one, origin_put, readthrough_node

_origin_put = partial(origin_put, content_type="text/plain")


@pytest_asyncio.fixture(loop_scope="session")
async def lst(make_config, nc):
    """A cache node over a file origin the test writes into directly (no write-back runs,
    so the node's writes stay dirty)."""
    async with readthrough_node(make_config, nc, "lst", timeout_s=10.0) as node_and_client:
        yield node_and_client


async def test_tombstones_hide_a_whole_origin_prefix(lst, bucket_name) -> None:
    node, client = lst
    for key in ("p/1", "p/2", "q/1", "r"):
        await _origin_put(node, bucket_name, key, key.encode())
    await client.request(wire.DeleteObject(bucket=bucket_name, key="p/1"))
    page = await client.request(wire.ListObjects(bucket=bucket_name, delimiter="/"))
    assert (page.common_prefixes, [o.key for o in page.contents]) == (["p/", "q/"], ["r"])
    await client.request(wire.DeleteObject(bucket=bucket_name, key="p/2"))
    page = await client.request(wire.ListObjects(bucket=bucket_name, delimiter="/"))
    assert (page.common_prefixes, [o.key for o in page.contents]) == (["q/"], ["r"])
    await client.put_object(wire.PutObject(bucket=bucket_name, key="p/3", size=1), one(b"3"))
    page = await client.request(wire.ListObjects(bucket=bucket_name, delimiter="/", max_keys=1))
    assert (page.common_prefixes, page.is_truncated) == (["p/"], True)
    token = page.next_token
    page = await client.request(
        wire.ListObjects(bucket=bucket_name, delimiter="/", continuation_token=token)
    )
    assert (page.common_prefixes, [o.key for o in page.contents]) == (["q/"], ["r"])
