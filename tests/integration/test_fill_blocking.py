"""Fills from an origin with blocking reads (S3, here moto): a run's bytes go from the
origin's socket to the chunk file in one of the filler's worker threads, never through the
event loop. What readers get, and what a failure or a stop leaves behind, is what any fill
gives."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from functools import partial
from typing import Any

import pytest
import pytest_asyncio

from edgecache.common import errors, wire
from tests.fixtures.origins import unique_bucket
from tests.fixtures.readthrough import CHUNK, RUN, origin_gets, origin_put, readthrough_node

_seed = partial(origin_put, content_type="application/x-seed")


@pytest.fixture
def s3_origin_section(moto_server: str) -> dict[str, Any]:
    return {"kind": "s3", "endpoint_url": moto_server, "region": "us-east-1"}


@pytest_asyncio.fixture(loop_scope="session")
async def s3_node(s3_origin_section, make_config, nc):
    """A cache node (1 MiB chunks, 4-chunk runs) in front of moto; cached copies are not
    revalidated for a minute (a change in the origin is found by a fill)."""
    async with readthrough_node(make_config, nc, "pump", origin=s3_origin_section, revalidate_after_s=60) as both:
        yield both


async def _read(client: Any, bucket: str, key: str, range_: str | None = None) -> bytes:
    _, body = await client.get_object(wire.GetObject(bucket=bucket, key=key, range=range_))
    return b"".join([piece async for piece in body])


async def test_every_run_is_filled_in_a_worker_thread(s3_node, monkeypatch) -> None:
    node, client = s3_node
    bucket = unique_bucket("pump")
    data = os.urandom(13 * CHUNK + 5)
    await _seed(node, bucket, "k", data)
    opened_in: list[str] = []
    blocking = node.origin.open_range_blocking

    def spy(*args: Any, **kwargs: Any) -> Any:
        opened_in.append(threading.current_thread().name)
        return blocking(*args, **kwargs)

    async def on_the_loop(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a fill read the origin on the event loop")
        yield  # pragma: no cover

    monkeypatch.setattr(node.origin, "open_range_blocking", spy)
    monkeypatch.setattr(node.origin, "get_range", on_the_loop)
    monkeypatch.setattr(node.origin, "open_range", on_the_loop)
    fills = node.counters.fills
    assert await _read(client, bucket, "k") == data
    assert node.counters.fills - fills == origin_gets(14)
    # every run is one blocking GET in a thread of the filler's own pool, the cold miss's
    # first too (its answer names the version)
    assert len(opened_in) == origin_gets(14)
    assert all(name.startswith("fill") for name in opened_in), opened_in
    for i, chunk in enumerate((await node.get_manifest(bucket, "k"))[0].chunks):
        assert await node.store.read(chunk.id) == data[i * CHUNK : (i + 1) * CHUNK]


async def test_a_fill_that_finds_the_object_changed_forgets_the_version(s3_node) -> None:
    node, client = s3_node
    bucket = unique_bucket("changed")
    old, new = os.urandom(3 * RUN * CHUNK), os.urandom(3 * RUN * CHUNK)
    await _seed(node, bucket, "k", old)
    assert await _read(client, bucket, "k", f"bytes=0-{CHUNK - 1}") == old[:CHUNK]  # adopts `old`, fills one run
    await _seed(node, bucket, "k", new)  # behind the cache's back, same size
    far = f"bytes={2 * RUN * CHUNK}-{2 * RUN * CHUNK + 9}"  # a run not filled yet: a blocking GET If-Match old
    with pytest.raises(errors.ServiceUnavailable, match="changed in the origin"):
        await _read(client, bucket, "k", far)
    assert await _read(client, bucket, "k", far) == new[2 * RUN * CHUNK : 2 * RUN * CHUNK + 10]
    assert await _read(client, bucket, "k") == new


async def test_a_stopped_fill_leaves_no_temp_file_and_no_torn_chunk(s3_origin_section, make_config, nc) -> None:
    async with readthrough_node(make_config, nc, "stop", origin=s3_origin_section) as (node, client):
        bucket = unique_bucket("stop")
        data = os.urandom(48 * CHUNK)
        await _seed(node, bucket, "k", data)
        _, body = await client.get_object(wire.GetObject(bucket=bucket, key="k"))
        received = len(await anext(body))
        while not node.filler.active:  # the prefetched runs are on their way
            received += len(await anext(body))
        started = time.monotonic()
        await node.filler.close()
        assert time.monotonic() - started < 5
        with pytest.raises(errors.S3Error):  # the reader is cut: what was not filled is not sent
            async for piece in body:
                received += len(piece)
        assert received < len(data)
        await asyncio.sleep(0.2)  # the threads have returned; nothing is left in flight
        assert not list((node.store.root / "tmp").iterdir())
        for i, chunk in enumerate((await node.get_manifest(bucket, "k"))[0].chunks):
            if node.store.has(chunk.id):  # what is in the store is whole
                assert await node.store.read(chunk.id) == data[i * CHUNK : (i + 1) * CHUNK]
