"""The HEAD-less cold GET, through a cache node over each real origin (file, moto S3,
Azurite): the first ranged GET of the origin gives the object's attributes, no HEAD is
made, the manifest recorded from it matches the origin, and a cold range of the middle
fetches only the chunks under it."""

from __future__ import annotations

import asyncio
import os

import pytest
import pytest_asyncio

from edgecache.common import errors, wire
from tests.fixtures.origins import unique_bucket
from tests.fixtures.readthrough import CHUNK, origin_gets, readthrough_node

HEADERS = {"cache-control": "max-age=60", "content-language": "en"}
METADATA = {"color": "blue"}


def _origin_section(kind: str, request: pytest.FixtureRequest) -> dict:
    if kind == "s3":
        return {
            "kind": "s3",
            "endpoint_url": request.getfixturevalue("moto_server"),
            "region": "us-east-1",
        }
    if kind == "azure":
        return {"kind": "azure", "connection_string": request.getfixturevalue("azurite")}
    return {"kind": "file"}


@pytest_asyncio.fixture(loop_scope="session", params=["file", "s3", "azure"])
async def node_on(request, make_config, nc, monkeypatch):
    """A cache node (1 MiB chunks, 4-chunk fill runs) over each kind of origin, a client,
    and the list of the origin HEADs it makes."""
    async with readthrough_node(
        make_config, nc, "hl", origin=_origin_section(request.param, request)
    ) as (
        node,
        client,
    ):
        heads: list[str] = []
        head_object = node.origin.head_object

        async def counted(bucket: str, key: str):  # noqa: ANN202 - the origin's own answer
            heads.append(key)
            return await head_object(bucket, key)

        monkeypatch.setattr(node.origin, "head_object", counted)
        yield node, client, heads


async def _seed(node, bucket: str, key: str, data: bytes) -> str:  # noqa: ANN001
    async def one():  # noqa: ANN202
        yield data

    await node.origin.create_bucket(bucket)
    return await node.origin.put_object(
        bucket,
        key,
        one(),
        size=len(data),
        content_type="application/x-seed",
        metadata=METADATA,
        headers=HEADERS,
    )


async def _get(client, bucket: str, key: str, range_: str) -> tuple[wire.ObjectInfo, bytes]:  # noqa: ANN001
    info, stream = await client.get_object(wire.GetObject(bucket=bucket, key=key, range=range_))
    return info, b"".join([p async for p in stream])


async def _manifest(node, bucket: str, key: str) -> wire.Manifest:  # noqa: ANN001
    await node.adoptions.settle(bucket, key)  # recorded in the background while the bytes went out
    found = await node.get_manifest(bucket, key)
    assert found is not None
    return found.manifest


async def test_headless_cold_reads(node_on) -> None:
    node, client, heads = node_on
    bucket = unique_bucket("hl")
    data = os.urandom(6 * CHUNK + 7)
    etag = await _seed(node, bucket, "whole", data)

    fills = node.counters.fills
    info, body = await client.get_object_bytes(bucket, "whole")
    assert body == data
    assert (info.size, info.etag, info.content_type) == (len(data), etag, "application/x-seed")
    assert (info.metadata, info.headers) == (METADATA, HEADERS)
    assert node.counters.fills - fills == origin_gets(7)  # the first run opened with the attributes
    manifest = await _manifest(node, bucket, "whole")
    assert (manifest.size, manifest.etag, manifest.origin_etag, manifest.state) == (
        len(data),
        etag,
        etag,
        "clean",
    )
    assert (manifest.metadata, manifest.headers, manifest.content_type) == (
        METADATA,
        HEADERS,
        "application/x-seed",
    )
    assert [c.size for c in manifest.chunks] == [CHUNK] * 6 + [7]
    _, warm = await client.get_object_bytes(bucket, "whole")
    assert warm == data and node.counters.fills - fills == origin_gets(7)

    # a cold range of the middle: one GET for the two chunks under it, none before them
    await _seed(node, bucket, "ranged", data)
    fills = node.counters.fills
    first, last = 3 * CHUNK - 3, 3 * CHUNK + 3
    info, body = await _get(client, bucket, "ranged", f"bytes={first}-{last}")
    assert body == data[first : last + 1]
    assert (info.size, info.range_first, info.range_last) == (len(data), first, last)
    assert node.counters.fills - fills == 1
    while node.filler.active:  # the last chunk commits just after its last byte went out
        await asyncio.sleep(0.01)
    manifest = await _manifest(node, bucket, "ranged")
    assert [i for i, c in enumerate(manifest.chunks) if node.store.has(c.id)] == [2, 3]
    assert heads == []  # not one HEAD of the origin for any of it

    # a suffix range needs the size first: a HEAD, as before
    await _seed(node, bucket, "suffix", data)
    assert (await _get(client, bucket, "suffix", "bytes=-5"))[1] == data[-5:]
    assert heads == ["suffix"]

    # a missing key is still NoSuchKey, and nothing is recorded
    with pytest.raises(errors.NoSuchKey):
        await client.get_object_bytes(bucket, "missing")
    assert await node.get_manifest(bucket, "missing") is None
    assert node.adoptions.pending(bucket, "missing") is None


async def test_an_empty_object_and_a_range_past_the_end(node_on) -> None:
    node, client, _ = node_on
    bucket = unique_bucket("he")
    await _seed(node, bucket, "empty", b"")
    info, body = await client.get_object_bytes(bucket, "empty")
    assert (info.size, body) == (0, b"")
    await _seed(node, bucket, "small", b"0123456789")
    with pytest.raises(errors.InvalidRange):
        await _get(client, bucket, "small", "bytes=10-20")
    info, body = await _get(client, bucket, "small", "bytes=4-")
    assert (info.size, body) == (10, b"456789")


async def test_a_cold_read_brings_the_origins_tags_along(node_on) -> None:
    """The adopted manifest holds the origin's tags (an expired manifest comes back with
    them), whether the GET said how many there are (S3) or carried them (file, Azure)."""
    node, client, heads = node_on
    bucket = unique_bucket("hltag")
    data = os.urandom(CHUNK + 5)

    async def one():  # noqa: ANN202
        yield data

    await node.origin.create_bucket(bucket)
    for key, tags in [("tagged", {"team": "edge", "tier": "hot"}), ("plain", {})]:
        await node.origin.put_object(bucket, key, one(), size=len(data), tags=tags or None)
        _, got = await _get(client, bucket, key, "")
        assert got == data
        assert (await _manifest(node, bucket, key)).tags == tags
    assert heads == []
