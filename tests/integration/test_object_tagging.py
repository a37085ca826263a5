"""Object tagging end to end: boto3 → the gateway → a real cache node → the writeback
service → the origin, on a nats-server private to this module (the writeback service
consumes the whole ``WRITEBACK`` work queue, so it must not share one with other modules).

One stack for the module (file origin, 1 MiB chunks, clean manifests expiring after
``TTL_S``); the origin-level tests run against each origin kind (file, S3 on moto, Azure
on Azurite) with the session's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import httpx
import nats
import pytest
import pytest_asyncio
import uvicorn

from edgecache.cachenode.node import CacheNode
from edgecache.cachenode.service import start_node
from edgecache.common import errors, wire
from edgecache.common.catalog import Catalog
from edgecache.common.config import load_config
from edgecache.common.credit import CreditBudget
from edgecache.common.jetstream import ensure_state
from edgecache.gateway.app import create_app
from edgecache.launcher.natsserver import NatsServer, free_port
from edgecache.origin import Origin, open_origin
from edgecache.writeback.service import WritebackService
from edgecache.writeback.worker import IntentApplier, Outcome
from tests.fixtures.readthrough import one

AK, SK = "AKIATAGGING", "tagging-secret"
MiB = 1024 * 1024
TTL_S = 2  # clean manifests expire after this (the server's TTL counts whole seconds)


@dataclass
class TagStack:
    endpoint: str
    node: CacheNode
    origin: Origin  # the writeback service's (the file origin both services share)
    server: NatsServer

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
            ),
        )


@pytest.fixture(scope="module")
def tag_nats(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = NatsServer(tmp_path_factory.mktemp("tag-nats"))
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    tag_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TagStack]:
    config = load_config(
        env={},
        overrides={
            "data_dir": str(tmp_path_factory.mktemp("tag-stack")),
            "nats": {"url": tag_nats.url, "request_timeout_s": 10.0},
            "cachenode": {"chunk_bytes": MiB, "node_id": "tag-node", "manifest_ttl_s": TTL_S},
            "gateway": {"access_key": AK, "secret_key": SK},
        },
    )
    async with AsyncExitStack() as stack:
        node = await start_node(config, stack)
        wb_nc = await nats.connect(tag_nats.url)
        stack.push_async_callback(wb_nc.drain)
        origin = open_origin(config)
        await origin.start()
        stack.push_async_callback(origin.close)
        service = WritebackService(
            wb_nc,
            await ensure_state(wb_nc.jetstream()),
            origin,
            config.writeback,
            fetch_timeout_s=0.3,
            shutdown_grace_s=1.0,
            chunk_timeout_s=5.0,
            manifest_ttl_s=TTL_S,
        )
        stop = asyncio.Event()
        writeback = asyncio.create_task(service.run(stop))
        gw_nc = await nats.connect(tag_nats.url)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config, gw_nc), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield TagStack(f"http://127.0.0.1:{port}", node, origin, tag_nats)
        finally:
            server.should_exit = True
            await serving
            await gw_nc.drain()
            stop.set()
            await asyncio.wait_for(writeback, 10)


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def s3_error(fn: Callable[..., Any], **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        await call(fn, **kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # the writeback service and the KV TTL announce nothing to await


def tag_set(tags: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}


async def tags_of(s3: Any, bucket: str, key: str, **kwargs: Any) -> dict[str, str]:
    got = await call(s3.get_object_tagging, Bucket=bucket, Key=key, **kwargs)
    return {t["Key"]: t["Value"] for t in got["TagSet"]}


def tag_count(response: dict[str, Any]) -> str | None:
    return response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-tagging-count")


@pytest.fixture
def bucket() -> str:
    return f"tag-{uuid.uuid4().hex[:12]}"


# == the S3 operations ============================================================================
async def test_put_get_delete_object_tagging(stack: TagStack, bucket: str) -> None:
    s3 = stack.s3()
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="k", Body=b"hello")
    assert await tags_of(s3, bucket, "k") == {}  # untagged: an empty TagSet
    first = await call(s3.get_object, Bucket=bucket, Key="k")  # the memory tier holds it now
    assert await call(first["Body"].read) == b"hello" and tag_count(first) is None

    tags = {"project": "édge cache", "team": "a+b=c/d:e_f.g-h@i", "empty": ""}
    put = await call(s3.put_object_tagging, Bucket=bucket, Key="k", Tagging=tag_set(tags))
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert await tags_of(s3, bucket, "k") == tags
    assert list(await tags_of(s3, bucket, "k", VersionId="null")) == list(tags)  # in order
    got = await call(s3.get_object, Bucket=bucket, Key="k")  # not the stale memory-tier copy
    assert got["TagCount"] == 3 and await call(got["Body"].read) == b"hello"
    assert tag_count(await call(s3.head_object, Bucket=bucket, Key="k")) == "3"

    replaced = {"only": "one"}
    await call(
        s3.put_object_tagging, Bucket=bucket, Key="k", Tagging=tag_set(replaced), VersionId="null"
    )
    assert await tags_of(s3, bucket, "k") == replaced
    deleted = await call(s3.delete_object_tagging, Bucket=bucket, Key="k")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert await tags_of(s3, bucket, "k") == {}
    assert tag_count(await call(s3.head_object, Bucket=bucket, Key="k")) is None
    assert (await call(s3.get_object, Bucket=bucket, Key="k")).get("TagCount") is None


async def test_tagging_errors(stack: TagStack, bucket: str) -> None:
    s3 = stack.s3()
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="k", Body=b"x", Tagging="keep=1")
    too_many = tag_set({f"k{i}": "v" for i in range(11)})
    refused = [
        too_many,
        tag_set({"k" * 129: "v"}),
        tag_set({"k": "v" * 257}),
        tag_set({"aws:reserved": "v"}),
        tag_set({"bad*key": "v"}),
        {"TagSet": [{"Key": "d", "Value": "1"}, {"Key": "d", "Value": "2"}]},
    ]
    for tagging in refused:
        assert await s3_error(s3.put_object_tagging, Bucket=bucket, Key="k", Tagging=tagging) == (
            "InvalidTag",
            400,
        )
    assert await tags_of(s3, bucket, "k") == {"keep": "1"}  # nothing changed
    missing = {"Bucket": bucket, "Key": "missing"}
    assert await s3_error(s3.get_object_tagging, **missing) == ("NoSuchKey", 404)
    assert await s3_error(s3.put_object_tagging, **missing, Tagging=tag_set({"a": "b"})) == (
        "NoSuchKey",
        404,
    )
    assert await s3_error(s3.delete_object_tagging, **missing) == ("NoSuchKey", 404)
    assert await s3_error(s3.get_object_tagging, Bucket=f"{bucket}-no", Key="k") == (
        "NoSuchBucket",
        404,
    )
    # a body that is not a <Tagging> document (signed as boto3 signs any body)
    for raw in (b"<Tagging><Tag/></Tagging>", b"not xml", b"x" * (65 * 1024)):

        def malformed(request: Any, raw: bytes = raw, **_: Any) -> None:
            request.data = raw
            for name in [
                n
                for n in request.headers
                if n.lower().startswith(("content-md5", "x-amz-checksum-", "x-amz-sdk-checksum"))
            ]:
                del request.headers[name]

        s3.meta.events.register_first("before-sign.s3.PutObjectTagging", malformed)
        code, status = await s3_error(
            s3.put_object_tagging, Bucket=bucket, Key="k", Tagging=tag_set({"a": "b"})
        )
        s3.meta.events.unregister("before-sign.s3.PutObjectTagging", malformed)
        assert status == 400 and code in {"MalformedXML", "MaxMessageLengthExceeded"}, code
    # a PUT with a bad x-amz-tagging stores nothing
    assert await s3_error(
        s3.put_object, Bucket=bucket, Key="bad", Body=b"x", Tagging="a=1&a=2"
    ) == ("InvalidTag", 400)
    assert await s3_error(s3.head_object, Bucket=bucket, Key="bad") == ("404", 404)


async def test_tags_on_put_multipart_copy_and_post(stack: TagStack, bucket: str) -> None:
    s3 = stack.s3()
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="src", Body=b"source", Tagging="a=1&b=x%20y&c=p+q")
    assert await tags_of(s3, bucket, "src") == {"a": "1", "b": "x y", "c": "p q"}

    created = await call(s3.create_multipart_upload, Bucket=bucket, Key="mp", Tagging="mp=yes")
    assert await s3_error(s3.get_object_tagging, Bucket=bucket, Key="mp") == ("NoSuchKey", 404)
    part = await call(
        s3.upload_part,
        Bucket=bucket,
        Key="mp",
        UploadId=created["UploadId"],
        PartNumber=1,
        Body=b"p1",
    )
    await call(
        s3.complete_multipart_upload,
        Bucket=bucket,
        Key="mp",
        UploadId=created["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert await tags_of(s3, bucket, "mp") == {"mp": "yes"}  # applied at completion

    source = {"Bucket": bucket, "Key": "src"}
    await call(s3.copy_object, Bucket=bucket, Key="copied", CopySource=source, Tagging="ignored=1")
    assert await tags_of(s3, bucket, "copied") == {"a": "1", "b": "x y", "c": "p q"}  # COPY
    await call(
        s3.copy_object,
        Bucket=bucket,
        Key="replaced",
        CopySource=source,
        TaggingDirective="REPLACE",
        Tagging="new=2",
    )
    assert await tags_of(s3, bucket, "replaced") == {"new": "2"}
    await call(
        s3.copy_object, Bucket=bucket, Key="cleared", CopySource=source, TaggingDirective="REPLACE"
    )
    assert await tags_of(s3, bucket, "cleared") == {}
    bad = await s3_error(
        s3.copy_object, Bucket=bucket, Key="x", CopySource=source, TaggingDirective="MERGE"
    )
    assert bad == ("InvalidArgument", 400)

    tagging_xml = (
        "<Tagging><TagSet><Tag><Key>form</Key><Value>post</Value></Tag></TagSet></Tagging>"
    )
    post = await call(
        s3.generate_presigned_post,
        Bucket=bucket,
        Key="posted",
        Fields={"tagging": tagging_xml},
        Conditions=[{"tagging": tagging_xml}],
    )
    async with httpx.AsyncClient() as http:
        answer = await http.post(post["url"], data=post["fields"], files={"file": ("f", b"body")})
    assert answer.status_code == 204, answer.text
    assert await tags_of(s3, bucket, "posted") == {"form": "post"}


# == tags reach the origin and come back ==========================================================
async def test_tags_reach_the_origin_and_survive_a_manifest_expiry(
    stack: TagStack, bucket: str
) -> None:
    s3 = stack.s3()
    catalog = stack.node.catalog
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="obj", Body=b"bytes", Tagging="with=put")

    async def origin_tags(expected: dict[str, str]) -> bool:
        try:
            return await stack.origin.get_tags(bucket, "obj") == expected
        except errors.NoSuchKey:
            return False

    await eventually(lambda: origin_tags({"with": "put"}), what="the put's tags in the origin")
    await eventually(
        lambda: _manifest_is(catalog, bucket, "obj", lambda m: m.state == "clean"),
        what="written back",
    )

    # a tag change of a clean version: its own intent takes it to the origin
    await call(
        s3.put_object_tagging,
        Bucket=bucket,
        Key="obj",
        Tagging=tag_set({"with": "tagging", "n": "2"}),
    )
    await eventually(
        lambda: origin_tags({"with": "tagging", "n": "2"}), what="the new tags in the origin"
    )
    await eventually(
        lambda: _manifest_is(catalog, bucket, "obj", lambda m: m.tags_state == "clean"),
        what="tags marked clean",
    )
    version = (await catalog.get(bucket, "obj")).manifest.version

    # the clean manifest expires; the next reader adopts the origin's copy, tags included
    await eventually(
        lambda: _gone(catalog, bucket, "obj"), timeout_s=TTL_S + 8, what="the manifest's expiry"
    )
    assert await tags_of(s3, bucket, "obj") == {"with": "tagging", "n": "2"}
    adopted = (await catalog.get(bucket, "obj")).manifest
    assert adopted.version != version and adopted.tags == {"with": "tagging", "n": "2"}
    assert tag_count(await call(s3.head_object, Bucket=bucket, Key="obj")) == "2"

    await call(s3.delete_object_tagging, Bucket=bucket, Key="obj")
    await eventually(lambda: origin_tags({}), what="the tags removed in the origin")


async def _manifest_is(
    catalog: Catalog, bucket: str, key: str, check: Callable[[wire.Manifest], bool]
) -> bool:
    found = await catalog.get(bucket, key)
    return found is not None and check(found.manifest)


async def _gone(catalog: Catalog, bucket: str, key: str) -> bool:
    return await catalog.get(bucket, key) is None


# == each origin kind =============================================================================
async def test_origin_tags(origin: Origin, origin_bucket: str) -> None:
    await origin.create_bucket(origin_bucket)
    tags = {"k 1": "v/1", "ü": "@+=", "e": ""}
    await origin.put_object(origin_bucket, "o", one(b"data"), size=4, tags=tags)
    assert await origin.get_tags(origin_bucket, "o") == tags
    assert (await origin.head_object(origin_bucket, "o")).tags in (tags, None)  # None: ask get_tags
    await origin.put_object(origin_bucket, "plain", one(b"x"), size=1)
    assert await origin.get_tags(origin_bucket, "plain") == {}

    before = await origin.head_object(origin_bucket, "o")
    new_etag = await origin.put_tags(origin_bucket, "o", {"only": "this"})
    assert await origin.get_tags(origin_bucket, "o") == {"only": "this"}
    after = await origin.head_object(origin_bucket, "o")
    assert after.etag == (new_etag or before.etag)  # the caller learns an ETag that changed
    assert (after.size, after.metadata) == (before.size, before.metadata)
    assert b"".join([p async for p in origin.get_range(origin_bucket, "o", 0, 3)]) == b"data"
    await origin.put_tags(origin_bucket, "o", {})
    assert await origin.get_tags(origin_bucket, "o") == {}
    with pytest.raises(errors.NoSuchKey):
        await origin.put_tags(origin_bucket, "missing", {"a": "b"})


async def test_writeback_applies_a_tag_intent(
    origin: Origin, origin_bucket: str, tag_nats: NatsServer
) -> None:
    nc = await nats.connect(tag_nats.url)
    try:
        state = await ensure_state(nc.jetstream())
        catalog = Catalog(nc, state)
        applier = IntentApplier(nc, catalog, state.buckets, origin, credit=CreditBudget(nc))
        await origin.create_bucket(origin_bucket)
        etag = await origin.put_object(origin_bucket, "o", one(b"data"), size=4, tags={"old": "1"})
        clean = wire.Manifest(
            bucket=origin_bucket, key="o", version="v1", size=4, etag="e", last_modified=0.0,
            state="clean", origin_etag=etag, tags={"new": "2", "x": "y"}, tags_state="dirty",
        )  # fmt: skip
        assert await catalog.create(clean)
        intent = wire.ObjectTagged(id="i1", at_ns=0, bucket=origin_bucket, key="o", version="v1")
        assert await applier.apply(intent) == Outcome("tag", "written")
        assert await origin.get_tags(origin_bucket, "o") == {"new": "2", "x": "y"}
        after = (await catalog.get(origin_bucket, "o")).manifest
        assert after.tags_state == "clean"
        assert (
            after.origin_etag == (await origin.head_object(origin_bucket, "o")).etag
        )  # revalidates as unchanged
        assert await applier.apply(intent) == Outcome("tag", "already_clean")
        stale = wire.ObjectTagged(id="i2", at_ns=0, bucket=origin_bucket, key="o", version="v0")
        assert await applier.apply(stale) == Outcome("tag", "superseded")
    finally:
        await nc.drain()
