"""The origin never goes back (federation): each origin kind — file, S3 (moto server),
Azure (Azurite) — stores a write's ``(hlc, site)`` with the object and refuses to replace
or delete an object with a larger one; S3 and Azure make the write conditional on the
object they compared, so a write in between is not overwritten."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from edgecache.common import errors
from edgecache.origin import Origin, OriginHoldsNewer

MiB = 1024 * 1024


async def pieces(data: bytes, size: int = 1_000_003) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def put(origin: Origin, bucket: str, key: str, data: bytes, **kw: object) -> str:
    return await origin.put_object(
        bucket, key, pieces(data), size=len(data), metadata={"colour": "red"}, **kw
    )  # type: ignore[arg-type]


async def body(origin: Origin, bucket: str, key: str) -> bytes:
    obj = await origin.head_object(bucket, key)
    if not obj.size:
        return b""
    return b"".join([p async for p in origin.get_range(bucket, key, 0, obj.size - 1)])


async def test_a_stamp_is_kept_with_the_object_and_a_loser_never_replaces_the_winner(
    origin: Origin, origin_bucket: str
) -> None:
    await origin.create_bucket(origin_bucket)
    await put(origin, origin_bucket, "k", b"winner", hlc=100, site="b")
    obj = await origin.head_object(origin_bucket, "k")
    assert (obj.hlc, obj.site, obj.metadata) == (
        100,
        "b",
        {"colour": "red"},
    )  # not in user metadata

    for hlc, site in ((99, "z"), (100, "a")):  # an older clock; an equal clock, a smaller site
        with pytest.raises(OriginHoldsNewer):
            await put(origin, origin_bucket, "k", b"loser", hlc=hlc, site=site)
        with pytest.raises(OriginHoldsNewer):
            await origin.delete_object(origin_bucket, "k", hlc=hlc, site=site)
    assert await body(origin, origin_bucket, "k") == b"winner"

    await put(
        origin, origin_bucket, "k", b"winner", hlc=100, site="b"
    )  # the same version again: a retry
    big = os.urandom(7 * MiB)  # multipart (above the fixture's 6 MiB threshold)
    await put(origin, origin_bucket, "k", big, hlc=101, site="a")
    obj = await origin.head_object(origin_bucket, "k")
    assert (obj.size, obj.hlc, obj.site) == (len(big), 101, "a")
    with pytest.raises(OriginHoldsNewer):
        await put(origin, origin_bucket, "k", big[: 7 * MiB - 1], hlc=100, site="b")
    await origin.delete_object(origin_bucket, "k", hlc=102, site="a")
    with pytest.raises(errors.NoSuchKey):
        await origin.head_object(origin_bucket, "k")


async def test_an_unstamped_write_is_not_compared(origin: Origin, origin_bucket: str) -> None:
    await origin.create_bucket(origin_bucket)
    await put(origin, origin_bucket, "k", b"stamped", hlc=100, site="b")
    await put(origin, origin_bucket, "k", b"a lone site's")  # no federation: as before
    obj = await origin.head_object(origin_bucket, "k")
    assert (obj.hlc, obj.site) == (0, "")
    await put(origin, origin_bucket, "k", b"stamped again", hlc=1, site="a")  # newer than none
    assert await body(origin, origin_bucket, "k") == b"stamped again"


# the origins whose comparison and write are two requests; the file origin compares and
# renames under one lock, so no write can land between them
@pytest.mark.parametrize("origin", ["s3", "azure"], indirect=True)
async def test_a_write_between_the_comparison_and_the_write_is_not_overwritten(
    origin: Origin, origin_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await origin.create_bucket(origin_bucket)
    await put(origin, origin_bucket, "k", b"first", hlc=100, site="a")
    await put(origin, origin_bucket, "fresh-key-seen-missing", b"x", hlc=1, site="a")
    stale = await origin._condition_for(origin_bucket, "k", 200, "a")  # noqa: SLF001
    missing = (
        {"IfNoneMatch": "*"}
        if "IfMatch" in stale
        else {"match_condition": stale["match_condition"].IfMissing}
    )
    await put(
        origin, origin_bucket, "k", b"in between", hlc=300, site="b"
    )  # lands after the comparison

    async def seen_before(*_: object) -> dict:
        return stale

    monkeypatch.setattr(origin, "_condition_for", seen_before)
    with pytest.raises(errors.ServiceUnavailable):
        await put(origin, origin_bucket, "k", b"late", hlc=200, site="a")
    assert await body(origin, origin_bucket, "k") == b"in between"

    async def seen_missing(*_: object) -> dict:
        return missing

    monkeypatch.setattr(origin, "_condition_for", seen_missing)
    with pytest.raises(errors.ServiceUnavailable):  # the key was created after it was seen missing
        await put(origin, origin_bucket, "fresh-key-seen-missing", b"late", hlc=2, site="a")
    assert await body(origin, origin_bucket, "fresh-key-seen-missing") == b"x"
