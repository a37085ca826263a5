"""What federation carries beyond new versions (tests/fixtures/fedsites.py: sites ``a`` and
``b`` with a cache node each, over one hub, sharing one file origin): tag changes, copies
of a version held at the other site, bucket deletions.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from edgecache.common import errors, ids, subjects, wire
from edgecache.common.catalog import tags_stamp
from edgecache.origin import open_origin
from tests.fixtures.fedsites import MiB, Site, current, holds, put, until, writeback

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def tags_at(site: Site, bucket: str, key: str) -> dict[str, str]:
    reply = await site.client.request(wire.GetObjectTagging(bucket=bucket, key=key))
    assert isinstance(reply, wire.Tagging)
    return reply.tags


def tagged(
    site: Site, bucket: str, key: str, tags: dict[str, str]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await tags_at(site, bucket, key) == tags

    return check


async def origin_tags(site: Site, bucket: str, key: str) -> dict[str, str]:
    origin = open_origin(site.config)
    await origin.start()
    try:
        return await origin.get_tags(bucket, key)
    finally:
        await origin.close()


async def retag(site: Site, bucket: str, key: str, tags: dict[str, str]) -> None:
    await site.client.request(wire.PutObjectTagging(bucket=bucket, key=key, tags=tags))


# -- 1. object tags --------------------------------------------------------------------------
async def test_a_tag_change_at_a_is_seen_at_b(sites: dict[str, Site], bucket: str) -> None:
    """A PutObjectTagging at ``a`` of ``a``'s own dirty version reaches ``b``'s
    GetObjectTagging and ``x-amz-tagging-count``; a DeleteObjectTagging too."""
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "t", b"tag me")
    version = (await current(a, bucket, "t")).version
    await until(holds(b, bucket, "t", version), what="a's version at b")
    await retag(a, bucket, "t", {"colour": "red", "size": "L"})
    took = await until(tagged(b, bucket, "t", {"colour": "red", "size": "L"}), what="a's tags at b")
    print(f"\na tag change at a was seen at b after {took * 1000:.1f} ms")
    head = await b.client.request(wire.HeadObject(bucket=bucket, key="t"))
    assert head.tag_count == 2  # relayed to a, the owner of the dirty version
    record = await current(b, bucket, "t")
    assert (record.version, record.site, record.tags_site) == (version, "a", "a")
    await b.client.request(wire.DeleteObjectTagging(bucket=bucket, key="t"))
    # read back at b at once, although a (which serves the bytes) may not have it yet
    for _ in range(2):  # the second from the route cache, if the key were in it
        assert (await b.client.request(wire.HeadObject(bucket=bucket, key="t"))).tag_count == 0
        info, body = await b.client.get_object(wire.GetObject(bucket=bucket, key="t"))
        assert info.tag_count == 0 and b"".join([p async for p in body]) == b"tag me"
    await until(tagged(a, bucket, "t", {}), what="b's tag deletion at a")


async def test_a_tag_change_at_b_of_a_clean_version_reaches_the_origin_through_a(
    sites: dict[str, Site], bucket: str
) -> None:
    """``b`` retags ``a``'s version after it reached the origin: ``b`` writes nothing to
    the origin (no intent of its own); ``a``, the version's site, takes the tags there."""
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "c", b"clean soon")
    version = (await current(a, bucket, "c")).version
    async with writeback(a):
        await until(holds(b, bucket, "c", version, state="clean"), what="a's clean version at b")
        await retag(b, bucket, "c", {"from": "b"})
        assert (await current(b, bucket, "c")).tags_state == "clean"  # b does not write a's tags
        await until(tagged(a, bucket, "c", {"from": "b"}), what="b's tags at a")

        async def in_origin() -> bool:
            return await origin_tags(a, bucket, "c") == {"from": "b"}

        await until(in_origin, what="b's tags in the origin, written by a")
        await until(
            lambda: _tags_clean(a, bucket, "c"), what="a's manifest clean again after its tag write"
        )


async def _tags_clean(site: Site, bucket: str, key: str) -> bool:
    m = await current(site, bucket, key)
    return m is not None and m.tags_state == "clean"


async def test_concurrent_tag_changes_end_with_the_winner_everywhere_and_in_the_origin(
    sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "both", b"tagged twice")
    version = (await current(a, bucket, "both")).version
    async with writeback(a), writeback(b):
        await until(holds(b, bucket, "both", version, state="clean"), what="a's clean version at b")
        await asyncio.gather(
            retag(a, bucket, "both", {"by": "a"}), retag(b, bucket, "both", {"by": "b"})
        )
        mine = {s.name: await current(s, bucket, "both") for s in (a, b)}
        winner = max(mine.values(), key=tags_stamp)
        for site in (a, b):
            await until(
                tagged(site, bucket, "both", winner.tags), what=f"the winning tags at {site.name}"
            )

        async def in_origin() -> bool:
            return await origin_tags(a, bucket, "both") == winner.tags

        await until(in_origin, what="the winning tags in the origin")
        await until(lambda: _tags_clean(a, bucket, "both"), what="a's tags written back")
    assert await origin_tags(a, bucket, "both") == winner.tags
    assert await tags_at(b, bucket, "both") == winner.tags


def tag_change_at_a(version: wire.Manifest, tags: dict[str, str], stamp: int) -> wire.SiteChange:
    """``a``'s tag change of ``version`` to ``tags``, stamped ``stamp``, as ``a``'s catalog
    logs it."""
    return wire.SiteChange(
        id=ids.new_id(),
        at_ns=time.time_ns(),
        site="a",
        bucket=version.bucket,
        key=version.key,
        version=version.version,
        hlc=stamp,
        manifest=msgspec.structs.replace(version, tags=tags, tags_hlc=stamp, tags_site="a"),
        kind="tags",
    )


async def test_a_tag_change_of_an_overwritten_version_is_dropped(
    sites: dict[str, Site], bucket: str
) -> None:
    """A tag change of a version that another site's newer version replaced is ignored
    there, as S3 drops the tags of an overwritten version. (Made at ``a`` with the link up,
    it would race ``b``'s overwrite; so ``a``'s change, as ``a`` logs it, is handed to
    ``b``'s catalog after the overwrite.)"""
    a, b = sites["a"], sites["b"]
    await put(a, bucket, "o", b"first")
    first = await current(a, bucket, "o")
    await until(holds(b, bucket, "o", first.version), what="a's version at b")
    await put(b, bucket, "o", b"second")  # b's newer version, untagged
    second = (await current(b, bucket, "o")).version
    stamp = a.node.catalog.clock.now()
    stale = tag_change_at_a(first, {"stale": "yes"}, stamp)
    applied = await b.node.catalog.apply_remote(stale, chunk_bytes=MiB)
    assert applied.outcome == "ignored"
    assert await tags_at(b, bucket, "o") == {}
    assert (await current(b, bucket, "o")).version == second
    # the same change of the version current at b applies
    await until(holds(a, bucket, "o", second), what="b's version at a")
    fresh = tag_change_at_a(await current(a, bucket, "o"), {"fresh": "yes"}, stamp)
    assert (await b.node.catalog.apply_remote(fresh, chunk_bytes=MiB)).outcome == "tagged"
    assert await tags_at(b, bucket, "o") == {"fresh": "yes"}


async def test_a_tag_change_reaches_a_site_that_adopted_the_version_from_the_origin(
    sites: dict[str, Site], bucket: str
) -> None:
    """``a``'s version reached the shared origin (stamped, as ``a``'s write-back writes it)
    and ``b`` read it there before ``a``'s change arrived: ``b`` adopted it under an id of
    its own, with ``a``'s stamp. ``a``'s tag change of that version (named by ``a``'s id)
    applies at ``b``: the stamp names the version. (Seen in the two-stack e2e test when
    ``b``'s first HEAD beat the change log.)"""
    a, b = sites["a"], sites["b"]
    written = a.node.catalog.clock.now()
    origin = open_origin(a.config)
    await origin.start()
    try:

        async def body() -> AsyncIterator[bytes]:
            yield b"written back by a"

        await origin.put_object(bucket, "adopted", body(), size=17, hlc=written, site="a")
    finally:
        await origin.close()
    head = await b.client.request(wire.HeadObject(bucket=bucket, key="adopted"))
    adopted = await current(b, bucket, "adopted")
    assert (adopted.hlc, adopted.site, adopted.state) == (written, "a", "clean")
    at_a = msgspec.structs.replace(adopted, version=ids.new_id())  # a's own id of it
    assert head.size == 17 and at_a.version != adopted.version
    change = tag_change_at_a(at_a, {"team": "blue"}, a.node.catalog.clock.now())
    assert (await b.node.catalog.apply_remote(change, chunk_bytes=MiB)).outcome == "tagged"
    assert await tags_at(b, bucket, "adopted") == {"team": "blue"}
    record = await current(b, bucket, "adopted")
    assert (record.version, record.tags_site, record.tags_state) == (adopted.version, "a", "clean")


# -- 2. CopyObject of a version held at another site ----------------------------------------
async def test_a_copy_at_b_of_a_version_held_at_a_reads_it_at_a(
    sites: dict[str, Site], bucket: str
) -> None:
    """CopyObject and UploadPartCopy at ``b`` whose source is ``a``'s dirty version (a
    remote record at ``b``, no chunks) read the source's bytes at ``a``, as a GET does."""
    a, b = sites["a"], sites["b"]
    data = secrets.token_bytes(2 * MiB + 321)  # three chunks
    await put(a, bucket, "src", data)
    version = (await current(a, bucket, "src")).version
    await until(holds(b, bucket, "src", version), what="a's version at b")
    assert (await current(b, bucket, "src")).chunks == []
    out_before = a.node.counters.bytes_out
    source = wire.CopySource(bucket=bucket, key="src")
    info = await b.client.request(wire.CopyObject(bucket=bucket, key="copy", source=source))
    assert info.etag == hashlib.md5(data).hexdigest()  # noqa: S324 - S3's ETag
    assert a.node.counters.bytes_out - out_before == len(data)  # read at a
    copied = await current(b, bucket, "copy")
    assert (copied.site, copied.state) == ("b", "dirty") and copied.chunks  # b's own version
    assert (await b.client.get_object_bytes(bucket, "copy"))[1] == data

    upload = await b.client.request(wire.CreateMultipartUpload(bucket=bucket, key="parts"))
    ranged = msgspec.structs.replace(source, first=MiB - 10, last=MiB + 9)  # across a chunk edge
    part = await b.client.request(
        wire.UploadPartCopy(
            bucket=bucket, key="parts", upload_id=upload.upload_id, part_number=1, source=ranged
        )
    )
    assert part.etag == hashlib.md5(data[MiB - 10 : MiB + 10]).hexdigest()  # noqa: S324
    await b.client.request(
        wire.CompleteMultipartUpload(
            bucket=bucket,
            key="parts",
            upload_id=upload.upload_id,
            parts=[wire.CompletedPart(part_number=1, etag=part.etag)],
        )
    )
    assert (await b.client.get_object_bytes(bucket, "parts"))[1] == data[MiB - 10 : MiB + 10]


# -- 4. bucket deletion -----------------------------------------------------------------------
async def known(site: Site, bucket: str) -> bool:
    try:
        await site.client.request(wire.HeadBucket(bucket=bucket))
    except errors.NoSuchBucket:
        return False
    return True


async def test_a_bucket_deleted_at_a_is_gone_at_b_and_created_again_at_b_is_back_at_a(
    sites: dict[str, Site], bucket: str
) -> None:
    a, b = sites["a"], sites["b"]
    await a.client.request(wire.DeleteBucket(bucket=bucket))

    async def gone_at_b() -> bool:
        return not await known(b, bucket)

    took = await until(gone_at_b, what="a's bucket deletion at b")
    print(f"\na bucket deleted at a was gone at b after {took * 1000:.1f} ms")
    listed = await b.client.request(wire.ListBuckets())
    assert bucket not in {x.name for x in listed.buckets}
    with pytest.raises(errors.NoSuchBucket):
        await put(b, bucket, "k", b"no bucket")
    # created again at b, after the deletion: the later stamp wins at a, whose own
    # tombstone (its deletion has not reached the origin: no write-back runs) is replaced
    await b.client.request(wire.CreateBucket(bucket=bucket))
    await until(lambda: known(a, bucket), what="b's new bucket at a")
    await put(a, bucket, "k", b"bucket is back")


async def apply_at(site: Site, change: wire.SiteChange) -> wire.Reply:
    """Hand ``change`` to ``site``'s nodes as its federator would; their answer."""
    answer = await site.nc.request(subjects.FED_APPLY, wire.encode(change), timeout=5)
    return wire.decode(answer.data, wire.Reply)


def bucket_deletion(bucket: str, hlc: int) -> wire.SiteChange:
    """``a``'s deletion of ``bucket``, as ``a``'s catalog logs it, stamped ``hlc``."""
    return wire.SiteChange(
        id=ids.new_id(),
        at_ns=time.time_ns(),
        site="a",
        bucket=bucket,
        key=None,
        hlc=hlc,
        deleted=True,
    )


async def test_a_site_with_writes_of_its_own_in_a_bucket_keeps_it(
    sites: dict[str, Site], bucket: str
) -> None:
    """``a``'s deletion reaches ``b`` after ``b`` wrote into the bucket, unseen by ``a``
    (stamped after the deletion: ``b``'s clock ahead). It is handed to ``b``'s node as
    ``a``'s federator would hand it (with the link up, ``a`` would have known ``b``'s object
    and refused the deletion). ``b`` keeps the bucket, creates it again after the
    deletion, and its write reaches the origin."""
    b = sites["b"]
    await put(b, bucket, "mine", b"written at b")
    mine = await current(b, bucket, "mine")
    deletion = bucket_deletion(bucket, mine.hlc - 1)
    reply = await apply_at(b, deletion)
    assert isinstance(reply, wire.Ok), reply
    assert await known(b, bucket)
    record, _ = await b.node.bucket_record(bucket)
    assert (record.deleted, record.site) == (False, "b") and record.hlc > mine.hlc
    async with writeback(b):
        origin = Path(b.config.origin_path()) / bucket / "mine"

        async def written_back() -> bool:
            return origin.exists() and (await current(b, bucket, "mine")).state == "clean"

        await until(written_back, what="b's write in the origin")
    assert origin.read_bytes() == b"written at b"


async def test_a_deletion_that_overtakes_the_deletes_of_its_objects_waits_for_them(
    sites: dict[str, Site], bucket: str
) -> None:
    """``a`` deleted ``b``'s object, then the bucket; at ``b`` the bucket's deletion comes
    first (another lane of the applier): it is refused (asked again) while ``b`` still
    holds its object, and applied once the object's delete is."""
    a, b = sites["a"], sites["b"]
    await put(b, bucket, "seen", b"deleted at a")
    seen = await current(b, bucket, "seen")
    tombstone = wire.SiteChange(
        id=ids.new_id(),
        at_ns=time.time_ns(),
        site="a",
        bucket=bucket,
        key="seen",
        version=ids.new_id(),
        hlc=max(seen.hlc, a.node.catalog.clock.now()) + 1,
        deleted=True,
    )
    deletion = bucket_deletion(bucket, tombstone.hlc + 1)
    refused = await apply_at(b, deletion)
    assert isinstance(refused, wire.Error) and refused.code == "ServiceUnavailable", refused
    assert await known(b, bucket)
    assert isinstance(await apply_at(b, tombstone), wire.Ok)
    assert isinstance(await apply_at(b, deletion), wire.Ok)  # asked again: applied
    assert not await known(b, bucket)
