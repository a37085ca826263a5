"""CRC64NVME and the multipart checksum types (edgecache.common.checksums): the arithmetic
against reference values and whole-body CRCs, and which algorithm/type pairs S3 allows."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import crc32c
import pytest

from edgecache.common import errors
from edgecache.common.checksums import Digests, multipart_checksum, object_checksum
from tests.unit.test_chunked import decode, unsigned_body


def b64(value: int | bytes, width: int = 4) -> str:
    raw = value if isinstance(value, bytes) else value.to_bytes(width, "big")
    return base64.b64encode(raw).decode()


def test_crc64nvme_check_value() -> None:
    """The CRC-64/NVME catalogue check value: CRC of ``123456789`` is 0xAE8B14860A799888."""
    digests = Digests(["crc64nvme"])
    digests.update(b"1234")
    digests.update(b"56789")
    assert digests.values() == {"crc64nvme": b64(0xAE8B14860A799888, 8)}


@pytest.mark.parametrize(
    ("algorithm", "whole"),
    [
        ("crc32", lambda d: b64(zlib.crc32(d))),
        ("crc32c", lambda d: b64(crc32c.crc32c(d))),
        ("crc64nvme", None),  # checked against Digests over the whole body
    ],
)
def test_full_object_crc_is_the_whole_bodys_crc(algorithm: str, whole) -> None:
    parts = [os.urandom(n) for n in (1000, 1, 4097, 0, 333)]
    each = []
    for part in parts:
        d = Digests([algorithm])
        d.update(part)
        each.append((d.values()[algorithm], len(part)))
    combined = object_checksum(algorithm, "FULL_OBJECT", each)
    reference = Digests([algorithm])
    reference.update(b"".join(parts))
    assert combined == reference.values()[algorithm]
    if whole is not None:
        assert combined == whole(b"".join(parts))


def test_composite_is_the_checksum_of_the_part_checksums_with_the_count() -> None:
    parts = [b"a" * 10, b"b" * 20, b"c"]
    digests = [hashlib.sha256(p).digest() for p in parts]
    each = [(b64(d), len(p)) for d, p in zip(digests, parts, strict=True)]
    expected = b64(hashlib.sha256(b"".join(digests)).digest()) + "-3"
    assert object_checksum("sha256", "COMPOSITE", each) == expected


@pytest.mark.parametrize(
    ("algorithm", "kind", "expected"),
    [
        (None, None, ("", "")),
        ("CRC32", None, ("crc32", "COMPOSITE")),
        ("crc32c", "FULL_OBJECT", ("crc32c", "FULL_OBJECT")),
        ("CRC64NVME", None, ("crc64nvme", "FULL_OBJECT")),
        ("SHA256", "COMPOSITE", ("sha256", "COMPOSITE")),
    ],
)
def test_multipart_checksum_defaults(algorithm, kind, expected) -> None:
    assert multipart_checksum(algorithm, kind) == expected


@pytest.mark.parametrize(
    ("algorithm", "kind"),
    [
        (None, "FULL_OBJECT"),  # a type needs an algorithm
        ("SHA1", "FULL_OBJECT"),
        ("SHA256", "FULL_OBJECT"),
        ("CRC64NVME", "COMPOSITE"),
        ("MD5", None),
        ("CRC32", "WHOLE"),
    ],
)
def test_multipart_checksum_refused(algorithm, kind) -> None:
    with pytest.raises(errors.InvalidRequest):
        multipart_checksum(algorithm, kind)


async def test_crc64nvme_trailer_is_checked() -> None:
    good = b64(0xAE8B14860A799888, 8)
    data, trailers = await decode(
        unsigned_body(b"123456789", {"crc64nvme": good}), trailer_names=("crc64nvme",)
    )
    assert (data, trailers) == (b"123456789", {"crc64nvme": good})
    with pytest.raises(errors.BadDigest):
        await decode(unsigned_body(b"123456780", {"crc64nvme": good}), trailer_names=("crc64nvme",))
