"""Canned ACL ``private`` and the headers the gateway refuses, through boto3 against a real
cache node (the in-process ``cachenode``): GetBucketAcl/GetObjectAcl answer the owner's
FULL_CONTROL; a public ACL, server-side encryption, another storage class or tags get 501
and store nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
import nats
import pytest
from botocore.exceptions import ClientError

from edgecache.common.config import Config
from edgecache.gateway.app import create_app
from edgecache.gateway.httpprotocol import protocol_class
from edgecache.gateway.service import asgi
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving

AK, SK = "AKIAGATEWAYACL", "gateway-acl-secret"


async def test_private_acl_is_served_and_unsupported_headers_are_501(
    nats_server: NatsServer, cachenode: Any, make_config: Callable[..., Config], bucket_name: str
) -> None:
    config = make_config(gateway={"access_key": AK, "secret_key": SK})
    nc = await nats.connect(nats_server.url)
    try:
        async with serving(asgi(create_app(config, nc)), http=protocol_class()) as url:  # as served
            await asyncio.to_thread(_check, url, bucket_name)
    finally:
        await nc.drain()


def _check(endpoint: str, bucket: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
        ),
    )
    s3.create_bucket(Bucket=bucket, ACL="private")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="private", StorageClass="STANDARD")
    for acl in (s3.get_bucket_acl(Bucket=bucket), s3.get_object_acl(Bucket=bucket, Key="k")):
        assert acl["Owner"]["ID"] == "edgecache"
        assert acl["Grants"] == [
            {
                "Grantee": {"ID": "edgecache", "DisplayName": "edgecache", "Type": "CanonicalUser"},
                "Permission": "FULL_CONTROL",
            }
        ]
    with pytest.raises(ClientError) as caught:
        s3.get_object_acl(Bucket=bucket, Key="missing")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"

    refused: list[dict[str, Any]] = [
        {"ACL": "public-read"},
        {"ServerSideEncryption": "AES256"},
        {"StorageClass": "GLACIER"},
        {"ObjectLockMode": "GOVERNANCE"},
        {"GrantRead": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
    ]
    for extra in refused:
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=bucket, Key="refused", Body=b"y", **extra)
        assert caught.value.response["Error"]["Code"] == "NotImplemented", extra
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    with pytest.raises(ClientError) as caught:
        s3.create_multipart_upload(Bucket=bucket, Key="refused", ServerSideEncryption="aws:kms")
    assert caught.value.response["Error"]["Code"] == "NotImplemented"
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket=f"{bucket}-pub", ACL="public-read")
    assert caught.value.response["Error"]["Code"] == "NotImplemented"
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="refused")
    assert caught.value.response["Error"]["Code"] == "404"  # nothing was stored
    with pytest.raises(ClientError) as caught:
        s3.head_bucket(Bucket=f"{bucket}-pub")
    assert caught.value.response["Error"]["Code"] == "404"
