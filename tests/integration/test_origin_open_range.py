"""``Origin.open_range``: one ranged GET gives what a HEAD gives and the range's bytes, alike
for the three origins (file, moto S3, Azurite); and S3's ``open_range_blocking`` (for fill
threads) gives what its ``open_range`` gives."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable

import msgspec
import pytest

from edgecache.common import errors
from edgecache.origin import Origin
from edgecache.origin.base import BlockingRangeRead, RangeRead

K = 100_000  # a "chunk" of the tests
DATA = os.urandom(3 * K + 5)
HEADERS = {"cache-control": "max-age=60", "content-language": "en"}
METADATA = {"color": "blue", "edgecache-etag": "a user's own"}


async def _one(data: bytes):  # noqa: ANN202 - an async generator
    yield data


async def _put(origin: Origin, bucket: str, key: str, data: bytes) -> str:
    return await origin.put_object(
        bucket,
        key,
        _one(data),
        size=len(data),
        content_type="application/x-test",
        metadata=METADATA,
        headers=HEADERS,
    )


async def _body(read: RangeRead) -> bytes:
    try:
        return b"".join([p async for p in read])
    finally:
        await read.aclose()


async def test_a_ranged_get_describes_the_whole_object(origin: Origin, origin_bucket: str) -> None:
    await _put(origin, origin_bucket, "obj", DATA)
    head = await origin.head_object(origin_bucket, "obj")
    for first, last in [(0, K - 1), (K, 2 * K - 1), (3 * K, 4 * K - 1)]:
        read = await origin.open_range(origin_bucket, "obj", first, last)
        # size of the object, ETag, type, headers, metadata, time; an S3 GET also says the
        # object has no tags (no x-amz-tagging-count), which its HEAD cannot
        assert read.object.tags in (None, {}) and head.tags in (None, {})
        assert msgspec.structs.replace(read.object, tags=head.tags) == head
        assert (read.first, read.last) == (first, min(last, len(DATA) - 1))  # clamped, as S3
        assert await _body(read) == DATA[first : last + 1]
    read = await origin.open_range(origin_bucket, "obj", 0, 9, if_match=head.etag)
    assert await _body(read) == DATA[:10]


async def test_errors_come_before_any_byte(origin: Origin, origin_bucket: str) -> None:
    with pytest.raises(errors.NoSuchBucket):
        await origin.open_range(origin_bucket, "k", 0, 9)
    await _put(origin, origin_bucket, "empty", b"")
    with pytest.raises(errors.NoSuchKey):
        await origin.open_range(origin_bucket, "k", 0, 9)
    with pytest.raises(errors.InvalidRange):  # an empty object has no byte to range over
        await origin.open_range(origin_bucket, "empty", 0, 9)
    etag = await _put(origin, origin_bucket, "obj", b"0123456789")
    with pytest.raises(errors.InvalidRange):
        await origin.open_range(origin_bucket, "obj", 10, 19)
    await _put(origin, origin_bucket, "obj", b"changed")
    with pytest.raises(errors.PreconditionFailed):
        await origin.open_range(origin_bucket, "obj", 0, 9, if_match=etag)


async def test_an_unread_range_is_released(origin: Origin, origin_bucket: str) -> None:
    """Closing without reading releases the request: the origin then serves the next ones."""
    await _put(origin, origin_bucket, "obj", DATA)
    for _ in range(12):  # more than a connection pool would hold, were they leaked
        read = await origin.open_range(origin_bucket, "obj", 0, len(DATA) - 1)
        await read.aclose()
        await read.aclose()  # idempotent
    assert await _body(await origin.open_range(origin_bucket, "obj", 1, 2)) == DATA[1:3]


# -- the same from a worker thread (S3: Origin.open_range_blocking) ------------------------------
def _read_all(read: BlockingRangeRead) -> bytes:
    try:
        pieces = []
        while piece := read.read(7 * 1024):
            pieces.append(piece)
        return b"".join(pieces)
    finally:
        read.close()


async def test_a_blocking_ranged_get_answers_as_the_event_loop_one(s3_origin: Origin, origin_bucket: str) -> None:
    assert s3_origin.blocking_reads
    await _put(s3_origin, origin_bucket, "obj", DATA)
    for first, last in [(0, K - 1), (K, 2 * K - 1), (3 * K, 4 * K - 1)]:
        on_loop = await s3_origin.open_range(origin_bucket, "obj", first, last)
        read = await asyncio.to_thread(s3_origin.open_range_blocking, origin_bucket, "obj", first, last)
        assert read.object == on_loop.object
        assert (read.first, read.last) == (on_loop.first, on_loop.last) == (first, min(last, len(DATA) - 1))
        assert await asyncio.to_thread(_read_all, read) == await _body(on_loop) == DATA[first : last + 1]
    read = await asyncio.to_thread(
        s3_origin.open_range_blocking, origin_bucket, "obj", 0, 9, if_match=read.object.etag
    )
    assert await asyncio.to_thread(_read_all, read) == DATA[:10]


async def test_a_blocking_ranged_get_raises_as_the_event_loop_one(s3_origin: Origin, origin_bucket: str) -> None:
    def opening(key: str, first: int, last: int, if_match: str | None = None) -> Awaitable[BlockingRangeRead]:
        return asyncio.to_thread(s3_origin.open_range_blocking, origin_bucket, key, first, last, if_match=if_match)

    with pytest.raises(errors.NoSuchBucket):
        await opening("k", 0, 9)
    await _put(s3_origin, origin_bucket, "empty", b"")
    with pytest.raises(errors.NoSuchKey):
        await opening("k", 0, 9)
    with pytest.raises(errors.InvalidRange):
        await opening("empty", 0, 9)
    etag = await _put(s3_origin, origin_bucket, "obj", b"0123456789")
    with pytest.raises(errors.InvalidRange):
        await opening("obj", 10, 19)
    await _put(s3_origin, origin_bucket, "obj", b"changed")
    with pytest.raises(errors.PreconditionFailed):
        await opening("obj", 0, 9, etag)
    for _ in range(40):  # more than the blocking client's pool holds, were they leaked
        (await opening("obj", 0, 6)).close()
    assert await asyncio.to_thread(_read_all, await opening("obj", 1, 2)) == b"ha"
