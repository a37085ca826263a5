"""boto3 against a running stack (`edgecache up`): the S3 operations, bad input, and the
bytes landing in the origin directory through the writeback service."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import urllib.error
import urllib.request

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.fixtures.stack import Stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture(params=["when_supported", "when_required"])
def s3(stack: Stack, request):
    """boto3 with its default checksum behaviour, and with it turned down to when_required."""
    return stack.boto3(request_checksum_calculation=request.param, response_checksum_validation=request.param)


@pytest.fixture
def bucket(stack: Stack) -> str:
    name = f"e2e-{secrets.token_hex(5)}"
    stack.boto3().create_bucket(Bucket=name)
    return name


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_object_round_trip_lands_in_origin(stack: Stack, s3, bucket: str) -> None:
    data = os.urandom(3 * MiB + 5)
    put = s3.put_object(Bucket=bucket, Key="dir/a b+c.bin", Body=data, ContentType="application/x-e2e", Metadata={"colour": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/a b+c.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-e2e" and got["Metadata"] == {"colour": "blue"}
    head = s3.head_object(Bucket=bucket, Key="dir/a b+c.bin")
    assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
    part = s3.get_object(Bucket=bucket, Key="dir/a b+c.bin", Range="bytes=100-199")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206 and part["Body"].read() == data[100:200]
    path = stack.origin_dir / bucket / "dir" / "a b+c.bin"
    wait_for(lambda: path.exists() and path.read_bytes() == data, what=f"{path} in the origin")
    s3.delete_object(Bucket=bucket, Key="dir/a b+c.bin")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="dir/a b+c.bin")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    wait_for(lambda: not path.exists(), what=f"{path} deleted from the origin")


def test_listing_v2_with_delimiter_pages_and_url_encoding(s3, bucket: str) -> None:
    keys = ["a", "a b", "a/b", "a/c/d", "b/x", "ü/1", "z"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    found = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}) for o in page.get("Contents", [])]
    assert found == sorted(keys, key=str.encode)
    rolled = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in rolled["Contents"]] == ["a", "a b", "z"]
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["a/", "b/", "ü/"]
    v1 = s3.list_objects(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in v1["Contents"]] == ["a/b"] and [p["Prefix"] for p in v1["CommonPrefixes"]] == ["a/c/"]
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_multipart_upload_file_and_download(stack: Stack, s3, bucket: str, tmp_path) -> None:
    data = os.urandom(17 * MiB + 3)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    s3.upload_file(str(src), bucket, "big.bin", Config=config)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"].endswith('-4"') and head["ContentLength"] == len(data)
    s3.download_file(bucket, "big.bin", str(dst), Config=config)
    assert dst.read_bytes() == data
    path = stack.origin_dir / bucket / "big.bin"
    wait_for(lambda: path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data, what="multipart object in the origin")


def test_abort_and_list_parts(s3, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")
    s3.upload_part(Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100)
    parts = s3.list_parts(Bucket=bucket, Key="k", UploadId=upload["UploadId"])
    assert [p["PartNumber"] for p in parts["Parts"]] == [1]
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"])
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="k", UploadId=upload["UploadId"])
    assert _code(exc) == ("NoSuchUpload", 404)


def test_bucket_errors(s3, bucket: str) -> None:
    # its owner re-creating a bucket in us-east-1 gets 200, as from S3 (elsewhere: 409
    # BucketAlreadyOwnedByYou: tests/unit/test_gateway_app.py)
    assert s3.meta.region_name == "us-east-1"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert _code(exc) == ("BucketNotEmpty", 409)
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="Invalid_Bucket_Name")
    assert _code(exc) == ("InvalidBucketName", 400)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="no-such-bucket-here", Key="k")
    assert _code(exc) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="missing")
    assert _code(exc) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", Range="bytes=5-")
    assert _code(exc) == ("InvalidRange", 416)
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=bucket)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_bad_content_md5_stores_nothing(s3, bucket: str) -> None:
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"payload", ContentMD5=wrong)
    assert _code(exc) == ("BadDigest", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_malformed_complete_multipart_xml(stack: Stack, bucket: str) -> None:
    s3 = stack.boto3()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")
    status, body = _signed(stack, "POST", f"/{bucket}/k?uploadId={upload['UploadId']}", b"<CompleteMultipartUpload><Part>")
    assert status == 400 and b"<Code>MalformedXML</Code>" in body
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")


def _signed(stack: Stack, method: str, path: str, body: bytes, *, secret: str | None = None, access: str | None = None, payload_hash: str | None = None) -> tuple[int, bytes]:
    url = stack.endpoint + path
    request = AWSRequest(method=method, url=url, data=body)
    request.headers["x-amz-content-sha256"] = payload_hash or hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(access or stack.access_key, secret or stack.secret_key), "s3", "us-east-1").add_auth(request)
    return _send(url, method, body, dict(request.headers))


def _send(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_authentication_failures(stack: Stack, bucket: str) -> None:
    status, body = _signed(stack, "GET", f"/{bucket}?list-type=2", b"", secret="wrong-secret")
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    status, body = _signed(stack, "GET", f"/{bucket}?list-type=2", b"", access="AKIAUNKNOWNKEY000000")
    assert status == 403 and b"<Code>InvalidAccessKeyId</Code>" in body
    status, body = _send(f"{stack.endpoint}/{bucket}?list-type=2", "GET", None, {})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, body = _signed(stack, "PUT", f"/{bucket}/k", b"the real body", payload_hash=hashlib.sha256(b"another body").hexdigest())
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in body
    status, _ = _send(f"{stack.endpoint}/{bucket}/k", "HEAD", None, {})
    assert status == 403


def test_presigned_urls(stack: Stack, bucket: str) -> None:
    s3 = stack.boto3(signature_version="s3v4")  # boto3 presigns with SigV2 unless told
    s3.put_object(Bucket=bucket, Key="shared", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared"}, ExpiresIn=60)
    assert _send(url, "GET", None, {}) == (200, b"presigned body")
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared"}, ExpiresIn=1)
    import time

    time.sleep(2)
    status, body = _send(expired, "GET", None, {})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    v2 = stack.boto3().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared"})
    assert _send(v2, "GET", None, {}) == (200, b"presigned body")  # SigV2, boto3's default
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=60)
    assert _send(put_url, "PUT", b"uploaded", {})[0] == 200
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded"
