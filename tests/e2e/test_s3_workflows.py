"""Everyday S3 workflows with boto3 against the session's `edgecache up` (issue 6, part C1):
server-side copies (CopyObject, UploadPartCopy), ListMultipartUploads, GetObject/HeadObject
by ``partNumber``, conditional writes (``If-None-Match: *``, ``If-Match``) and
ListObjectVersions of an unversioned bucket. Copies are checked in the origin once written
back. Real clients doing the same live in test_awscli.py and test_other_clients.py."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.stack import Stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024  # the stack's chunk size: 3.5 MiB is four chunks


@pytest.fixture(scope="module")
def s3(stack: Stack):
    return stack.boto3()


@pytest.fixture
def bucket(s3) -> str:
    name = f"wf-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=name)
    return name


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


def _in_origin(stack: Stack, bucket: str, key: str, data: bytes) -> None:
    path = stack.origin_dir / bucket / key
    wait_for(
        lambda: path.exists() and path.read_bytes() == data, what=f"{bucket}/{key} in the origin"
    )


# == CopyObject ==================================================================================
def test_copy_object_within_and_across_buckets_reaches_the_origin(
    stack: Stack, s3, bucket: str
) -> None:
    other = f"wf-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=other)
    data = os.urandom(3 * MiB + MiB // 2)  # several chunks
    key = "dir/src a+b ü.bin"  # sent URL-encoded in x-amz-copy-source
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType="application/x-src",
        Metadata={"colour": "blue"},
    )
    same = s3.copy_object(Bucket=bucket, Key="copy.bin", CopySource={"Bucket": bucket, "Key": key})
    assert same["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    across = s3.copy_object(
        Bucket=other, Key="x/copy.bin", CopySource=f"{bucket}/{key}?versionId=null"
    )
    assert across["CopyObjectResult"]["LastModified"] is not None
    for b, k in ((bucket, "copy.bin"), (other, "x/copy.bin")):
        got = s3.get_object(Bucket=b, Key=k)
        assert got["Body"].read() == data
        assert got["ContentType"] == "application/x-src" and got["Metadata"] == {"colour": "blue"}
    # the copies own their bytes: the source's delete leaves them
    s3.delete_object(Bucket=bucket, Key=key)
    assert s3.get_object(Bucket=other, Key="x/copy.bin")["Body"].read() == data
    _in_origin(stack, bucket, "copy.bin", data)
    _in_origin(stack, other, "x/copy.bin", data)


def test_copy_object_metadata_directive_and_copies_onto_itself(s3, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="k", Body=b"body", ContentType="text/plain", Metadata={"a": "1"}
    )
    replaced = s3.copy_object(
        Bucket=bucket,
        Key="r",
        CopySource={"Bucket": bucket, "Key": "k"},
        MetadataDirective="REPLACE",
        ContentType="application/json",
        Metadata={"b": "2"},
    )
    head = s3.head_object(Bucket=bucket, Key="r")
    assert head["ContentType"] == "application/json" and head["Metadata"] == {"b": "2"}
    assert replaced["CopyObjectResult"]["ETag"] == head["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert _code(exc) == ("InvalidRequest", 400)
    s3.copy_object(
        Bucket=bucket,
        Key="k",
        CopySource={"Bucket": bucket, "Key": "k"},
        MetadataDirective="REPLACE",
        Metadata={"c": "3"},
    )
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"body" and got["Metadata"] == {"c": "3"}
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket,
            Key="z",
            CopySource={"Bucket": bucket, "Key": "k"},
            MetadataDirective="MOVE",
        )
    assert _code(exc) == ("InvalidArgument", 400)


def test_copy_object_of_zero_bytes_and_errors(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    s3.copy_object(Bucket=bucket, Key="empty2", CopySource={"Bucket": bucket, "Key": "empty"})
    got = s3.get_object(Bucket=bucket, Key="empty2")
    assert got["ContentLength"] == 0 and got["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    cases = [
        ({"Bucket": bucket, "Key": "missing"}, bucket, ("NoSuchKey", 404)),
        ({"Bucket": "no-such-bucket-wf", "Key": "empty"}, bucket, ("NoSuchBucket", 404)),
        ({"Bucket": bucket, "Key": "empty"}, "no-such-bucket-wf", ("NoSuchBucket", 404)),
        (
            {"Bucket": bucket, "Key": "empty", "VersionId": "3HL4kqtJlcpXroDTDmJ"},
            bucket,
            ("InvalidArgument", 400),
        ),
    ]
    for source, dest, expected in cases:
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=dest, Key="out", CopySource=source)
        assert _code(exc) == expected, source


def test_copy_source_preconditions(s3, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    source = {"Bucket": bucket, "Key": "k"}
    past, future = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
    s3.copy_object(
        Bucket=bucket,
        Key="ok",
        CopySource=source,
        CopySourceIfMatch=etag,
        CopySourceIfModifiedSince=past,
    )
    s3.copy_object(
        Bucket=bucket,
        Key="ok",
        CopySource=source,
        CopySourceIfNoneMatch='"other"',
        CopySourceIfUnmodifiedSince=future,
    )
    failing = [
        {"CopySourceIfMatch": '"0123456789abcdef0123456789abcdef"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": future},
        {"CopySourceIfUnmodifiedSince": past},
    ]
    for condition in failing:
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=bucket, Key="no", CopySource=source, **condition)
        assert _code(exc) == ("PreconditionFailed", 412), condition
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="no")
    # conditional writes hold for a copy's destination too
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="ok", CopySource=source, IfNoneMatch="*")
    assert _code(exc) == ("PreconditionFailed", 412)
    s3.copy_object(Bucket=bucket, Key="ok", CopySource=source, IfMatch=etag)


# == UploadPartCopy, ListMultipartUploads ========================================================
def test_upload_part_copy_with_and_without_ranges(stack: Stack, s3, bucket: str) -> None:
    big, small = os.urandom(6 * MiB + 7), os.urandom(1000)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="composed")["UploadId"]
    args = {"Bucket": bucket, "Key": "composed", "UploadId": upload}
    p1 = s3.upload_part_copy(
        **args,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "big"},
        CopySourceRange=f"bytes=0-{5 * MiB}",
    )
    p2 = s3.upload_part_copy(**args, PartNumber=2, CopySource={"Bucket": bucket, "Key": "small"})
    assert p1["CopyPartResult"]["ETag"] == f'"{hashlib.md5(big[: 5 * MiB + 1]).hexdigest()}"'
    for bad_range, expected in (
        ("bytes=5-1", ("InvalidArgument", 400)),
        ("5-10", ("InvalidArgument", 400)),
        (f"bytes=0-{len(big)}", ("InvalidRange", 416)),
    ):
        with pytest.raises(ClientError) as exc:
            s3.upload_part_copy(
                **args,
                PartNumber=3,
                CopySource={"Bucket": bucket, "Key": "big"},
                CopySourceRange=bad_range,
            )
        assert _code(exc) == expected, bad_range
    parts = [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]},
    ]
    s3.complete_multipart_upload(**args, MultipartUpload={"Parts": parts})
    expected = big[: 5 * MiB + 1] + small
    assert s3.get_object(Bucket=bucket, Key="composed")["Body"].read() == expected
    _in_origin(stack, bucket, "composed", expected)


def test_list_multipart_uploads_pages_prefixes_and_markers(s3, bucket: str) -> None:
    keys = ["a/1", "a/2", "b", "b", "c"]  # two uploads of b
    ids = [s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in keys]
    listed = s3.list_multipart_uploads(Bucket=bucket)
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == list(
        zip(keys, ids, strict=True)
    )
    assert listed["IsTruncated"] is False
    rolled = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [u["Key"] for u in rolled["Uploads"]] == ["b", "b", "c"]
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["a/"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")["Uploads"]] == [
        "a/1",
        "a/2",
    ]
    seen, marker = [], {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2, **marker)
        seen += [u["UploadId"] for u in page["Uploads"]]
        if not page["IsTruncated"]:
            break
        marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == ids
    after_b = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="b")
    assert [u["Key"] for u in after_b["Uploads"]] == ["c"]
    for key, upload_id in zip(keys, ids, strict=True):
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as exc:
        s3.list_multipart_uploads(Bucket="no-such-bucket-wf")
    assert _code(exc) == ("NoSuchBucket", 404)


# == partNumber reads ============================================================================
def test_get_and_head_by_part_number(s3, bucket: str) -> None:
    first, second, replaced = os.urandom(5 * MiB), os.urandom(MiB + 3), os.urandom(5 * MiB)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    args = {"Bucket": bucket, "Key": "mp", "UploadId": upload}
    s3.upload_part(**args, PartNumber=1, Body=first)
    # the last upload of a part number wins
    e1 = s3.upload_part(**args, PartNumber=1, Body=replaced)["ETag"]
    e2 = s3.upload_part(**args, PartNumber=2, Body=second)["ETag"]
    s3.complete_multipart_upload(
        **args,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    part2 = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert part2["Body"].read() == second and part2["PartsCount"] == 2
    assert part2["ContentRange"] == f"bytes {5 * MiB}-{6 * MiB + 2}/{6 * MiB + 3}"
    assert part2["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert s3.get_object(Bucket=bucket, Key="mp", PartNumber=1)["Body"].read() == replaced
    head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=1)
    assert head["ContentLength"] == 5 * MiB and head["PartsCount"] == 2
    assert "PartsCount" not in s3.head_object(Bucket=bucket, Key="mp")
    s3.put_object(Bucket=bucket, Key="single", Body=b"0123456789")
    # a whole GET puts it in the gateway's memory tier, which must not answer part reads
    assert s3.get_object(Bucket=bucket, Key="single")["Body"].read() == b"0123456789"
    whole = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert whole["Body"].read() == b"0123456789" and whole["ContentRange"] == "bytes 0-9/10"
    assert "PartsCount" not in whole
    for key, number in (("mp", 3), ("single", 2)):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key=key, PartNumber=number)
        assert _code(exc) == ("InvalidPartNumber", 416)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="single", PartNumber=1, Range="bytes=0-1")
    assert _code(exc) == ("InvalidRequest", 400)


# == conditional writes ==========================================================================
def test_conditional_put_object(s3, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="lock", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="lock", Body=b"two", IfNoneMatch="*")
    assert _code(exc) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as exc:
        s3.put_object(
            Bucket=bucket, Key="lock", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"'
        )
    assert _code(exc) == ("PreconditionFailed", 412)
    # the failed writes stored nothing
    assert s3.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"one"
    s3.put_object(Bucket=bucket, Key="lock", Body=b"two", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"two"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="never-written", Body=b"x", IfMatch=etag)
    assert _code(exc) == ("NoSuchKey", 404)
    s3.delete_object(Bucket=bucket, Key="lock")
    # a deleted key is free again
    s3.put_object(Bucket=bucket, Key="lock", Body=b"three", IfNoneMatch="*")


def test_conditional_complete_multipart_upload(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="taken", Body=b"already")
    for key, expected in (("taken", ("PreconditionFailed", 412)), ("free", None)):
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part")[
            "ETag"
        ]
        complete = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload,
            "MultipartUpload": {"Parts": [{"PartNumber": 1, "ETag": etag}]},
        }
        if expected is None:
            s3.complete_multipart_upload(**complete, IfNoneMatch="*")
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"part"
        else:
            with pytest.raises(ClientError) as exc:
                s3.complete_multipart_upload(**complete, IfNoneMatch="*")
            assert _code(exc) == expected
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"already"


def test_racing_conditional_creates_have_one_winner(stack: Stack, bucket: str) -> None:
    writers = 8
    start = threading.Barrier(writers)
    outcomes: list[str] = []

    def race(i: int) -> None:
        client = stack.boto3()
        start.wait()
        try:
            client.put_object(
                Bucket=bucket, Key="lockfile", Body=f"writer {i}".encode(), IfNoneMatch="*"
            )
            outcomes.append(f"won {i}")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=race, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    assert set(outcomes) - set(winners) <= {"PreconditionFailed", "ConditionalRequestConflict"}
    body = stack.boto3().get_object(Bucket=bucket, Key="lockfile")["Body"].read()
    assert body.decode() == f"writer {winners[0].split()[1]}"


# == ListObjectVersions ==========================================================================
def test_list_object_versions_of_an_unversioned_bucket(s3, bucket: str) -> None:
    keys = ["a", "d/1", "d/2", "e"]
    etags = {k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["ETag"] for k in keys}
    listed = s3.list_object_versions(Bucket=bucket)
    assert [(v["Key"], v["VersionId"], v["IsLatest"], v["ETag"]) for v in listed["Versions"]] == [
        (k, "null", True, etags[k]) for k in keys
    ]
    assert "DeleteMarkers" not in listed and listed["IsTruncated"] is False
    rolled = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [v["Key"] for v in rolled["Versions"]] == ["a", "e"]
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["d/"]
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket, Prefix="d/")["Versions"]] == [
        "d/1",
        "d/2",
    ]
    seen, marker = [], {}
    while True:
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=3, **marker)
        seen += [v["Key"] for v in page.get("Versions", [])]
        if not page["IsTruncated"]:
            break
        assert page["NextVersionIdMarker"] == "null"
        marker = {
            "KeyMarker": page["NextKeyMarker"],
            "VersionIdMarker": page["NextVersionIdMarker"],
        }
    assert seen == keys
    s3.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in listed["Versions"]]
        },
    )
    assert s3.list_object_versions(Bucket=bucket).get("Versions", []) == []
    s3.delete_bucket(Bucket=bucket)  # what tools that empty a bucket do
