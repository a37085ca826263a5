"""The NATS of `edgecache up` is locked down: an anonymous client is refused, a platform
service gets in with the ``platform`` identity from the data dir and shares objects with
S3 clients, and nothing the stack does trips a permission (the ``stack`` fixture also checks
the server's log when the session ends)."""

from __future__ import annotations

import os
import secrets

import nats
import pytest

from edgecache.common import wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import load_config
from edgecache.common.runtime import connect_nats
from edgecache.launcher import credentials, datadir
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


async def _one(data: bytes):
    yield data


async def test_anonymous_is_refused_and_platform_shares_objects_with_s3(stack: Stack) -> None:
    shared = load_config(stack.data_dir / datadir.CONFIG_FILE, env={}).nats
    # what the issue showed: a plain client listing buckets and deleting objects
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(shared.url, allow_reconnect=False, max_reconnect_attempts=1)

    platform = credentials.load_nats_identity(stack.data_dir, "platform")
    assert platform is not None
    nc = await connect_nats(platform.apply(shared), name="platform-e2e")
    try:
        client = EdgecacheClient(nc, timeout_s=20.0)
        s3 = stack.boto3()
        bucket = f"platform-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        from_s3 = os.urandom(MiB + 3)
        s3.put_object(Bucket=bucket, Key="from-s3", Body=from_s3)
        assert (await client.get_object_bytes(bucket, "from-s3"))[1] == from_s3
        from_platform = os.urandom(2 * MiB + 1)
        await client.put_object(
            wire.PutObject(bucket=bucket, key="from-platform"), _one(from_platform)
        )
        got = s3.get_object(Bucket=bucket, Key="from-platform")["Body"].read()
        assert got == from_platform
        listed = await client.request(wire.ListBuckets())
        assert bucket in [b.name for b in listed.buckets]
    finally:
        await nc.drain()
    assert stack.nats_violations() == []
