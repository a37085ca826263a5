"""KV ``objects`` stays bounded: clean manifests expire (``cachenode.manifest_ttl_s``) and
are adopted again from the origin on the next read; dirty manifests never expire."""

from __future__ import annotations

import asyncio
import secrets
import time

from edgecache.common import kvkeys, wire
from edgecache.common.catalog import Catalog
from edgecache.common.jetstream import ensure_state
from tests.fixtures.readthrough import CHUNK, one, origin_put, readthrough_node

TTL_S = 1  # the server's per-message TTL counts whole seconds


async def gone(catalog: Catalog, bucket: str, key: str, *, within_s: float = 5.0) -> float:
    """Wait until ``bucket/key`` has no manifest; returns the seconds waited."""
    started = time.monotonic()
    while await catalog.get(bucket, key) is not None:
        assert time.monotonic() - started < within_s, f"{key} did not expire"
        await asyncio.sleep(0.1)  # the server expires it: there is no event to await
    return time.monotonic() - started


async def test_expired_clean_manifests_are_adopted_again(make_config, nc, bucket_name) -> None:
    async with readthrough_node(make_config, nc, "ttl", manifest_ttl_s=TTL_S) as (node, client):
        data = b"0123456789" * (CHUNK // 4)
        await origin_put(node, bucket_name, "cold", data, content_type="text/plain")
        await client.put_object(
            wire.PutObject(bucket=bucket_name, key="pending", size=3), one(b"new")
        )
        _, body = await client.get_object_bytes(bucket_name, "cold")
        first = (await node.catalog.get(bucket_name, "cold")).manifest
        assert body == data and first.state == "clean"
        old_chunks = [c.id for c in first.chunks]
        assert old_chunks and all(node.store.has(c) for c in old_chunks)

        await gone(node.catalog, bucket_name, "cold")
        # a dirty manifest (written, not yet in the origin: no write-back runs here) stays
        pending = await node.catalog.get(bucket_name, "pending")
        assert pending is not None and pending.manifest.state == "dirty"
        assert (await client.get_object_bytes(bucket_name, "pending"))[1] == b"new"

        fills = node.counters.fills
        _, body = await client.get_object_bytes(bucket_name, "cold")  # adopted again
        again = (await node.catalog.get(bucket_name, "cold")).manifest
        assert again.validated_at > first.validated_at  # a new record ...
        # ... of the same origin object, so the same version id (derived from the object,
        # docs/architecture.md change 38): its chunks still on disk serve it, nothing filled
        assert body == data and again.version == first.version
        assert [c.id for c in again.chunks] == old_chunks and node.counters.fills == fills
        assert all(node.store.is_dirty(c) is False for c in old_chunks if node.store.has(c))

        # the object changed in the origin while unrecorded: a new id, no old chunk reused
        await gone(node.catalog, bucket_name, "cold")
        changed = data[::-1]
        await origin_put(node, bucket_name, "cold", changed, content_type="text/plain")
        _, body = await client.get_object_bytes(bucket_name, "cold")
        newer = (await node.catalog.get(bucket_name, "cold")).manifest
        assert body == changed and newer.version != first.version
        assert not {c.id for c in newer.chunks} & set(old_chunks)


async def test_versions_marked_clean_expire_and_tombstones_leave_nothing(nc) -> None:
    catalog = Catalog(nc, await ensure_state(nc.jetstream()), clean_ttl_s=TTL_S)
    bucket = f"ttl-{secrets.token_hex(4)}"
    m = wire.Manifest(
        bucket=bucket, key="k", version="v1", size=1, etag="e", last_modified=0.0, nodes=["x"]
    )
    await catalog.put(m)
    revision = (await catalog.get(bucket, "k")).revision
    assert await catalog.mark_clean(wire.Manifest(**{**_fields(m), "state": "clean"}), revision)
    waited = await gone(catalog, bucket, "k")
    assert waited >= 0.5  # it lived about its TTL, not less

    tomb = wire.Manifest(
        bucket=bucket, key="t", version="v2", size=0, etag="", last_modified=0.0, deleted=True
    )
    await catalog.put(tomb)
    assert await catalog.remove_tombstone(tomb, (await catalog.get(bucket, "t")).revision)
    assert await catalog.get(bucket, "t") is None
    assert [x async for x in catalog.dirty(bucket)] == []
    # what is left of "t" is a purge marker that itself expires, not a delete marker for ever
    msg = await nc.jetstream().get_last_msg(
        "KV_objects", f"$KV.objects.{kvkeys.object_key(bucket, 't')}"
    )
    assert msg.headers["KV-Operation"] == "PURGE" and msg.headers["Nats-TTL"] == "60"


def _fields(m: wire.Manifest) -> dict[str, object]:
    return {f: getattr(m, f) for f in m.__struct_fields__}
