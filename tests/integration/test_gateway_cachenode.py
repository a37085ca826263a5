"""The gateway in front of a real cache node (the ``cachenode`` fixture, in-process, file
origin) on the session's nats-server, driven by boto3 over HTTP: the two services agree
on the ``s3.*`` contract."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import nats
import pytest
import pytest_asyncio
import uvicorn

from edgecache.common.config import Config
from edgecache.gateway.app import create_app
from edgecache.launcher.natsserver import NatsServer, free_port

AK, SK = "AKIAGATEWAYNODE", "gateway-node-secret"


@pytest_asyncio.fixture(loop_scope="session")
async def endpoint(
    nats_server: NatsServer, cachenode: Any, make_config: Callable[..., Config]
) -> AsyncIterator[str]:
    config = make_config(gateway={"access_key": AK, "secret_key": SK})
    nc = await nats.connect(nats_server.url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, nc), host="127.0.0.1", port=port, log_level="warning")
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    await nc.drain()


def s3_client(endpoint: str, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config
        ),
    )


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_objects_through_a_real_node(endpoint: str, bucket_name: str) -> None:
    s3 = s3_client(endpoint)
    await call(s3.create_bucket, Bucket=bucket_name)
    payload = os.urandom(3 * 1024 * 1024 + 5)  # several 1 MiB chunks
    put = await call(
        s3.put_object,
        Bucket=bucket_name,
        Key="dir/obj ü",
        Body=payload,
        ContentType="application/x-test",
        Metadata={"k": "v"},
    )
    assert put["ETag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    got = await call(s3.get_object, Bucket=bucket_name, Key="dir/obj ü", ChecksumMode="ENABLED")
    assert await call(got["Body"].read) == payload
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"k": "v"}
    part = await call(
        s3.get_object, Bucket=bucket_name, Key="dir/obj ü", Range="bytes=1048570-1048580"
    )
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 1048570-1048580/{len(payload)}"
    assert await call(part["Body"].read) == payload[1048570:1048581]
    head = await call(s3.head_object, Bucket=bucket_name, Key="dir/obj ü")
    assert head["ContentLength"] == len(payload)
    listing = await call(s3.list_objects_v2, Bucket=bucket_name, Prefix="dir/")
    assert [c["Key"] for c in listing["Contents"]] == ["dir/obj ü"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.get_object, Bucket=bucket_name, Key="missing")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    await call(s3.delete_object, Bucket=bucket_name, Key="dir/obj ü")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await call(s3.head_object, Bucket=bucket_name, Key="dir/obj ü")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


async def test_multipart_through_a_real_node(endpoint: str, bucket_name: str) -> None:
    s3 = s3_client(endpoint, request_checksum_calculation="when_required")
    await call(s3.create_bucket, Bucket=bucket_name)
    created = await call(s3.create_multipart_upload, Bucket=bucket_name, Key="mp")
    upload_id = created["UploadId"]
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    etags = []
    for number, data in enumerate(parts, start=1):
        out = await call(
            s3.upload_part,
            Bucket=bucket_name,
            Key="mp",
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        etags.append(out["ETag"])
    listed = await call(s3.list_parts, Bucket=bucket_name, Key="mp", UploadId=upload_id)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    done = await call(
        s3.complete_multipart_upload,
        Bucket=bucket_name,
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert done["ETag"].endswith('-2"')
    got = await call(s3.get_object, Bucket=bucket_name, Key="mp")
    assert await call(got["Body"].read) == b"".join(parts)
