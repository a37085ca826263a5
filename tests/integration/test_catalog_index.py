"""The catalog's dirty index: a listing's overlay reads the dirty keys under its prefix only."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from nats.js.errors import KeyNotFoundError

from edgecache.common import kvkeys, wire
from edgecache.common.catalog import Catalog
from edgecache.common.jetstream import current_values, ensure_state

NODE = "index-test-node"  # no cache node of the session holds these: recovery leaves them


def manifest(bucket: str, key: str, *, deleted: bool = False) -> wire.Manifest:
    return wire.Manifest(
        bucket=bucket,
        key=key,
        version=secrets.token_hex(8),
        size=1,
        etag="e",
        last_modified=time.time(),
        deleted=deleted,
        nodes=[NODE],
    )


@pytest.fixture
async def catalog(nc) -> Catalog:
    return Catalog(nc, await ensure_state(nc.jetstream()))


async def dirty_keys(catalog: Catalog, bucket: str, prefix: str = "") -> list[str]:
    return sorted([m.key async for m in catalog.dirty(bucket, prefix)])


async def test_a_prefix_reads_only_its_dirty_keys(catalog: Catalog, monkeypatch) -> None:
    bucket = f"idx-{secrets.token_hex(4)}"
    others = [manifest(bucket, f"other/{i:04}") for i in range(400)]
    mine = [manifest(bucket, k) for k in ("mine/a", "mine/b/c", "mine/", "mine//x")]
    near = [manifest(bucket, k) for k in ("mine", "mine-x", "mi/ne")]
    for batch in range(0, len(others), 50):
        await asyncio.gather(*(catalog.put(m) for m in others[batch : batch + 50]))
    for m in mine + near:
        await catalog.put(m)
    cleaned = manifest(bucket, "mine/done")  # marked, then its write-back finished
    await catalog.put(cleaned)
    assert await catalog.mark_clean(
        clean_of(cleaned), (await catalog.get(bucket, cleaned.key)).revision
    )

    reads: list[tuple[str, str]] = []
    real_get = catalog.get

    async def counting_get(b: str, k: str):  # type: ignore[no-untyped-def]
        reads.append((b, k))
        return await real_get(b, k)

    monkeypatch.setattr(catalog, "get", counting_get)
    started = time.perf_counter()
    assert await dirty_keys(catalog, bucket, "mine/") == ["mine/", "mine//x", "mine/a", "mine/b/c"]
    indexed_ms = (time.perf_counter() - started) * 1000
    assert len(reads) == 4  # the marks under "mine/", nothing of "other/"
    reads.clear()
    assert await dirty_keys(catalog, bucket, "mine/b") == ["mine/b/c"]
    assert len(reads) == 1  # a partial last segment: marks under "mine/" filtered by key first
    assert await dirty_keys(catalog, bucket, "min") == [
        "mine",
        "mine-x",
        "mine/",
        "mine//x",
        "mine/a",
        "mine/b/c",
    ]

    # the scan this replaces: every manifest of the bucket
    started = time.perf_counter()
    scanned = [v async for v in current_values(catalog._kv, kvkeys.bucket_filter(bucket))]
    scan_ms = (time.perf_counter() - started) * 1000
    assert len(scanned) == len(others) + len(mine) + len(near) + 1
    print(
        f"\noverlay of 'mine/' among {len(scanned)} dirty: index {indexed_ms:.1f} ms, scan {scan_ms:.1f} ms"
    )


async def test_marks_follow_the_current_version(catalog: Catalog) -> None:
    bucket = f"idx-{secrets.token_hex(4)}"
    mark = kvkeys.dirty_key(bucket, "k")
    v1 = manifest(bucket, "k")
    await catalog.put(v1)
    r1 = (await catalog.get(bucket, "k")).revision
    v2 = manifest(bucket, "k")
    await catalog.put(v2)  # a newer write before v1's write-back finished
    r2 = (await catalog.get(bucket, "k")).revision
    assert not await catalog.mark_clean(clean_of(v1), r1)  # lost: v2 is current
    assert [m.version async for m in catalog.dirty(bucket)] == [v2.version]
    assert await catalog.mark_clean(clean_of(v2), r2)
    assert [m async for m in catalog.dirty(bucket)] == []
    with pytest.raises(KeyNotFoundError):
        await catalog._kv.get(mark)

    tomb = manifest(bucket, "k", deleted=True)
    await catalog.put(tomb)
    assert [m.deleted async for m in catalog.dirty(bucket, "k")] == [True]
    assert await catalog.remove_tombstone(tomb, (await catalog.get(bucket, "k")).revision)
    assert [m async for m in catalog.dirty(bucket)] == []
    with pytest.raises(KeyNotFoundError):
        await catalog._kv.get(mark)


def clean_of(m: wire.Manifest) -> wire.Manifest:
    return wire.Manifest(
        **{f: getattr(m, f) for f in m.__struct_fields__ if f != "state"}, state="clean"
    )
