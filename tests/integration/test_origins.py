"""The three origins behave alike: file (temp dir), S3 (moto server), Azure Blob (Azurite).

Sizes come from the ``origin_config`` fixture: multipart above 6 MiB in 5 MiB parts, so the
12 MiB object goes up in three parts (S3 multipart upload, Azure staged blocks).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgecache.common import errors
from edgecache.common.config import OriginConfig, load_config
from edgecache.origin import Origin, open_origin
from edgecache.origin.azure import AzureOrigin
from edgecache.origin.file import FileOrigin
from edgecache.origin.s3 import S3Origin
from tests.fixtures.origins import azurite_connection_string
from tests.fixtures.ports import free_port

MiB = 1024 * 1024
BIG = 12 * MiB
DATA = os.urandom(BIG)
HEADERS = {
    "cache-control": "max-age=60",
    "content-disposition": 'attachment; filename="x.bin"',
    "content-encoding": "gzip",  # not gzip at all: nobody may try to decode it
    "content-language": "en",
    "expires": "Thu, 01 Dec 2044 16:00:00 GMT",
}
METADATA = {"color": "blue", "edgecache-etag": "a user's own", "with_underscore": "1"}


async def pieces(data: bytes, size: int = 1_000_003) -> AsyncIterator[bytes]:
    """``data`` in odd-sized pieces, as a network stream would deliver it."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def read(origin: Origin, bucket: str, key: str, first: int, last: int, **kw: str) -> bytes:
    return b"".join([p async for p in origin.get_range(bucket, key, first, last, **kw)])


async def keys(origin: Origin, bucket: str, **kw: str) -> list[str]:
    return [o.key async for o in origin.iter_objects(bucket, **kw)]


async def put(origin: Origin, bucket: str, key: str, data: bytes, **kw: object) -> str:
    return await origin.put_object(bucket, key, pieces(data), size=len(data), **kw)  # type: ignore[arg-type]


# -- buckets ----------------------------------------------------------------------------------
async def test_bucket_lifecycle(origin: Origin, origin_bucket: str) -> None:
    assert not await origin.bucket_exists(origin_bucket)
    await origin.create_bucket(origin_bucket)
    await origin.create_bucket(origin_bucket)  # idempotent
    assert await origin.bucket_exists(origin_bucket)
    listed = {b.name: b for b in await origin.list_buckets()}
    assert origin_bucket in listed
    assert abs(listed[origin_bucket].created - time.time()) < 600

    await put(origin, origin_bucket, "k", b"x")
    with pytest.raises(errors.BucketNotEmpty):
        await origin.delete_bucket(origin_bucket)
    await origin.delete_object(origin_bucket, "k")
    await origin.delete_bucket(origin_bucket)
    assert not await origin.bucket_exists(origin_bucket)
    await origin.delete_bucket(origin_bucket)  # idempotent


async def test_put_creates_the_bucket(origin: Origin, origin_bucket: str) -> None:
    await put(origin, origin_bucket, "dir/k", b"hello")
    assert await origin.bucket_exists(origin_bucket)
    assert await read(origin, origin_bucket, "dir/k", 0, 4) == b"hello"


# -- objects ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, BIG], ids=["0B", "1B", "12MiB-multipart"])
async def test_put_head_get(origin: Origin, origin_bucket: str, size: int) -> None:
    data = DATA[:size]
    md5 = hashlib.md5(data).hexdigest()
    etag = await put(
        origin, origin_bucket, "obj", data,
        content_type="application/x-test", metadata=METADATA, headers=HEADERS, etag=md5,
    )  # fmt: skip
    obj = await origin.head_object(origin_bucket, "obj")
    assert obj.key == "obj"
    assert obj.size == size
    assert obj.etag == etag and etag and '"' not in etag
    assert obj.content_type == "application/x-test"
    assert obj.metadata == METADATA
    assert obj.headers == HEADERS
    assert abs(obj.last_modified - time.time()) < 600
    if isinstance(origin, S3Origin) and size == BIG:
        assert etag.endswith("-3")  # three parts
    if size == 0:
        with pytest.raises(errors.InvalidRange):
            await read(origin, origin_bucket, "obj", 0, 0)
        return
    last = size - 1
    assert await read(origin, origin_bucket, "obj", 0, 0) == data[:1]
    assert await read(origin, origin_bucket, "obj", last, last) == data[last:]
    middle = size // 2
    assert await read(origin, origin_bucket, "obj", middle, last) == data[middle:]
    assert await read(origin, origin_bucket, "obj", 0, last) == data
    assert await read(origin, origin_bucket, "obj", 0, last + 100) == data  # clamped, as S3
    assert await read(origin, origin_bucket, "obj", 0, last, if_match=etag) == data
    with pytest.raises(errors.InvalidRange):
        await read(origin, origin_bucket, "obj", size, size + 10)


async def test_multipart_piece_boundaries(origin: Origin, origin_bucket: str) -> None:
    """Ranges across part boundaries of a multipart object read back exactly."""
    await put(origin, origin_bucket, "big", DATA)
    part = 5 * MiB
    for first, last in [(part - 1, part), (part - 3, 2 * part + 3), (1, BIG - 2)]:
        assert await read(origin, origin_bucket, "big", first, last) == DATA[first : last + 1]


async def test_overwrite_and_stale_etag(origin: Origin, origin_bucket: str) -> None:
    old = await put(origin, origin_bucket, "k", b"version one")
    new = await put(origin, origin_bucket, "k", b"version two!")
    assert old != new
    assert (await origin.head_object(origin_bucket, "k")).etag == new
    assert await read(origin, origin_bucket, "k", 0, 100, if_match=new) == b"version two!"
    with pytest.raises(errors.PreconditionFailed):
        await read(origin, origin_bucket, "k", 0, 3, if_match=old)


async def test_missing_key_and_bucket(origin: Origin, origin_bucket: str) -> None:
    with pytest.raises(errors.NoSuchBucket):
        await origin.head_object(origin_bucket, "k")
    with pytest.raises(errors.NoSuchBucket):
        await read(origin, origin_bucket, "k", 0, 0)
    with pytest.raises(errors.NoSuchBucket):
        await keys(origin, origin_bucket)
    await origin.create_bucket(origin_bucket)
    with pytest.raises(errors.NoSuchKey):
        await origin.head_object(origin_bucket, "k")
    with pytest.raises(errors.NoSuchKey):
        await read(origin, origin_bucket, "k", 0, 0)
    assert await keys(origin, origin_bucket) == []


async def test_delete_is_idempotent(origin: Origin, origin_bucket: str) -> None:
    await origin.delete_object(origin_bucket, "k")  # no bucket
    await put(origin, origin_bucket, "k", b"x")
    await origin.delete_object(origin_bucket, "k")
    await origin.delete_object(origin_bucket, "k")
    with pytest.raises(errors.NoSuchKey):
        await origin.head_object(origin_bucket, "k")


async def test_delete_of_a_key_under_missing_folders_is_a_no_op(
    origin: Origin, origin_bucket: str
) -> None:
    """S3 answers 204 to any DELETE of a missing key: the origin must too, whatever the
    key's "folders" (once, the file origin fsynced the missing folder and failed forever)."""
    await put(origin, origin_bucket, "other", b"x")
    await origin.delete_object(origin_bucket, "no-such-dir/no-such-key")
    await origin.delete_object(origin_bucket, "other/below/a/file")  # a parent is an object
    await put(origin, origin_bucket, "a/b/c", b"y")
    await origin.delete_object(origin_bucket, "a/no-such-dir/k")
    assert sorted(await keys(origin, origin_bucket)) == ["a/b/c", "other"]


async def test_short_or_long_body_writes_nothing(origin: Origin, origin_bucket: str) -> None:
    await origin.create_bucket(origin_bucket)
    for size in (5, 3, 7 * MiB):  # over, under, a multipart upload cut short
        with pytest.raises(errors.IncompleteBody):
            await origin.put_object(origin_bucket, "k", pieces(DATA[: 6 * MiB][:4]), size=size)
    assert await keys(origin, origin_bucket) == []


async def test_failed_multipart_upload_leaves_nothing(origin: Origin, origin_bucket: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield DATA[: 11 * MiB]
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await origin.put_object(origin_bucket, "k", broken(), size=BIG)
    with pytest.raises((errors.NoSuchKey, errors.NoSuchBucket)):
        await origin.head_object(origin_bucket, "k")
    if isinstance(origin, S3Origin):  # aborted, not left to accrue storage
        uploads = await origin._s3.list_multipart_uploads(Bucket=origin_bucket)
        assert not uploads.get("Uploads")


# -- listing ----------------------------------------------------------------------------------
TRICKY = ["a", "a-b", "a/b", "a.b", "a0", "a/b/c", "a/bb", "b", "ab", "a/"]


async def test_listing_order(origin: Origin, origin_bucket: str) -> None:
    for key in reversed(TRICKY):
        await put(origin, origin_bucket, key, key.encode())
    everything = sorted(TRICKY, key=lambda k: k.encode())
    assert await keys(origin, origin_bucket) == everything
    assert await keys(origin, origin_bucket, prefix="a") == [k for k in everything if k[0] == "a"]
    assert await keys(origin, origin_bucket, prefix="a/") == ["a/", "a/b", "a/b/c", "a/bb"]
    assert await keys(origin, origin_bucket, prefix="a/b") == ["a/b", "a/b/c", "a/bb"]
    assert await keys(origin, origin_bucket, start_after="a.b") == [
        "a/",
        "a/b",
        "a/b/c",
        "a/bb",
        "a0",
        "ab",
        "b",
    ]
    assert await keys(origin, origin_bucket, prefix="a", start_after="a/b/c") == [
        "a/bb",
        "a0",
        "ab",
    ]
    assert await keys(origin, origin_bucket, start_after="b") == []
    assert await keys(origin, origin_bucket, prefix="c") == []
    listed = {o.key: o async for o in origin.iter_objects(origin_bucket)}
    for key in TRICKY:
        assert listed[key].size == len(key)
        assert listed[key].etag == (await origin.head_object(origin_bucket, key)).etag


# -- availability -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "azure"])
async def test_unreachable_origin_is_service_unavailable(
    kind: str, aws_test_env: dict[str, str]
) -> None:
    port = free_port()  # nothing listens there
    if kind == "s3":
        config = OriginConfig(
            kind="s3", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", timeout_s=2
        )
        origin: Origin = S3Origin(config)
    else:
        config = OriginConfig(
            kind="azure", connection_string=azurite_connection_string(port), timeout_s=2
        )
        origin = AzureOrigin(config)
    await origin.start()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            origin.head_object("bucket", "key"),
            put(origin, "bucket", "key", b"data"),
            read(origin, "bucket", "key", 0, 1),
            keys(origin, "bucket"),
            return_exceptions=True,
        )
        for outcome in outcomes:
            assert isinstance(outcome, errors.ServiceUnavailable), outcome
            assert outcome.retry_after_s
        assert time.monotonic() - started < 20
    finally:
        await origin.close()


# -- backend specifics ------------------------------------------------------------------------
async def test_azure_rejects_origin_buckets_it_cannot_hold(azure_origin: AzureOrigin) -> None:
    for name in ("with.dot", "double--dash"):
        with pytest.raises(errors.InvalidBucketName):
            await azure_origin.create_bucket(name)
        assert not await azure_origin.bucket_exists(name)


async def test_azure_metadata_names_round_trip(
    azure_origin: AzureOrigin, origin_bucket: str
) -> None:
    metadata = {"x-y.z": "1", "u_": "2", "ec_etag": "3", "Ünï": "4"}
    await put(azure_origin, origin_bucket, "k", b"x", metadata=metadata)
    assert (await azure_origin.head_object(origin_bucket, "k")).metadata == metadata


def test_open_origin_picks_the_configured_kind(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    origin = open_origin(config)
    assert isinstance(origin, FileOrigin) and origin.root == tmp_path / "origin"
    for kind, cls in (("s3", S3Origin), ("azure", AzureOrigin)):
        config = load_config(env={"EDGECACHE_ORIGIN": kind})
        assert type(open_origin(config)) is cls
