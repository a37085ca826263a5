"""A site on a 3-server NATS cluster with R3 JetStream state: one server SIGKILLed under a
write load loses no acknowledged write, and the site keeps taking writes."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from contextlib import AsyncExitStack

import nats

from edgecache.cachenode.service import start_node
from edgecache.common import errors, subjects, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import load_config
from edgecache.common.jetstream import ensure_state
from edgecache.launcher.natscluster import NatsCluster, wait_for_jetstream

KiB = 1024
WRITERS = 4  # puts in flight at once
BEFORE_KILL = 20  # acknowledged writes before the kill
AFTER_KILL = 20  # acknowledged writes after it, through the two servers left


async def _one(data: bytes):
    yield data


async def test_state_made_on_one_replica_is_raised_to_the_clusters_replicas(
    nats_cluster: NatsCluster,
) -> None:
    """A site's state created with one replica (a site that ran on one server) is raised to
    three when a service opens it with ``replicas=3``; opening it with fewer never lowers
    it. The streams are removed at the end: the next test starts on fresh state, not on
    replicas still catching up."""
    nc = await nats.connect(servers=nats_cluster.url.split(","))
    try:
        js = nc.jetstream()
        await wait_for_jetstream(js)
        names = [f"KV_{b}" for b in (subjects.KV_BUCKETS, subjects.KV_OBJECTS, subjects.KV_UPLOADS, subjects.KV_NODES)]
        await ensure_state(js, replicas=1)
        assert [(await js.stream_info(n)).config.num_replicas for n in names] == [1] * 4
        await ensure_state(js, replicas=3)
        names.append(subjects.WRITEBACK_STREAM)
        assert [(await js.stream_info(n)).config.num_replicas for n in names] == [3] * 5
        await ensure_state(js, replicas=1)  # a service with the default: all stay at three
        assert [(await js.stream_info(n)).config.num_replicas for n in names] == [3] * 5
        for name in names:
            await js.delete_stream(name)
    finally:
        await nc.close()


async def test_losing_one_server_under_write_load_loses_no_acknowledged_write(
    nats_cluster: NatsCluster, tmp_path
) -> None:
    config = load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": nats_cluster.url, "replicas": 3, "request_timeout_s": 15.0},
            "cachenode": {
                "chunk_bytes": 64 * KiB,
                "replicas": 1,
                "node_id": f"solo-{secrets.token_hex(3)}",
            },
        },
    )
    nc = await nats.connect(
        servers=config.nats.servers(), max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    async with AsyncExitStack() as stack:
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await wait_for_jetstream(js)
        node = await start_node(config, stack)
        for name in (subjects.WRITEBACK_STREAM, f"KV_{subjects.KV_OBJECTS}"):
            assert (await js.stream_info(name)).config.num_replicas == 3, name
        client = EdgecacheClient(nc, timeout_s=15.0)
        bucket = f"cluster-{secrets.token_hex(4)}"
        await client.request(wire.CreateBucket(bucket=bucket))

        acked: dict[str, bytes] = {}
        refused: list[str] = []
        killed = asyncio.Event()
        after_kill = 0
        counter = iter(range(10**6))

        async def writer() -> None:
            nonlocal after_kill
            while after_kill < AFTER_KILL:
                key = f"k{next(counter):05d}"
                data = os.urandom(100 * KiB)  # two chunks
                try:
                    await client.put_object(
                        wire.PutObject(bucket=bucket, key=key, size=len(data)), _one(data)
                    )
                except (errors.S3Error, nats.errors.Error, TimeoutError) as exc:  # not acknowledged
                    refused.append(f"{key}: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
                    continue
                acked[key] = data
                if killed.is_set():
                    after_kill += 1

        writers = [asyncio.ensure_future(writer()) for _ in range(WRITERS)]
        deadline = time.monotonic() + 30
        while len(acked) < BEFORE_KILL and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # the server leading WRITEBACK is the worst one to lose: its stream must elect anew
        leader = (await js.stream_info(subjects.WRITEBACK_STREAM)).cluster.leader
        victim = next(s for s in nats_cluster.servers if s.server_name == leader)
        victim.kill()  # SIGKILL, mid-load
        killed.set()
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        assert after_kill >= AFTER_KILL  # the site kept taking writes on two servers
        # a write caught by the failover is refused as a 503, which S3 clients retry
        assert all(": ServiceUnavailable: " in r for r in refused), refused

        for key, data in acked.items():  # every acknowledged write, from the surviving state
            info, body = await client.get_object_bytes(bucket, key)
            assert body == data, key
            found = await node.catalog.get(bucket, key)
            assert found is not None and found.manifest.etag == info.etag
        # and its write-back intent is still queued (nothing consumes WRITEBACK here)
        queued = (await js.stream_info(subjects.WRITEBACK_STREAM)).state.messages
        assert queued >= len(acked), (queued, len(acked), refused)
