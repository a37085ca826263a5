"""The gateways' memory tier in front of a real cache node: read-after-write across two
gateways, and a tier dropped whenever it cannot prove it saw every invalidation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import nats
import pytest_asyncio

from edgecache.common import subjects, wire
from edgecache.common.config import Config
from edgecache.common.runtime import connect_nats
from edgecache.gateway.app import create_app
from edgecache.gateway.fastpath import with_fast_hits
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.memtier import MemoryTier
from edgecache.launcher.natsserver import NatsServer, free_port
from tests.fixtures.http import serving

AK, SK = "AKIAMEMORYTIER", "memory-tier-secret"


@dataclass
class Gateway:
    url: str
    tier: MemoryTier
    listener: InvalidationListener

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
            ),
        )


@contextlib.asynccontextmanager
async def gateway(config: Config) -> AsyncIterator[Gateway]:
    """One gateway as its service runs it: a memory tier kept coherent by the events."""
    tier = MemoryTier(capacity_bytes=8 * 1024 * 1024, gate_bytes=1024 * 1024)
    listener = InvalidationListener(tier)
    nc = await connect_nats(config.nats, name="test-gateway", watchers=[listener])
    app = with_fast_hits(create_app(config, nc, memtier=tier, invalidations=listener))
    try:
        async with serving(app) as url:
            yield Gateway(url, tier, listener)
    finally:
        await nc.drain()


@pytest_asyncio.fixture(loop_scope="session")
async def two_gateways(
    cachenode: Any, make_config: Callable[..., Config]
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    config = make_config(gateway={"access_key": AK, "secret_key": SK})
    async with gateway(config) as a, gateway(config) as b:
        yield a, b


async def test_a_thousand_writes_through_one_gateway_are_read_back_through_the_other(
    two_gateways: tuple[Gateway, Gateway], bucket_name: str
) -> None:
    a, b = two_gateways

    def rounds() -> None:
        writer, reader = a.s3(), b.s3()
        writer.create_bucket(Bucket=bucket_name)
        for i in range(1000):
            body = f"round {i} ".encode() + os.urandom(64)
            writer.put_object(Bucket=bucket_name, Key="hot", Body=body)
            got = reader.get_object(Bucket=bucket_name, Key="hot")["Body"].read()
            assert got == body, f"round {i}: the reader's gateway served an older version"
            again = reader.get_object(Bucket=bucket_name, Key="hot")["Body"].read()
            assert again == body, f"round {i}: the memory tier served other bytes"

    hits = b.tier.stats.hits
    await asyncio.to_thread(rounds)
    assert b.tier.stats.hits - hits >= 900  # the second read of each round is a hit
    assert b.tier.stats.invalidated >= 900  # and each write dropped it from the tier


async def test_hits_answer_ranges_conditions_and_heads(
    two_gateways: tuple[Gateway, Gateway], bucket_name: str
) -> None:
    _, b = two_gateways
    s3 = b.s3()
    data = os.urandom(300_000)

    def check() -> None:
        s3.create_bucket(Bucket=bucket_name)
        etag = s3.put_object(Bucket=bucket_name, Key="k", Body=data, ContentType="text/x-k")["ETag"]
        assert s3.get_object(Bucket=bucket_name, Key="k")["Body"].read() == data  # fills
        hits = b.tier.stats.hits
        ranged = s3.get_object(Bucket=bucket_name, Key="k", Range="bytes=100-199")
        assert ranged["Body"].read() == data[100:200]
        assert ranged["ContentRange"] == f"bytes 100-199/{len(data)}"
        head = s3.head_object(Bucket=bucket_name, Key="k")
        assert (head["ContentLength"], head["ETag"], head["ContentType"]) == (len(data), etag, "text/x-k")
        try:
            s3.get_object(Bucket=bucket_name, Key="k", IfNoneMatch=etag)
            raise AssertionError("expected 304")
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "304"
        try:
            s3.get_object(Bucket=bucket_name, Key="k", Range=f"bytes={len(data)}-")
            raise AssertionError("expected 416")
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidRange"
        try:
            s3.get_object(Bucket=bucket_name, Key="k", IfMatch='"not-the-etag"')
            raise AssertionError("expected 412")
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "PreconditionFailed"
        # range, HEAD, 304: one hit each; 416 and 412 are found in front of the framework
        # (a hit) and rendered by the handlers, which look again (a second hit)
        assert b.tier.stats.hits - hits == 3 + 2 * 2

    await asyncio.to_thread(check)


async def test_a_gap_in_the_events_drops_the_whole_tier(
    two_gateways: tuple[Gateway, Gateway], bucket_name: str, nats_server: NatsServer
) -> None:
    _, b = two_gateways
    s3 = b.s3()

    def fill() -> None:
        s3.create_bucket(Bucket=bucket_name)
        s3.put_object(Bucket=bucket_name, Key="k", Body=b"x")
        s3.get_object(Bucket=bucket_name, Key="k")["Body"].read()

    await asyncio.to_thread(fill)
    assert b.tier.stats.objects >= 1
    cleared = b.tier.stats.cleared
    nc = await nats.connect(nats_server.url)
    try:
        for seq in (1, 3):  # a publisher that started now, whose event 2 never arrived
            event = wire.Invalidation(
                id=f"gap-{seq}", at_ns=time.time_ns(), bucket=bucket_name, key="other",
                publisher="test-gap", publisher_started_ns=time.time_ns(), seq=seq,
            )
            await nc.publish(subjects.EVENTS_INVALIDATE, wire.encode(event))
        await nc.flush()
    finally:
        await nc.drain()
    deadline = time.monotonic() + 5
    while b.tier.stats.cleared == cleared and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert b.tier.stats.cleared == cleared + 1 and b.tier.stats.objects == 0


async def test_a_lost_connection_drops_the_tier_and_it_refills_after(
    tmp_path: Any, make_config: Callable[..., Config], cachenode: Any, bucket_name: str
) -> None:
    """A gateway whose own NATS connection goes down and comes back (a proxy-free way: its
    server is restarted on the same port) starts again with an empty tier."""
    private = NatsServer(tmp_path / "nats", port=free_port())
    private.start()
    try:
        config = make_config(nats={"url": private.url})
        tier = MemoryTier(capacity_bytes=1 << 20, gate_bytes=1 << 16)
        listener = InvalidationListener(tier)
        nc = await connect_nats(config.nats, name="test-gateway", watchers=[listener])
        await listener.start(nc)
        fill = tier.start_fill(bucket_name, "k")
        assert fill is not None
        tier.admit(fill, wire.ObjectInfo(bucket=bucket_name, key="k", size=1, etag="e", last_modified=0), b"k")
        private.stop()
        deadline = time.monotonic() + 5
        while listener.in_sync and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not listener.in_sync and tier.stats.objects == 0
        assert not await listener.settled()  # no hit is answered meanwhile
        private.start()
        deadline = time.monotonic() + 10
        while not listener.in_sync and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert listener.in_sync
        assert all(await asyncio.gather(*(listener.settled() for _ in range(50))))
        await listener.stop()
        await nc.drain()
    finally:
        private.stop()

