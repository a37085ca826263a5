"""Two cache nodes, one origin: a cold object is filled once across the cluster, by its
owner (rendezvous hash over the live nodes), and the other node streams it from there."""

from __future__ import annotations

import asyncio
import os
import secrets
from contextlib import AsyncExitStack

from edgecache.cachenode import readthrough
from edgecache.cachenode.service import start_node
from edgecache.common import placement, wire
from edgecache.common.client import EdgecacheClient
from tests.fixtures.nodes import beat, forget, sees

MiB = 1024 * 1024


async def _one(data: bytes):
    yield data


async def test_cold_object_is_filled_once_across_two_nodes(make_config, nc, tmp_path) -> None:
    origin_dir = str(tmp_path / "shared-origin")
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("a", "b"):
            config = make_config(
                cachenode={"chunk_bytes": MiB, "fill_run_bytes": MiB, "node_id": f"{name}-{secrets.token_hex(3)}"},
                origin={"kind": "file", "path": origin_dir},
            )
            nodes.append(await start_node(config, stack))
        for node in nodes:
            await beat(node)
        for node in nodes:
            await sees(node, {n.node_id for n in nodes})
        bucket = f"cluster-{secrets.token_hex(4)}"
        data = os.urandom(6 * MiB + 7)
        await nodes[0].origin.create_bucket(bucket)
        await nodes[0].origin.put_object(bucket, "hot", _one(data), size=len(data))
        owner_id = placement.owner(bucket, "hot", [n.node_id for n in nodes])
        owner = next(n for n in nodes if n.node_id == owner_id)
        other = next(n for n in nodes if n.node_id != owner_id)

        client = EdgecacheClient(nc, timeout_s=20.0, window_frames=8)
        # ten cold GETs at once through both nodes: the owner adopts HEAD-less while the other
        # node may HEAD and create first; both name the origin's object with the same version
        # id (docs/architecture.md, change 38), so each chunk is filled once (before: 14
        # fills, not 7, in 3 to 4 runs of 10 under load)
        results = await asyncio.gather(*[client.get_object_bytes(bucket, "hot") for _ in range(10)])
        assert all(body == data for _, body in results)
        assert owner.counters.fills == 7 and other.counters.fills == 0  # 7 chunks, each fetched once

        # the other node has nothing cached: reading through it still costs the origin nothing
        fills = owner.counters.fills
        manifest = await other.catalog.get(bucket, "hot")
        body = b"".join([p async for p in readthrough.read(other, manifest[0], 0, len(data) - 1)])
        assert body == data and owner.counters.fills == fills
        await forget(nc, nodes)


async def test_an_acknowledged_write_survives_the_node_that_took_it(make_config, nc, tmp_path) -> None:
    stacks = {name: AsyncExitStack() for name in ("a", "b")}
    nodes = {}
    try:
        for name, stack in stacks.items():
            config = make_config(cachenode={"chunk_bytes": MiB, "replicas": 2, "node_id": f"{name}-{secrets.token_hex(3)}"},
                                 origin={"kind": "file", "path": str(tmp_path / "origin")})
            nodes[name] = await start_node(config, stack)
        for node in nodes.values():
            await beat(node)
        for node in nodes.values():
            await sees(node, {n.node_id for n in nodes.values()})
        client = EdgecacheClient(nc, timeout_s=20.0, window_frames=8)
        bucket = f"repl-{secrets.token_hex(4)}"
        await client.request(wire.CreateBucket(bucket=bucket))
        data = os.urandom(3 * MiB + 5)
        await client.put_object(wire.PutObject(bucket=bucket, key="k", size=len(data)), _one(data))
        manifest = (await nodes["a"].catalog.get(bucket, "k"))[0]
        both = {n.node_id for n in nodes.values()}
        assert all(set(c.nodes) == both for c in manifest.chunks) and set(manifest.nodes) == both
        for node in nodes.values():  # a pinned copy on each node
            assert all(node.store.is_dirty(c.id) for c in manifest.chunks)

        taker = next(name for name, n in nodes.items() if n.node_id == manifest.chunks[0].nodes[0])
        survivor = next(name for name in nodes if name != taker)
        await stacks.pop(taker).aclose()  # the node that acknowledged the write is gone
        info, body = await client.get_object_bytes(bucket, "k")
        assert body == data and info.etag == manifest.etag

        # an overwrite (one node left: one copy) releases the old version's replicas
        await client.put_object(wire.PutObject(bucket=bucket, key="k", size=2), _one(b"v2"))
        keeper = nodes[survivor]
        for _ in range(100):
            if not any(keeper.store.is_dirty(c.id) for c in manifest.chunks):
                break
            await asyncio.sleep(0.02)
        assert not any(keeper.store.is_dirty(c.id) for c in manifest.chunks)
        assert (await client.get_object_bytes(bucket, "k"))[1] == b"v2"
    finally:
        for stack in stacks.values():
            await stack.aclose()
        await forget(nc, nodes.values())
