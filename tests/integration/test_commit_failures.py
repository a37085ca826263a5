"""A write whose commit fails after its manifest became current keeps its chunks.

A cache node commits a new version in steps: the manifest into KV ``objects``, then the
write-back intent into ``WRITEBACK`` (and, federated, a record into ``CHANGES``). When a
later step failed, the node used to delete the version's chunks while its manifest stayed
current: no GET could read the object again and no write-back could finish it. Here
``WRITEBACK`` is removed under a running node (a real nats-server), so the intent cannot be
appended: the PUT is answered 503 and the object still reads as the new version; once the
stream is back, the node's recovery appends the intent and the version reaches the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest

from edgecache.cachenode.service import start_node
from edgecache.common import errors, subjects, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import load_config
from edgecache.common.jetstream import ensure_state
from edgecache.launcher.natsserver import NatsServer

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_put_whose_intent_cannot_be_appended_keeps_the_version_readable(
    start_nats_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    server = start_nats_server()
    config = load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": server.url, "request_timeout_s": 10.0},
            "cachenode": {"chunk_bytes": MiB, "node_id": "node-commit"},
            "origin": {"kind": "file", "path": str(tmp_path / "origin")},
        },
    )
    async with AsyncExitStack() as stack:
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.close)
        node = await start_node(config, stack)
        client = EdgecacheClient(nc, timeout_s=10.0)
        await client.request(wire.CreateBucket(bucket="commit-bucket"))
        first = b"first version " * 1000
        await client.put_object(
            wire.PutObject(bucket="commit-bucket", key="k", size=len(first)), _body(first)
        )

        await nc.jetstream().delete_stream(subjects.WRITEBACK_STREAM)
        second = bytes(range(256)) * (3 * MiB // 256 + 7)  # four chunks
        with pytest.raises(errors.ServiceUnavailable):
            await client.put_object(
                wire.PutObject(bucket="commit-bucket", key="k", size=len(second)), _body(second)
            )

        entry = await node.catalog.get("commit-bucket", "k")
        assert entry is not None and entry.manifest.size == len(second)  # the version is current
        info, got = await client.get_object_bytes("commit-bucket", "k")
        assert got == second and info.size == len(second)  # and readable: its chunks stayed

        # the stream is back: a node's recovery (at its start) appends the missing intent
        await ensure_state(nc.jetstream())
        assert await node.catalog.recover(node.node_id) == 1
        pending = await nc.jetstream().stream_info(subjects.WRITEBACK_STREAM)
        assert pending.state.messages == 1
