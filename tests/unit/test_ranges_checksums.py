import base64
import hashlib
import zlib

import crc32c
import pytest

from edgecache.common import errors
from edgecache.common.checksums import Digests, verify_content_md5
from edgecache.common.ranges import parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-100", 10, (0, 9)),
        ("bytes=5-2", 10, None),  # invalid: ignored
        ("bytes=0-1,3-4", 10, None),  # several ranges: S3 serves the whole object
        ("items=0-1", 10, None),
    ],
)
def test_parse_range(header, size, expected) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_range(header, size) -> None:
    with pytest.raises(errors.InvalidRange):
        parse_range(header, size)


def test_digests_match_reference_implementations() -> None:
    data = b"hello world" * 1000
    d = Digests(["crc32", "crc32c", "sha1", "sha256"])
    for i in range(0, len(data), 777):
        d.update(data[i : i + 777])
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    assert d.values() == {
        "crc32": b64(zlib.crc32(data).to_bytes(4, "big")),
        "crc32c": b64(crc32c.crc32c(data).to_bytes(4, "big")),
        "sha1": b64(hashlib.sha1(data).digest()),
        "sha256": b64(hashlib.sha256(data).digest()),
    }
    assert d.md5_hex == hashlib.md5(data).hexdigest()
    assert d.size == len(data)
    assert d.verify({"crc32": d.values()["crc32"]}) == {"crc32": d.values()["crc32"]}
    with pytest.raises(errors.BadDigest):
        d.verify({"sha256": b64(b"\0" * 32)})


def test_boto3_crc32_example() -> None:
    d = Digests(["crc32"])
    d.update(b"hello world")
    assert d.values()["crc32"] == "DUoRhQ=="


def test_content_md5() -> None:
    md5 = hashlib.md5(b"x").digest()
    verify_content_md5(base64.b64encode(md5).decode(), md5)
    verify_content_md5(None, md5)
    with pytest.raises(errors.BadDigest):
        verify_content_md5(base64.b64encode(b"\0" * 16).decode(), md5)
    with pytest.raises(errors.InvalidDigest):
        verify_content_md5("not base64!", md5)
    with pytest.raises(errors.InvalidDigest):
        verify_content_md5(base64.b64encode(b"short").decode(), md5)
