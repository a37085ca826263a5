"""The gateway over HTTP (uvicorn on a free port) against a real nats-server, driven by boto3.

A small in-test responder answers the ``s3.*`` subjects with the real stream protocol
(``DownloadSender`` / ``UploadReceiver``) from an in-memory store: it stands in for the
cache node, not for any code under test. The nats-server is private to this module
(``max_payload`` 64 KiB, so modest objects already travel as many frames) so that no
other test's subscribers on ``s3.>`` can answer in its place.

boto3 is synchronous: its calls run in a thread (``asyncio.to_thread``) while the
gateway and the responder run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator

import boto3
import botocore.config
import botocore.exceptions
import httpx
import nats
import nats.errors
import pytest
import pytest_asyncio
import uvicorn

from edgecache.common import errors, ranges, stream, wire
from edgecache.common.config import load_config
from edgecache.gateway.app import create_app
from edgecache.launcher.natsserver import NatsServer, free_port

ACCESS_KEY = "AKIAEDGECACHETEST"
SECRET_KEY = "edgecache-test-secret-key/0123456789abcdef"
REGION = "us-east-1"
BROKEN = "broken"  # objects under this key prefix fail half-way through a download
SILENT = "silent-bucket"  # requests for this bucket get no answer at all


# == the stand-in cache node ===================================================================
class MemoryNode:
    """Answers ``s3.*`` from memory with the real framed-stream protocol."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.buckets: dict[str, float] = {}
        self.objects: dict[tuple[str, str], tuple[wire.ObjectInfo, bytes]] = {}
        self.uploads: dict[str, dict] = {}
        self.requests: list[wire.Request] = []
        self.sub = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        async def cb(msg) -> None:
            task = asyncio.ensure_future(self.handle(msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.sub = await self.nc.subscribe("s3.>", cb=cb)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None
        await self.nc.flush()

    async def reply(self, msg, value) -> None:
        await self.nc.publish(msg.reply, wire.encode(value))

    async def handle(self, msg) -> None:
        request = wire.REQUEST_DECODER.decode(msg.data)
        self.requests.append(request)
        if getattr(request, "bucket", "") == SILENT:
            return
        try:
            match request:
                case wire.PutObject() | wire.UploadPart():
                    await self.upload(msg, request)
                    return
                case wire.GetObject():
                    await self.download(msg, request)
                    return
                case _:
                    result = self.answer(request)
        except errors.S3Error as exc:
            result = stream.error_of(exc)
        await self.reply(msg, result)

    def bucket(self, name: str) -> None:
        if name not in self.buckets:
            raise errors.NoSuchBucket(resource=name)

    def lookup(self, bucket: str, key: str) -> tuple[wire.ObjectInfo, bytes]:
        self.bucket(bucket)
        found = self.objects.get((bucket, key))
        if found is None:
            raise errors.NoSuchKey(resource=f"{bucket}/{key}")
        return found

    def answer(self, request):  # noqa: C901 - one case per operation
        match request:
            case wire.ListBuckets():
                return wire.BucketList(
                    buckets=[
                        wire.BucketInfo(name=n, created=t) for n, t in sorted(self.buckets.items())
                    ]
                )
            case wire.CreateBucket(bucket=b):
                if b in self.buckets:
                    raise errors.BucketAlreadyOwnedByYou(resource=b)
                self.buckets[b] = time.time()
                return wire.Ok()
            case wire.HeadBucket(bucket=b):
                self.bucket(b)
                return wire.BucketInfo(name=b, created=self.buckets[b])
            case wire.DeleteBucket(bucket=b):
                self.bucket(b)
                if any(k[0] == b for k in self.objects):
                    raise errors.BucketNotEmpty(resource=b)
                del self.buckets[b]
                return wire.Ok()
            case wire.HeadObject(bucket=b, key=k, range=r):
                info, _ = self.lookup(b, k)
                return self.ranged(info, r)
            case wire.DeleteObject(bucket=b, key=k):
                self.bucket(b)
                self.objects.pop((b, k), None)
                return wire.Ok()
            case wire.ListObjects():
                return self.list(request)
            case wire.CreateMultipartUpload(bucket=b, key=k):
                self.bucket(b)
                upload_id = uuid.uuid4().hex
                self.uploads[upload_id] = {"request": request, "parts": {}}
                return wire.MultipartUpload(bucket=b, key=k, upload_id=upload_id)
            case wire.CompleteMultipartUpload(bucket=b, key=k, upload_id=u, parts=parts):
                upload = self.uploads.pop(u, None)
                if upload is None:
                    raise errors.NoSuchUpload()
                data = b""
                md5s = b""
                for part in parts:
                    stored = upload["parts"].get(part.part_number)
                    if stored is None or stored[0].etag != part.etag:
                        raise errors.InvalidPart()
                    data += stored[1]
                    md5s += bytes.fromhex(stored[0].etag)
                init = upload["request"]
                info = wire.ObjectInfo(
                    bucket=b,
                    key=k,
                    size=len(data),
                    etag=f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}",
                    last_modified=time.time(),
                    content_type=init.content_type,
                    metadata=init.metadata,
                    headers=init.headers,
                    parts_count=len(parts),
                )
                self.objects[(b, k)] = (info, data)
                return info
            case wire.AbortMultipartUpload(upload_id=u):
                if self.uploads.pop(u, None) is None:
                    raise errors.NoSuchUpload()
                return wire.Ok()
            case wire.ListParts(bucket=b, key=k, upload_id=u):
                upload = self.uploads.get(u)
                if upload is None:
                    raise errors.NoSuchUpload()
                parts = [p for _, (p, _) in sorted(upload["parts"].items())]
                return wire.ListPartsResult(bucket=b, key=k, upload_id=u, parts=parts)
        raise errors.NotImplementedError_()

    def list(self, request: wire.ListObjects) -> wire.ListObjectsResult:
        self.bucket(request.bucket)
        after = max(request.start_after, request.marker, request.continuation_token)
        keys = sorted(
            k for b, k in self.objects if b == request.bucket and k.startswith(request.prefix)
        )
        contents: list[wire.ObjectSummary] = []
        prefixes: list[str] = []
        truncated = False
        last = ""
        for key in keys:
            if key <= after:
                continue
            if request.delimiter:
                cut = key.find(request.delimiter, len(request.prefix))
                if cut >= 0:
                    common = key[: cut + len(request.delimiter)]
                    if common in prefixes or common <= after:
                        continue
                    if len(contents) + len(prefixes) >= request.max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = common
                    continue
            if len(contents) + len(prefixes) >= request.max_keys:
                truncated = True
                break
            info, _ = self.objects[(request.bucket, key)]
            contents.append(
                wire.ObjectSummary(
                    key=key, size=info.size, etag=info.etag, last_modified=info.last_modified
                )
            )
            last = key
        return wire.ListObjectsResult(
            contents=contents,
            common_prefixes=prefixes,
            is_truncated=truncated,
            next_token=last if truncated else "",
        )

    @staticmethod
    def ranged(info: wire.ObjectInfo, header: str | None) -> wire.ObjectInfo:
        selected = ranges.parse_range(header, info.size)
        if selected is None:
            return info
        return wire.ObjectInfo(
            **{f: getattr(info, f) for f in info.__struct_fields__ if not f.startswith("range_")},
            range_first=selected[0],
            range_last=selected[1],
        )

    async def upload(self, msg, request) -> None:
        rx = stream.UploadReceiver(
            self.nc, msg.reply, self.nc.new_inbox(), window=4, idle_timeout_s=5
        )
        try:
            if isinstance(request, wire.UploadPart) and request.upload_id not in self.uploads:
                raise errors.NoSuchUpload()
            self.bucket(request.bucket)
            await rx.open()
            md5 = hashlib.md5()
            crc = 0
            pieces = []
            async for piece in rx:
                md5.update(piece)
                crc = zlib.crc32(piece, crc)
                pieces.append(piece)
            data = b"".join(pieces)
            if request.size is not None and request.size != len(data):
                raise errors.IncompleteBody()
            if request.content_md5 and base64.b64decode(request.content_md5) != md5.digest():
                raise errors.BadDigest()
            checksums = {**request.checksums, **(rx.end.checksums if rx.end else {})}
            crc32 = base64.b64encode(crc.to_bytes(4, "big")).decode()
            if "crc32" in checksums and checksums["crc32"] != crc32:
                raise errors.BadDigest()
            now = time.time()
            if isinstance(request, wire.UploadPart):
                part = wire.PartInfo(
                    part_number=request.part_number,
                    etag=md5.hexdigest(),
                    size=len(data),
                    last_modified=now,
                    checksums=checksums,
                )
                self.uploads[request.upload_id]["parts"][request.part_number] = (part, data)
                await rx.finish(part)
            else:
                info = wire.ObjectInfo(
                    bucket=request.bucket,
                    key=request.key,
                    size=len(data),
                    etag=md5.hexdigest(),
                    last_modified=now,
                    content_type=request.content_type,
                    metadata=request.metadata,
                    headers=request.headers,
                    checksums=checksums,
                )
                self.objects[(request.bucket, request.key)] = (info, data)
                await rx.finish(info)
        except errors.S3Error as exc:
            await rx.fail(exc)
        finally:
            await rx.close()

    async def download(self, msg, request: wire.GetObject) -> None:
        try:
            info, data = self.lookup(request.bucket, request.key)
            info = self.ranged(info, request.range)
        except errors.S3Error as exc:
            await self.reply(msg, stream.error_of(exc))
            return
        if info.range_first is not None:
            data = data[info.range_first : info.range_last + 1]
        tx = stream.DownloadSender(
            self.nc, msg.reply, window=stream.DownloadSender.window_of(msg), idle_timeout_s=5
        )
        try:
            await tx.start(info)
            step = 100_000
            for start in range(0, len(data), step):
                if request.key.startswith(BROKEN) and start >= len(data) // 2:
                    await tx.fail(errors.ServiceUnavailable("origin went away"))
                    return
                await tx.send(data[start : start + step])
            await tx.end()
        except errors.S3Error:
            pass
        finally:
            await tx.close()


# == fixtures ==================================================================================
@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("gateway-nats"), max_payload_bytes=64 * 1024)
    server.start()
    yield server
    server.stop()


class Gateway:
    def __init__(self, url: str, node: MemoryNode, server: uvicorn.Server, nc: nats.NATS) -> None:
        self.url = url
        self.node = node
        self.server = server
        self.nc = nc

    def s3(self, *, secret: str = SECRET_KEY, checksums: str = "when_supported", retries: int = 0):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name=REGION,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"total_max_attempts": retries + 1, "mode": "standard"},
                request_checksum_calculation=checksums,
                response_checksum_validation=checksums,
                connect_timeout=5,
                read_timeout=10,
            ),
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gateway(private_nats: NatsServer, tmp_path_factory) -> AsyncIterator[Gateway]:
    nc = await nats.connect(private_nats.url)
    node_nc = await nats.connect(private_nats.url)
    node = MemoryNode(node_nc)
    await node.start()
    config = load_config(
        env={},
        overrides={
            "gateway": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": REGION},
            "nats": {"url": private_nats.url, "request_timeout_s": 1.0},
        },
    )
    for _ in range(100):  # opens the reply mux, once the stand-in node's interest has propagated
        try:
            await nc.request("s3.listbuckets", wire.encode(wire.ListBuckets()))
            break
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.02)
    port = free_port()
    app = create_app(config, nc)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            server_header=False,
        )
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield Gateway(f"http://127.0.0.1:{port}", node, server, nc)
    server.should_exit = True
    await task
    await node.stop()
    await node_nc.drain()
    await nc.drain()


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def no_leaked_subscriptions(gateway: Gateway) -> AsyncIterator[None]:
    """Every download and upload releases its NATS subscriptions (a leak would also make
    ``drain()`` hang at shutdown)."""
    before = len(gateway.nc._subs)
    yield
    for _ in range(100):
        if len(gateway.nc._subs) <= before and not gateway.node.tasks:
            break
        await asyncio.sleep(0.05)
    assert len(gateway.nc._subs) <= before
    assert not gateway.node.tasks


async def call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


# == tests =====================================================================================
async def test_put_get_head_round_trip_with_metadata(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="photos")
    payload = os.urandom(300_000)  # several 64 KiB frames
    put = await call(
        s3.put_object,
        Bucket="photos",
        Key="dir/a b+c%2F.jpg",
        Body=payload,
        ContentType="image/jpeg",
        Metadata={"camera": "x100", "Owner": "Me"},
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="a.jpg"',
    )
    assert put["ETag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    got = await call(s3.get_object, Bucket="photos", Key="dir/a b+c%2F.jpg")
    assert (await call(got["Body"].read)) == payload
    assert got["ContentType"] == "image/jpeg"
    assert got["Metadata"] == {"camera": "x100", "owner": "Me"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == 'attachment; filename="a.jpg"'
    assert got["ContentLength"] == len(payload)
    assert got["ETag"] == put["ETag"]
    assert got["ResponseMetadata"]["HTTPHeaders"]["server"] == "edgecache"
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = await call(s3.head_object, Bucket="photos", Key="dir/a b+c%2F.jpg")
    assert head["ContentLength"] == len(payload)
    assert head["Metadata"]["camera"] == "x100"
    assert head["AcceptRanges"] == "bytes"
    stored = gateway.node.objects[("photos", "dir/a b+c%2F.jpg")][0]
    assert stored.key == "dir/a b+c%2F.jpg"  # decoded exactly once


async def test_put_without_checksums_and_empty_object(gateway: Gateway) -> None:
    s3 = gateway.s3(checksums="when_required")
    await call(s3.create_bucket, Bucket="plain")
    await call(s3.put_object, Bucket="plain", Key="empty", Body=b"")
    got = await call(s3.get_object, Bucket="plain", Key="empty")
    assert (await call(got["Body"].read)) == b""
    assert got["ContentLength"] == 0


async def test_range_get_is_206(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="ranges")
    payload = bytes(range(256)) * 1000
    await call(s3.put_object, Bucket="ranges", Key="k", Body=payload)
    got = await call(s3.get_object, Bucket="ranges", Key="k", Range="bytes=1000-70999")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 1000-70999/{len(payload)}"
    assert (await call(got["Body"].read)) == payload[1000:71000]
    suffix = await call(s3.get_object, Bucket="ranges", Key="k", Range="bytes=-10")
    assert (await call(suffix["Body"].read)) == payload[-10:]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_object, Bucket="ranges", Key="k", Range=f"bytes={len(payload)}-")
    assert info.value.response["Error"]["Code"] == "InvalidRange"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


async def test_no_such_key_is_s3_xml_404(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="errs")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_object, Bucket="errs", Key="missing")
    err = info.value.response
    assert err["Error"]["Code"] == "NoSuchKey"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert err["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/xml"
    assert err["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"] == err["Error"].get(
        "RequestId", err["ResponseMetadata"]["RequestId"]
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.head_object, Bucket="errs", Key="missing")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.list_objects_v2, Bucket="nobucket")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


async def test_mid_stream_error_cuts_the_connection(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="cuts")
    payload = os.urandom(1_000_000)
    await call(s3.put_object, Bucket="cuts", Key=f"{BROKEN}-1", Body=payload)
    got = await call(s3.get_object, Bucket="cuts", Key=f"{BROKEN}-1")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises((botocore.exceptions.BotoCoreError, OSError)):
        await call(got["Body"].read)
    async with httpx.AsyncClient() as http:
        url = await call(
            s3.generate_presigned_url, "get_object", Params={"Bucket": "cuts", "Key": f"{BROKEN}-1"}
        )
        with pytest.raises(httpx.HTTPError):
            async with http.stream("GET", url) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    pass


async def test_client_disconnect_mid_download_closes_the_stream(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="gone")
    payload = os.urandom(3_000_000)
    await call(s3.put_object, Bucket="gone", Key="big", Body=payload)
    url = await call(
        s3.generate_presigned_url, "get_object", Params={"Bucket": "gone", "Key": "big"}
    )
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    await reader.read(1000)
    writer.close()
    # the gateway stops and tells the node: no subscription is left behind for long
    for _ in range(100):
        if not gateway.node.tasks:
            break
        await asyncio.sleep(0.05)
    assert not gateway.node.tasks


async def test_wrong_secret_is_403_signature_does_not_match(gateway: Gateway) -> None:
    s3 = gateway.s3(secret="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.list_buckets)
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_unsigned_request_is_denied(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{gateway.url}/photos")
    assert response.status_code == 403
    assert b"<Code>AccessDenied</Code>" in response.content
    assert response.headers["x-amz-request-id"]


async def test_no_answer_is_503_with_retry_after(gateway: Gateway) -> None:
    s3 = gateway.s3()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.list_objects_v2, Bucket=SILENT)
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert response["Error"]["Code"] == "ServiceUnavailable"
    assert response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    await gateway.node.stop()  # no responders at all
    try:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await call(s3.list_buckets)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        await gateway.node.start()


async def test_listing_v2_with_url_encoding_and_delimiter(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="lists")
    for key in ["a/1", "a/2", "b c/1", "top+1", "top 2"]:
        await call(s3.put_object, Bucket="lists", Key=key, Body=b"x")
    listing = await call(s3.list_objects_v2, Bucket="lists", Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["a/", "b c/"]
    assert [c["Key"] for c in listing["Contents"]] == ["top 2", "top+1"]
    assert listing["KeyCount"] == 4
    paginator = s3.get_paginator("list_objects_v2")
    pages = await call(
        lambda: list(paginator.paginate(Bucket="lists", PaginationConfig={"PageSize": 2}))
    )
    assert [c["Key"] for p in pages for c in p.get("Contents", [])] == [
        "a/1",
        "a/2",
        "b c/1",
        "top 2",
        "top+1",
    ]
    v1 = await call(s3.list_objects, Bucket="lists", Prefix="a/")
    assert [c["Key"] for c in v1["Contents"]] == ["a/1", "a/2"]


async def test_multipart_round_trip(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="multi")
    created = await call(
        s3.create_multipart_upload,
        Bucket="multi",
        Key="big",
        ContentType="text/plain",
        Metadata={"m": "1"},
    )
    upload_id = created["UploadId"]
    parts = [os.urandom(150_000), os.urandom(70_000)]
    etags = []
    for number, data in enumerate(parts, start=1):
        out = await call(
            s3.upload_part,
            Bucket="multi",
            Key="big",
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        etags.append(out["ETag"])
    listed = await call(s3.list_parts, Bucket="multi", Key="big", UploadId=upload_id)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    done = await call(
        s3.complete_multipart_upload,
        Bucket="multi",
        Key="big",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert done["ETag"].endswith('-2"')
    assert done["Key"] == "big"
    got = await call(s3.get_object, Bucket="multi", Key="big")
    assert (await call(got["Body"].read)) == b"".join(parts)
    assert got["Metadata"] == {"m": "1"}
    aborted = await call(s3.create_multipart_upload, Bucket="multi", Key="other")
    await call(s3.abort_multipart_upload, Bucket="multi", Key="other", UploadId=aborted["UploadId"])
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(
            s3.complete_multipart_upload,
            Bucket="multi",
            Key="big",
            UploadId=upload_id,
            MultipartUpload={"Parts": []},
        )
    assert info.value.response["Error"]["Code"] == "MalformedXML"


async def test_bucket_operations(gateway: Gateway) -> None:
    s3 = gateway.s3()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.create_bucket, Bucket="Bad_Name")
    assert info.value.response["Error"]["Code"] == "InvalidBucketName"
    await call(s3.create_bucket, Bucket="ops")
    await call(s3.head_bucket, Bucket="ops")
    assert "ops" in [b["Name"] for b in (await call(s3.list_buckets))["Buckets"]]
    location = await call(s3.get_bucket_location, Bucket="ops")
    assert location["LocationConstraint"] is None
    await call(s3.put_object, Bucket="ops", Key="k", Body=b"1")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.delete_bucket, Bucket="ops")
    assert info.value.response["Error"]["Code"] == "BucketNotEmpty"
    deleted = await call(s3.delete_object, Bucket="ops", Key="k")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    deleted = await call(s3.delete_object, Bucket="ops", Key="never-existed")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    gone = await call(s3.delete_bucket, Bucket="ops")
    assert gone["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_bucket_versioning, Bucket="ops")
    assert info.value.response["Error"]["Code"] == "NotImplemented"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


async def test_delete_objects(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="batch")
    for key in ["x", "y"]:
        await call(s3.put_object, Bucket="batch", Key=key, Body=b"1")
    out = await call(
        s3.delete_objects,
        Bucket="batch",
        Delete={"Objects": [{"Key": "x"}, {"Key": "y"}, {"Key": "z"}]},
    )
    assert sorted(d["Key"] for d in out["Deleted"]) == ["x", "y", "z"]
    assert not [k for b, k in gateway.node.objects if b == "batch"]


async def test_conditional_get(gateway: Gateway) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="cond")
    put = await call(s3.put_object, Bucket="cond", Key="k", Body=b"hello")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_object, Bucket="cond", Key="k", IfNoneMatch=put["ETag"])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_object, Bucket="cond", Key="k", IfMatch='"0000"')
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    got = await call(s3.get_object, Bucket="cond", Key="k", IfMatch=put["ETag"])
    assert (await call(got["Body"].read)) == b"hello"


async def test_checksums_with_chunked_upload_and_checksum_mode(gateway: Gateway) -> None:
    """boto3 over http sends a crc32 header; the checksum comes back with checksum mode."""
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="sums")
    await call(
        s3.put_object, Bucket="sums", Key="k", Body=b"hello world", ChecksumAlgorithm="CRC32"
    )
    got = await call(s3.get_object, Bucket="sums", Key="k", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == "DUoRhQ=="
    assert (await call(got["Body"].read)) == b"hello world"


async def test_body_failing_verification_stores_nothing(gateway: Gateway) -> None:
    """A body whose SHA-256 does not match what was signed is refused after streaming, and
    the upload is aborted at the node: nothing is stored."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket="verify")
    signed_body = os.urandom(200_000)
    url = f"{gateway.url}/verify/k"
    request = AWSRequest(method="PUT", url=url, data=signed_body)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(request)
    async with httpx.AsyncClient() as http:
        response = await http.put(url, content=os.urandom(200_000), headers=dict(request.headers))
    assert response.status_code == 400
    assert b"<Code>XAmzContentSHA256Mismatch</Code>" in response.content
    assert ("verify", "k") not in gateway.node.objects
