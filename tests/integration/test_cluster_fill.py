"""Two cache nodes, one origin: a cold object is filled once across the cluster, by its
owner (rendezvous hash over the live nodes), and the other node streams it from there."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from contextlib import AsyncExitStack

from edgecache.common import placement, wire
from edgecache.common.client import EdgecacheClient

MiB = 1024 * 1024


async def _one(data: bytes):
    yield data


async def _beat(node) -> None:
    """What the federator does with a heartbeat: the node is in KV ``nodes``."""
    beat = wire.Heartbeat(id=secrets.token_hex(4), at_ns=time.time_ns(), node_id=node.node_id, host="test", started=node.started, stats=node.stats())
    await node.state.nodes.put(node.node_id, wire.encode(beat))


async def test_cold_object_is_filled_once_across_two_nodes(make_config, nc, tmp_path) -> None:
    from edgecache.cachenode.service import start_node

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
            await _beat(node)
        for node in nodes:
            await node.live.refresh()
            assert node.live.ids() == {n.node_id for n in nodes}
        bucket = f"cluster-{secrets.token_hex(4)}"
        data = os.urandom(6 * MiB + 7)
        await nodes[0].origin.create_bucket(bucket)
        await nodes[0].origin.put_object(bucket, "hot", _one(data), size=len(data))
        owner_id = placement.owner(bucket, "hot", [n.node_id for n in nodes])
        owner = next(n for n in nodes if n.node_id == owner_id)
        other = next(n for n in nodes if n.node_id != owner_id)

        client = EdgecacheClient(nc, timeout_s=20.0, window_frames=8)
        results = await asyncio.gather(*[client.get_object_bytes(bucket, "hot") for _ in range(10)])
        assert all(body == data for _, body in results)
        assert owner.counters.fills == 7 and other.counters.fills == 0  # 7 chunks, each fetched once

        # the other node has nothing cached: reading through it still costs the origin nothing
        fills = owner.counters.fills
        manifest = await other.get_manifest(bucket, "hot")
        from edgecache.cachenode import fill

        body = b"".join([p async for p in fill.read(other, manifest[0], 0, len(data) - 1)])
        assert body == data and owner.counters.fills == fills
