"""The cache node's s3.* operations through the real client and a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest

from edgecache.common import errors, wire
from edgecache.common.client import EdgecacheClient

MiB = 1024 * 1024


async def _body(data: bytes, piece: int = 300_000):
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def _put(client: EdgecacheClient, bucket: str, key: str, data: bytes, **kw) -> wire.ObjectInfo:
    info = await client.put_object(wire.PutObject(bucket=bucket, key=key, size=len(data), **kw), _body(data))
    assert isinstance(info, wire.ObjectInfo)
    return info


async def test_bucket_lifecycle(client: EdgecacheClient, bucket_name: str) -> None:
    assert isinstance(await client.request(wire.CreateBucket(bucket=bucket_name)), wire.Ok)
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        await client.request(wire.CreateBucket(bucket=bucket_name))
    head = await client.request(wire.HeadBucket(bucket=bucket_name))
    assert isinstance(head, wire.BucketInfo) and head.name == bucket_name
    listed = await client.request(wire.ListBuckets())
    assert bucket_name in [b.name for b in listed.buckets]
    await _put(client, bucket_name, "k", b"x")
    with pytest.raises(errors.BucketNotEmpty):
        await client.request(wire.DeleteBucket(bucket=bucket_name))
    await client.request(wire.DeleteObject(bucket=bucket_name, key="k"))
    await client.request(wire.DeleteBucket(bucket=bucket_name))
    with pytest.raises(errors.NoSuchBucket):
        await client.request(wire.HeadBucket(bucket=bucket_name))
    with pytest.raises(errors.InvalidBucketName):
        await client.request(wire.CreateBucket(bucket="Bad_Name"))


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345])
async def test_put_get_round_trip(client: EdgecacheClient, bucket_name: str, size: int) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    data = os.urandom(size)
    info = await _put(client, bucket_name, "dir/obj", data, content_type="text/plain", metadata={"a": "1"})
    assert info.etag == hashlib.md5(data).hexdigest()
    got_info, got = await client.get_object_bytes(bucket_name, "dir/obj")
    assert got == data
    assert got_info.size == size and got_info.content_type == "text/plain" and got_info.metadata == {"a": "1"}
    head = await client.request(wire.HeadObject(bucket=bucket_name, key="dir/obj"))
    assert head.etag == info.etag


async def test_range_reads_across_chunks(client: EdgecacheClient, bucket_name: str) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    data = os.urandom(3 * MiB + 7)
    await _put(client, bucket_name, "r", data)
    for header, (first, last) in {
        "bytes=0-0": (0, 0),
        f"bytes={MiB - 2}-{MiB + 2}": (MiB - 2, MiB + 2),
        "bytes=-5": (len(data) - 5, len(data) - 1),
        f"bytes={2 * MiB}-": (2 * MiB, len(data) - 1),
    }.items():
        info, body = await client.get_object(wire.GetObject(bucket=bucket_name, key="r", range=header))
        assert (info.range_first, info.range_last) == (first, last)
        assert b"".join([p async for p in body]) == data[first : last + 1]
    with pytest.raises(errors.InvalidRange):
        await client.get_object(wire.GetObject(bucket=bucket_name, key="r", range=f"bytes={len(data)}-"))


async def test_missing_things(client: EdgecacheClient, bucket_name: str) -> None:
    with pytest.raises(errors.NoSuchBucket):
        await client.get_object(wire.GetObject(bucket=bucket_name, key="k"))
    await client.request(wire.CreateBucket(bucket=bucket_name))
    with pytest.raises(errors.NoSuchKey):
        await client.get_object(wire.GetObject(bucket=bucket_name, key="k"))
    with pytest.raises(errors.NoSuchKey):
        await client.request(wire.HeadObject(bucket=bucket_name, key="k"))
    await client.request(wire.DeleteObject(bucket=bucket_name, key="never-existed"))


async def test_digests_are_verified_and_nothing_is_kept(client: EdgecacheClient, bucket_name: str, cachenode) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    data = os.urandom(2 * MiB)
    chunks_before = cachenode.store.stats.chunks
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(errors.BadDigest):
        await _put(client, bucket_name, "k", data, content_md5=wrong_md5)
    with pytest.raises(errors.BadDigest):
        await _put(client, bucket_name, "k", data, checksums={"crc32": "AAAAAA=="})
    with pytest.raises(errors.IncompleteBody):
        await client.put_object(wire.PutObject(bucket=bucket_name, key="k", size=len(data) + 1), _body(data))
    with pytest.raises(errors.NoSuchKey):
        await client.request(wire.HeadObject(bucket=bucket_name, key="k"))
    assert cachenode.store.stats.chunks == chunks_before
    good_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    info = await _put(client, bucket_name, "k", data, content_md5=good_md5)
    assert info.etag == hashlib.md5(data).hexdigest()


async def test_overwrite_and_delete(client: EdgecacheClient, bucket_name: str) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    await _put(client, bucket_name, "k", b"one")
    await _put(client, bucket_name, "k", b"two!")
    assert (await client.get_object_bytes(bucket_name, "k"))[1] == b"two!"
    await client.request(wire.DeleteObject(bucket=bucket_name, key="k"))
    with pytest.raises(errors.NoSuchKey):
        await client.get_object_bytes(bucket_name, "k")


async def test_listing_with_delimiter_and_pages(client: EdgecacheClient, bucket_name: str) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    keys = ["a", "a-b", "a/b", "a/c/d", "a.b", "a0", "b/x", "b/y", "c"]
    for key in keys:
        await _put(client, bucket_name, key, key.encode())
    flat = await client.request(wire.ListObjects(bucket=bucket_name))
    assert [o.key for o in flat.contents] == sorted(keys, key=str.encode)
    rolled = await client.request(wire.ListObjects(bucket=bucket_name, delimiter="/"))
    assert [o.key for o in rolled.contents] == ["a", "a-b", "a.b", "a0", "c"]
    assert rolled.common_prefixes == ["a/", "b/"]
    under = await client.request(wire.ListObjects(bucket=bucket_name, prefix="a/", delimiter="/"))
    assert [o.key for o in under.contents] == ["a/b"] and under.common_prefixes == ["a/c/"]
    seen: list[str] = []
    token = ""
    while True:
        page = await client.request(
            wire.ListObjects(bucket=bucket_name, delimiter="/", max_keys=2, continuation_token=token)
        )
        seen += [o.key for o in page.contents] + page.common_prefixes
        if not page.is_truncated:
            break
        token = page.next_token
    assert seen == ["a", "a-b", "a.b", "a/", "a0", "b/", "c"]


async def test_multipart_upload(client: EdgecacheClient, bucket_name: str) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    up = await client.request(wire.CreateMultipartUpload(bucket=bucket_name, key="big", content_type="video/mp4"))
    parts = [os.urandom(5 * MiB + 3), os.urandom(5 * MiB), os.urandom(1234)]
    etags = []
    for n, part in enumerate(parts, start=1):
        info = await client.put_object(
            wire.UploadPart(bucket=bucket_name, key="big", upload_id=up.upload_id, part_number=n, size=len(part)),
            _body(part),
        )
        etags.append(info.etag)
    listed = await client.request(wire.ListParts(bucket=bucket_name, key="big", upload_id=up.upload_id))
    assert [p.part_number for p in listed.parts] == [1, 2, 3]
    with pytest.raises(errors.InvalidPartOrder):
        await client.request(wire.CompleteMultipartUpload(
            bucket=bucket_name, key="big", upload_id=up.upload_id,
            parts=[wire.CompletedPart(part_number=2, etag=etags[1]), wire.CompletedPart(part_number=1, etag=etags[0])],
        ))
    with pytest.raises(errors.InvalidPart):
        await client.request(wire.CompleteMultipartUpload(
            bucket=bucket_name, key="big", upload_id=up.upload_id,
            parts=[wire.CompletedPart(part_number=1, etag="0" * 32)],
        ))
    await client.put_object(
        wire.UploadPart(bucket=bucket_name, key="big", upload_id=up.upload_id, part_number=4, size=1), _body(b"z")
    )
    with pytest.raises(errors.EntityTooSmall):  # part 3 is under 5 MiB and not the last
        await client.request(wire.CompleteMultipartUpload(
            bucket=bucket_name, key="big", upload_id=up.upload_id,
            parts=[wire.CompletedPart(part_number=3, etag=etags[2]),
                   wire.CompletedPart(part_number=4, etag=hashlib.md5(b"z").hexdigest())],
        ))
    done = await client.request(wire.CompleteMultipartUpload(
        bucket=bucket_name, key="big", upload_id=up.upload_id,
        parts=[wire.CompletedPart(part_number=n, etag=e) for n, e in enumerate(etags, start=1)],
    ))
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    assert done.etag == f"{hashlib.md5(md5s).hexdigest()}-3"
    info, got = await client.get_object_bytes(bucket_name, "big")
    assert got == b"".join(parts) and info.content_type == "video/mp4" and info.parts_count == 3
    with pytest.raises(errors.NoSuchUpload):
        await client.request(wire.ListParts(bucket=bucket_name, key="big", upload_id=up.upload_id))


async def test_abort_multipart(client: EdgecacheClient, bucket_name: str) -> None:
    await client.request(wire.CreateBucket(bucket=bucket_name))
    up = await client.request(wire.CreateMultipartUpload(bucket=bucket_name, key="k"))
    await client.put_object(
        wire.UploadPart(bucket=bucket_name, key="k", upload_id=up.upload_id, part_number=1, size=3), _body(b"abc")
    )
    await client.request(wire.AbortMultipartUpload(bucket=bucket_name, key="k", upload_id=up.upload_id))
    with pytest.raises(errors.NoSuchUpload):
        await client.request(wire.AbortMultipartUpload(bucket=bucket_name, key="k", upload_id=up.upload_id))
    with pytest.raises(errors.NoSuchKey):
        await client.request(wire.HeadObject(bucket=bucket_name, key="k"))


async def test_deleted_bucket_stays_deleted_while_the_origin_still_has_it(client: EdgecacheClient, bucket_name: str, cachenode) -> None:
    await cachenode.origin.create_bucket(bucket_name)  # as if already written back
    await client.request(wire.HeadBucket(bucket=bucket_name))  # adopted from the origin
    await client.request(wire.DeleteBucket(bucket=bucket_name))  # no writeback runs here
    assert await cachenode.origin.bucket_exists(bucket_name)
    with pytest.raises(errors.NoSuchBucket):
        await client.request(wire.HeadBucket(bucket=bucket_name))
    assert bucket_name not in [b.name for b in (await client.request(wire.ListBuckets())).buckets]
    await client.request(wire.CreateBucket(bucket=bucket_name))
    await client.request(wire.HeadBucket(bucket=bucket_name))


async def test_the_callers_request_id_reaches_the_nodes_log_line(client: EdgecacheClient, bucket_name: str) -> None:
    import structlog

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with structlog.contextvars.bound_contextvars(request_id="REQ-0123456789"):
            await client.request(wire.CreateBucket(bucket=bucket_name))
        for _ in range(50):  # the node logs its line right after answering
            if any(e.get("event") == "request" and e.get("bucket") == bucket_name for e in logs):
                break
            await asyncio.sleep(0.02)
    lines = [e for e in logs if e.get("event") == "request" and e.get("bucket") == bucket_name]
    assert lines and lines[0]["request_id"] == "REQ-0123456789"
