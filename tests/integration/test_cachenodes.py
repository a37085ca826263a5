"""Several cache nodes on one site: losing one node (process and disk) loses no dirty data,
since every dirty chunk has a replica on a peer; ``cachenode.min_replicas`` refuses a write
rather than acknowledge it with fewer copies."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import AsyncExitStack

import pytest

from edgecache.cachenode.service import start_node
from edgecache.common import errors, wire
from edgecache.common.client import EdgecacheClient
from tests.fixtures.nodes import beat, forget, sees

KiB = 1024
CHUNK = 64 * KiB


async def _one(data: bytes):
    yield data


async def _start(make_config, names, origin_dir, **cachenode) -> tuple[dict, dict]:
    """Start nodes ``names`` (each its own data dir), each seeing all of them live."""
    stacks, nodes = {}, {}
    for name in names:
        config = make_config(
            cachenode={
                "chunk_bytes": CHUNK,
                "node_id": f"{name}-{secrets.token_hex(3)}",
                **cachenode,
            },
            origin={"kind": "file", "path": origin_dir},
        )
        stacks[name] = AsyncExitStack()
        nodes[name] = await start_node(config, stacks[name])
    for node in nodes.values():
        await beat(node)
    for node in nodes.values():
        await sees(node, {n.node_id for n in nodes.values()})
    return stacks, nodes


async def _lose(nc, stacks: dict, nodes: dict, name: str) -> None:
    """Node ``name`` is gone with its disk; the others see it leave."""
    node = nodes.pop(name)
    await stacks.pop(name).aclose()
    shutil.rmtree(node.config.cachenode_dir())
    await forget(nc, [node])
    for other in nodes.values():
        await sees(other, {n.node_id for n in nodes.values()})


async def test_losing_one_of_three_nodes_and_its_disk_loses_no_dirty_object(
    make_config, nc, tmp_path
) -> None:
    stacks, nodes = await _start(make_config, "abc", str(tmp_path / "origin"), replicas=2)
    try:
        client = EdgecacheClient(nc, timeout_s=20.0)
        bucket = f"nodes-{secrets.token_hex(4)}"
        await client.request(wire.CreateBucket(bucket=bucket))
        objects = {f"k{i}": os.urandom(3 * CHUNK + i) for i in range(12)}  # 4 chunks each
        for key, data in objects.items():
            await client.put_object(
                wire.PutObject(bucket=bucket, key=key, size=len(data)), _one(data)
            )
        # nothing reaches the origin here (no writeback service): every object is dirty
        assert not any((tmp_path / "origin").rglob("k*"))
        holders = {}
        for key in objects:
            manifest = (await nodes["a"].catalog.get(bucket, key)).manifest
            assert all(len(set(c.nodes)) == 2 for c in manifest.chunks)
            holders.update({c.id: c.nodes for c in manifest.chunks})
        # the node lost is one that took writes first-hand (which node a PUT reaches is the
        # queue group's pick: "a" alone got none in about one run in a hundred)
        first_hand = {ns[0] for ns in holders.values()}
        lost = next(name for name in sorted(nodes) if nodes[name].node_id in first_hand)

        await _lose(nc, stacks, nodes, lost)
        for key, data in objects.items():
            info, body = await client.get_object_bytes(bucket, key)
            assert body == data, key
    finally:
        for stack in stacks.values():
            await stack.aclose()
        await forget(nc, nodes.values())


async def test_min_replicas_refuses_a_write_with_too_few_live_nodes(
    make_config, nc, tmp_path
) -> None:
    stacks, nodes = await _start(
        make_config, "ab", str(tmp_path / "origin"), replicas=2, min_replicas=2
    )
    try:
        client = EdgecacheClient(nc, timeout_s=20.0)
        bucket = f"minrep-{secrets.token_hex(4)}"
        await client.request(wire.CreateBucket(bucket=bucket))
        data = os.urandom(2 * CHUNK + 1)
        await client.put_object(
            wire.PutObject(bucket=bucket, key="two", size=len(data)), _one(data)
        )

        await _lose(nc, stacks, nodes, "b")
        (left,) = nodes.values()
        dirty_before = set(left.store.dirty_ids())
        with pytest.raises(errors.ServiceUnavailable, match="min_replicas"):
            await client.put_object(
                wire.PutObject(bucket=bucket, key="one", size=len(data)), _one(data)
            )
        with pytest.raises(errors.NoSuchKey):
            await client.request(wire.HeadObject(bucket=bucket, key="one"))
        assert set(left.store.dirty_ids()) == dirty_before  # nothing of it kept
        assert (await client.get_object_bytes(bucket, "two"))[1] == data  # reads go on
    finally:
        for stack in stacks.values():
            await stack.aclose()
        await forget(nc, nodes.values())
