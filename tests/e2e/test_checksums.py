"""Flexible checksums with boto3 against the session's `edgecache up` (issue 6, part E):
``x-amz-checksum-*`` on PutObject and UploadPart for CRC32, CRC32C, CRC64NVME, SHA-1 and
SHA-256; multipart uploads of both checksum types (``COMPOSITE``: the checksum of the
parts' checksums, ``-N``; ``FULL_OBJECT``: the whole object's CRC, combined from the
parts'); checksums back on GET/HEAD with ``ChecksumMode=ENABLED``; a mismatch is BadDigest
and stores nothing.

Expected values are computed here with other code than the server's where one exists
(zlib, hashlib, the crc32c package over the whole body; awscrt for CRC64NVME, which is what
botocore itself uses), so a wrong combination of part CRCs fails.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import zlib

import awscrt.checksums
import crc32c
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part but the last


def _crc(value: int, width: int) -> str:
    return base64.b64encode(value.to_bytes(width, "big")).decode()


def digest(algorithm: str, data: bytes) -> str:
    """base64 of ``algorithm`` over ``data`` (boto3's ``ChecksumAlgorithm`` names)."""
    match algorithm:
        case "CRC32":
            return _crc(zlib.crc32(data), 4)
        case "CRC32C":
            return _crc(crc32c.crc32c(data), 4)
        case "CRC64NVME":
            return _crc(awscrt.checksums.crc64nvme(data), 8)
        case "SHA1":
            return base64.b64encode(hashlib.sha1(data).digest()).decode()
        case "SHA256":
            return base64.b64encode(hashlib.sha256(data).digest()).decode()
    raise AssertionError(algorithm)


def composite(algorithm: str, parts: list[bytes]) -> str:
    joined = b"".join(base64.b64decode(digest(algorithm, p)) for p in parts)
    return f"{digest(algorithm, joined)}-{len(parts)}"


@pytest.fixture(scope="module")
def s3(stack: Stack):
    return stack.boto3()


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    name = f"ck-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=name)
    return name


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


# == PutObject ===================================================================================
@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_put_object_checksum_is_verified_stored_and_returned(
    s3, bucket: str, algorithm: str
) -> None:
    data = os.urandom(MiB + 123)  # two chunks
    key = f"put-{algorithm}"
    field = f"Checksum{algorithm}"
    put = s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm)
    assert (put[field], put["ChecksumType"]) == (digest(algorithm, data), "FULL_OBJECT")
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert (head[field], head["ChecksumType"]) == (digest(algorithm, data), "FULL_OBJECT")
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got[field] == digest(algorithm, data)
    assert got["Body"].read() == data  # botocore checks the body against the header too
    assert field not in s3.head_object(Bucket=bucket, Key=key)  # only when asked for


def test_put_object_with_botocores_default_checksum(s3, bucket: str) -> None:
    """botocore 1.36+ adds a checksum to every upload (``when_supported``); 1.43 picks CRC32
    (CRC64NVME only when asked: it needs awscrt)."""
    data = b"default checksum"
    put = s3.put_object(Bucket=bucket, Key="default", Body=data)
    assert put["ChecksumCRC32"] == digest("CRC32", data)
    head = s3.head_object(Bucket=bucket, Key="default", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == digest("CRC32", data)


@pytest.mark.parametrize("algorithm", ["CRC64NVME", "SHA256"])
def test_wrong_checksum_is_bad_digest_and_stores_nothing(s3, bucket: str, algorithm: str) -> None:
    key = f"wrong-{algorithm}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"first")
    wrong = digest(algorithm, b"something else")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"second", **{f"Checksum{algorithm}": wrong})
    assert _code(exc) == ("BadDigest", 400)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=f"{key}-new", Body=b"x", **{f"Checksum{algorithm}": wrong})
    assert _code(exc) == ("BadDigest", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=f"{key}-new")
    assert _code(exc) == ("404", 404)


# == multipart uploads ===========================================================================
def _multipart(
    s3, bucket: str, key: str, algorithm: str, checksum_type: str, parts: list[bytes], **complete
) -> dict:
    created = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm, ChecksumType=checksum_type
    )
    assert (created["ChecksumAlgorithm"], created["ChecksumType"]) == (algorithm, checksum_type)
    upload_id = created["UploadId"]
    done = []
    for number, body in enumerate(parts, 1):
        part = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=algorithm,
        )
        assert part[f"Checksum{algorithm}"] == digest(algorithm, body)
        done.append(
            {
                "PartNumber": number,
                "ETag": part["ETag"],
                f"Checksum{algorithm}": part[f"Checksum{algorithm}"],
            }
        )
    return s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": done},
        ChecksumType=checksum_type,
        **complete,
    )


@pytest.mark.parametrize(
    ("algorithm", "checksum_type"),
    [
        ("CRC32", "COMPOSITE"),
        ("CRC32", "FULL_OBJECT"),
        ("CRC32C", "FULL_OBJECT"),
        ("CRC64NVME", "FULL_OBJECT"),
        ("SHA256", "COMPOSITE"),
    ],
)
def test_multipart_checksum_types(s3, bucket: str, algorithm: str, checksum_type: str) -> None:
    parts = [os.urandom(PART), os.urandom(MiB // 3)]
    data = b"".join(parts)
    key = f"mp-{algorithm}-{checksum_type}"
    field = f"Checksum{algorithm}"
    if checksum_type == "FULL_OBJECT":
        expected = digest(algorithm, data)
        done = _multipart(s3, bucket, key, algorithm, checksum_type, parts, **{field: expected})
    else:
        expected = composite(algorithm, parts)
        done = _multipart(s3, bucket, key, algorithm, checksum_type, parts)
    assert (done[field], done["ChecksumType"]) == (expected, checksum_type)
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert (head[field], head["ChecksumType"]) == (expected, checksum_type)
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got[field] == expected
    assert got["Body"].read() == data  # a FULL_OBJECT CRC is checked by botocore here


def test_multipart_full_object_checksum_mismatch_stores_nothing(s3, bucket: str) -> None:
    parts = [os.urandom(PART), b"tail"]
    wrong = digest("CRC32C", b"not the object")
    with pytest.raises(ClientError) as exc:
        _multipart(s3, bucket, "mp-wrong", "CRC32C", "FULL_OBJECT", parts, ChecksumCRC32C=wrong)
    assert _code(exc) == ("BadDigest", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="mp-wrong")
    assert _code(exc) == ("404", 404)


@pytest.mark.parametrize(
    ("algorithm", "checksum_type"), [("CRC64NVME", "COMPOSITE"), ("SHA1", "FULL_OBJECT")]
)
def test_checksum_type_the_algorithm_does_not_allow(
    s3, bucket: str, algorithm: str, checksum_type: str
) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(
            Bucket=bucket, Key="mp-bad", ChecksumAlgorithm=algorithm, ChecksumType=checksum_type
        )
    assert _code(exc) == ("InvalidRequest", 400)


def test_part_checksum_of_another_algorithm_is_refused(s3, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key="mp-other", ChecksumAlgorithm="CRC32"
    )["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(
            Bucket=bucket,
            Key="mp-other",
            UploadId=upload_id,
            PartNumber=1,
            Body=b"x",
            ChecksumAlgorithm="SHA256",
        )
    assert _code(exc) == ("InvalidRequest", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="mp-other", UploadId=upload_id)


# == GetObjectAttributes =========================================================================
def test_get_object_attributes(s3, bucket: str) -> None:
    parts = [os.urandom(PART), b"last part"]
    _multipart(s3, bucket, "attrs-mp", "SHA1", "COMPOSITE", parts)
    everything = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    got = s3.get_object_attributes(Bucket=bucket, Key="attrs-mp", ObjectAttributes=everything)
    head = s3.head_object(Bucket=bucket, Key="attrs-mp")
    assert got["ETag"] == head["ETag"].strip('"') and got["LastModified"] == head["LastModified"]
    assert got["Checksum"] == {
        "ChecksumSHA1": composite("SHA1", parts),
        "ChecksumType": "COMPOSITE",
    }
    assert got["ObjectParts"]["TotalPartsCount"] == 2
    assert (got["StorageClass"], got["ObjectSize"]) == ("STANDARD", len(b"".join(parts)))
    s3.put_object(Bucket=bucket, Key="attrs-one", Body=b"one", ChecksumAlgorithm="CRC64NVME")
    one = s3.get_object_attributes(
        Bucket=bucket, Key="attrs-one", ObjectAttributes=["Checksum", "ObjectSize"]
    )
    assert one["Checksum"] == {
        "ChecksumCRC64NVME": digest("CRC64NVME", b"one"),
        "ChecksumType": "FULL_OBJECT",
    }
    assert one["ObjectSize"] == 3 and "ETag" not in one and "ObjectParts" not in one
    with pytest.raises(ClientError) as exc:
        s3.get_object_attributes(Bucket=bucket, Key="attrs-one", ObjectAttributes=["Owner"])
    assert _code(exc) == ("InvalidArgument", 400)
    with pytest.raises(ClientError) as exc:
        s3.get_object_attributes(Bucket=bucket, Key="attrs-none", ObjectAttributes=["ETag"])
    assert _code(exc) == ("NoSuchKey", 404)


def test_part_copy_into_an_upload_with_a_checksum_algorithm(s3, bucket: str) -> None:
    source = os.urandom(PART + 100)
    s3.put_object(Bucket=bucket, Key="copy-src", Body=source)
    key = "mp-copied"
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT"
    )["UploadId"]
    first = s3.upload_part_copy(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "copy-src"},
        CopySourceRange=f"bytes=0-{PART - 1}",
    )["CopyPartResult"]
    assert first["ChecksumCRC32C"] == digest("CRC32C", source[:PART])
    second = s3.upload_part(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=2,
        Body=b"tail",
        ChecksumAlgorithm="CRC32C",
    )
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": second["ETag"]},
            ]
        },
    )
    assert done["ChecksumCRC32C"] == digest("CRC32C", source[:PART] + b"tail")
