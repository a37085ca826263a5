"""Two federated sites (tests/fixtures/federation.py: a hub and sites ``a`` and ``b`` over
leaf nodes), each with an in-process cache node and, when a test runs it, a writeback
service, sharing one file origin: a write at one site is read at the other from the
writing site, then from the origin; concurrent writes end with the ``(hlc, site)`` winner
everywhere; a read of a version held across a broken hub link is an honest 503.

The changes travel as in production (``CHANGES`` → hub ``FEDERATION`` → each site's
``FEDERATION``, JetStream's sourcing across the leaf links), and each site's federator
applier (``edgecache.federator.applier``, in-process) hands other sites' changes to the
site's node (``FED_APPLY``).
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from pathlib import Path

import nats
import pytest

from edgecache.common import errors, wire
from tests.fixtures.federation import Federation
from tests.fixtures.fedsites import (
    MiB,
    Site,
    current,
    holds,
    put,
    restart_stalled,
    until,
    writeback,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_write_at_a_is_read_at_b_from_a_then_from_the_origin(
    sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    data = secrets.token_bytes(2 * MiB + 123)
    await put(a, bucket, "k", data)
    version = (await current(a, bucket, "k")).version
    await until(holds(b, bucket, "k", version), what="a's version recorded at b")
    record = await current(b, bucket, "k")
    assert (record.site, record.state, record.chunks) == ("a", "dirty", [])

    out_before = a.node.counters.bytes_out
    info, got = await b.client.get_object_bytes(bucket, "k")
    assert got == data and info.size == len(data)
    assert a.node.counters.bytes_out - out_before == len(data)  # served by a's node
    assert b.node.routes.get(bucket, "k") == "a"
    head = await b.client.request(wire.HeadObject(bucket=bucket, key="k", range="bytes=0-9"))
    assert (head.size, head.range_last) == (len(data), 9)
    info, got = await b.client.get_object(
        wire.GetObject(bucket=bucket, key="k", range="bytes=100-199")
    )
    assert b"".join([p async for p in got]) == data[100:200]

    async with writeback(a):
        await until(holds(b, bucket, "k", version, state="clean"), what="a's clean change at b")
    assert b.node.routes.get(bucket, "k") is None  # the change dropped the route
    out_before = a.node.counters.bytes_out
    info, got = await b.client.get_object_bytes(bucket, "k")
    assert got == data
    assert a.node.counters.bytes_out == out_before  # not from a: b filled from the origin
    assert all(b.node.store.has(c.id) for c in (await current(b, bucket, "k")).chunks)


async def test_a_write_at_b_after_a_relayed_read_is_read_back_at_once(
    sites: dict[str, Site], bucket: str
) -> None:
    """Read-after-write at b although b's node had cached ``a`` as the key's owner: the
    write's own invalidation drops the route before the next request runs."""
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "rw", b"a's")
    theirs = await current(a, bucket, "rw")
    await until(holds(b, bucket, "rw", theirs.version), what="a's version at b")
    assert (await b.client.get_object_bytes(bucket, "rw"))[1] == b"a's"
    assert b.node.routes.get(bucket, "rw") == "a"
    await put(b, bucket, "rw", b"b's")
    assert (await b.client.get_object_bytes(bucket, "rw"))[1] == b"b's"
    mine = await current(b, bucket, "rw")
    assert mine.site == "b" and mine.hlc > theirs.hlc  # stamped after the version it replaced
    await until(holds(a, bucket, "rw", mine.version), what="b's version at a")
    assert (await a.client.get_object_bytes(bucket, "rw"))[1] == b"b's"  # relayed from b


async def test_an_overwrite_at_a_is_seen_at_b_within_a_second(
    sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    delays = []
    for i in range(8):
        data = f"version {i}".encode()
        await put(a, bucket, "hot", data)
        version = (await current(a, bucket, "hot")).version
        delays.append(
            await until(holds(b, bucket, "hot", version), timeout_s=5.0, what="the overwrite at b")
        )
        assert (await b.client.get_object_bytes(bucket, "hot"))[1] == data
    print(
        f"\nacknowledged at a → applied at b: median {statistics.median(delays) * 1000:.1f} ms, "
        f"max {max(delays) * 1000:.1f} ms over {len(delays)}"
    )
    assert max(delays) < 3.0  # the design's bound is ~1 s; generous for a loaded machine


async def test_concurrent_writes_end_with_the_winner_everywhere(
    sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    await asyncio.gather(put(a, bucket, "both", b"from a"), put(b, bucket, "both", b"from b"))
    mine = {n: await current(s, bucket, "both") for n, s in sites.items()}
    winner = max(mine.values(), key=lambda m: (m.hlc, m.site))
    body = {"a": b"from a", "b": b"from b"}[winner.site]
    for site in sites.values():
        await until(holds(site, bucket, "both", winner.version), what=f"the winner at {site.name}")
    for site in sites.values():
        assert (await site.client.get_object_bytes(bucket, "both"))[1] == body
    async with writeback(a), writeback(b):
        for site in sites.values():
            await until(
                holds(site, bucket, "both", winner.version, state="clean"),
                what="the winner written back",
            )
    origin = Path(a.config.origin_path()) / bucket / "both"
    assert origin.read_bytes() == body
    for site in sites.values():  # after the write-back: still the winner, now from the origin
        assert (await site.client.get_object_bytes(bucket, "both"))[1] == body


async def test_a_bucket_created_at_a_is_one_namespace_at_b(sites: dict[str, Site]) -> None:
    """A bucket made at one site (and an object in it) is seen at the other within the
    change log's delay, before the creation reaches the origin (no write-back runs here)."""
    a, b = sites["a"], sites["b"]
    name = f"fed-only-a-{secrets.token_hex(4)}"
    await a.client.request(wire.CreateBucket(bucket=name))
    await put(a, name, "k", b"made at a")

    async def known_at_b() -> bool:
        try:
            await b.client.request(wire.HeadBucket(bucket=name))
        except errors.NoSuchBucket:
            return False
        return True

    took = await until(known_at_b, what="a's new bucket at b")
    print(f"\na bucket created at a was known at b after {took * 1000:.1f} ms")
    version = (await current(a, name, "k")).version
    await until(holds(b, name, "k", version), what="a's object in its new bucket at b")
    assert (await b.client.get_object_bytes(name, "k"))[1] == b"made at a"
    with pytest.raises(errors.BucketAlreadyOwnedByYou):  # b's clients see one namespace
        await b.client.request(wire.CreateBucket(bucket=name))


async def test_a_read_across_a_broken_hub_link_is_503_and_nothing_else_stops(
    federation: Federation, sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "far", b"held at a")
    version = (await current(a, bucket, "far")).version
    await until(holds(b, bucket, "far", version), what="a's version recorded at b")
    await put(b, bucket, "near", b"held at b")
    federation.cut()
    try:
        started = time.perf_counter()
        with pytest.raises(errors.ServiceUnavailable):
            await b.client.get_object_bytes(bucket, "far")
        with pytest.raises(errors.ServiceUnavailable):
            await b.client.request(wire.HeadObject(bucket=bucket, key="far"))
        print(
            f"\na GET at b of a's version with the hub down: 503 in {time.perf_counter() - started:.2f} s"
        )
        assert (await b.client.get_object_bytes(bucket, "near"))[1] == b"held at b"
        await put(b, bucket, "near", b"still writable")
        assert (await b.client.get_object_bytes(bucket, "near"))[1] == b"still writable"
        assert (await a.client.get_object_bytes(bucket, "far"))[1] == b"held at a"
    finally:
        federation.restore()


# This once failed about one run in three: b's apply loop had died on an idle fetch (a bare
# TimeoutError from nats-py when the loop stalled; federator/applier.py), so a's change sat
# in b's FEDERATION unapplied. It arrives 0.25-2.3 s after the link returns.
async def test_a_change_made_during_the_cut_reaches_b_when_the_link_returns(
    federation: Federation, sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "cut", b"before the cut")
    await until(holds(b, bucket, "cut", (await current(a, bucket, "cut")).version), what="a's version at b")
    federation.cut()
    try:
        await put(a, bucket, "cut", b"written during the cut")  # a's own log takes it
        during = (await current(a, bucket, "cut")).version
    finally:
        federation.restore()
    # the link is back: what the federators do when they hear across it again — restart
    # the sources that stalled (nats-server alone would wait 30 s and more)
    hub = await nats.connect(federation.hub_url())
    restarted: dict[str, dict[str, float]] = {}

    async def arrived() -> bool:
        if await holds(b, bucket, "cut", during)():
            return True
        await restart_stalled(hub, sites, restarted)
        await asyncio.sleep(0.1)
        return False

    try:
        took = await until(arrived, timeout_s=30.0, what="the change made during the cut at b")
        print(f"\nthe change made during the cut reached b {took:.2f} s after the link")
    finally:
        await hub.close()
    assert (await b.client.get_object_bytes(bucket, "cut"))[1] == b"written during the cut"
