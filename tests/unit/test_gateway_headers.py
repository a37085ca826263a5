"""Request headers → PutObject fields; ObjectInfo → response headers; Range; preconditions."""

from __future__ import annotations

import email.utils

import pytest

from edgecache.common import errors, wire
from edgecache.common.errors import MetadataTooLarge
from edgecache.gateway import conditions
from edgecache.gateway.headers import (
    RequestHeaders,
    content_range,
    http_date,
    iso8601,
    object_attributes,
    object_headers,
    parse_http_date,
    upload_digests,
    upload_size,
)

T = 1_700_000_000.75


def headers(**values: str) -> RequestHeaders:
    return RequestHeaders.from_asgi(
        [(k.replace("_", "-").encode(), v.encode("latin-1")) for k, v in values.items()]
    )


def test_request_headers_from_asgi() -> None:
    h = RequestHeaders.from_asgi(
        [(b"X-Amz-Meta-A", b" 1 "), (b"x-amz-meta-a", b"2"), (b"host", b"\xc3\xbc")]
    )
    assert h["x-amz-meta-a"] == "1,2"
    assert h["host"].encode("latin-1") == "ü".encode()  # bytes round-trip


def test_object_attributes() -> None:
    h = headers(
        content_type="image/png",
        x_amz_meta_Camera="X100",
        x_amz_meta_empty="",
        cache_control="no-cache",
        content_disposition="inline",
        content_encoding="aws-chunked,gzip",
        content_language="de",
        expires="Thu, 01 Dec 1994 16:00:00 GMT",
        content_length="5",
        x_amz_content_sha256="UNSIGNED-PAYLOAD",
        authorization="AWS4-HMAC-SHA256 ...",
    )
    content_type, metadata, stored = object_attributes(h)
    assert content_type == "image/png"
    assert metadata == {"camera": "X100", "empty": ""}
    assert stored == {
        "cache-control": "no-cache",
        "content-disposition": "inline",
        "content-encoding": "gzip",
        "content-language": "de",
        "expires": "Thu, 01 Dec 1994 16:00:00 GMT",
    }
    # a PutObject built from them round-trips through the wire
    request = wire.PutObject(
        bucket="b", key="k", content_type=content_type, metadata=metadata, headers=stored
    )
    assert wire.REQUEST_DECODER.decode(wire.encode(request)) == request


def test_object_attributes_defaults_and_only_aws_chunked() -> None:
    content_type, metadata, stored = object_attributes(headers(content_encoding="aws-chunked"))
    assert (content_type, metadata, stored) == ("binary/octet-stream", {}, {})


def test_metadata_limit() -> None:
    object_attributes(headers(x_amz_meta_k="v" * (2048 - 1)))
    with pytest.raises(MetadataTooLarge):
        object_attributes(headers(x_amz_meta_k="v" * 2048))


def test_upload_digests() -> None:
    md5, checksums = upload_digests(
        headers(content_md5="XUFAKrxLKna5cZ2REBfFkg==", x_amz_checksum_crc32="DUoRhQ==")
    )
    assert md5 == "XUFAKrxLKna5cZ2REBfFkg=="
    assert checksums == {"crc32": "DUoRhQ=="}
    sha = "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
    assert upload_digests(headers(x_amz_checksum_sha256=sha))[1] == {"sha256": sha}
    # algorithm / type / mode headers are not values
    assert upload_digests(
        headers(x_amz_checksum_algorithm="CRC32", x_amz_checksum_type="FULL_OBJECT")
    ) == (None, {})


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"content_md5": "not base64!"}, errors.InvalidDigest),
        ({"content_md5": "AAAA"}, errors.InvalidDigest),  # 3 bytes
        ({"x_amz_checksum_crc32": "AAAAAAAA"}, errors.InvalidRequest),  # 6 bytes
        ({"x_amz_checksum_sha1": "DUoRhQ=="}, errors.InvalidRequest),
        ({"x_amz_checksum_crc64nvme": "AAAAAA=="}, errors.InvalidRequest),  # 4 bytes, not 8
        ({"x_amz_checksum_xxhash64": "AAAAAAAAAAA="}, errors.InvalidRequest),  # not verified
        (
            {"x_amz_checksum_crc32": "DUoRhQ==", "x_amz_checksum_crc32c": "yZRlqg=="},
            errors.InvalidRequest,
        ),
    ],
)
def test_upload_digests_refused(values: dict[str, str], error: type[errors.S3Error]) -> None:
    with pytest.raises(error):
        upload_digests(headers(**values))


def test_upload_size() -> None:
    assert upload_size(headers(content_length="11")) == 11
    assert upload_size(headers(content_length="0")) == 0
    with pytest.raises(errors.MissingContentLength) as info:
        upload_size(headers(transfer_encoding="chunked"))
    assert info.value.status == 411
    with pytest.raises(errors.InvalidArgument):
        upload_size(headers(content_length="-1"))
    with pytest.raises(errors.EntityTooLarge):
        upload_size(headers(content_length=str(5 * 1024**3 + 1)))
    assert upload_size(headers(content_length=str(5 * 1024**3))) == 5 * 1024**3
    # aws-chunked: the decoded length, or unknown
    chunked = {"content_encoding": "aws-chunked", "transfer_encoding": "chunked"}
    assert upload_size(headers(**chunked, x_amz_decoded_content_length="11")) == 11
    assert upload_size(headers(**chunked)) is None
    assert (
        upload_size(
            headers(
                x_amz_content_sha256="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                content_length="60",
                x_amz_decoded_content_length="11",
            )
        )
        == 11
    )


INFO = wire.ObjectInfo(
    bucket="b",
    key="k",
    size=100,
    etag="0123abcd",
    last_modified=T,
    content_type="text/plain",
    metadata={"camera": "x100"},
    headers={"cache-control": "max-age=5", "content-encoding": "gzip"},
    checksums={"crc32": "DUoRhQ=="},
)


def ranged(first: int, last: int) -> wire.ObjectInfo:
    fields = {f: getattr(INFO, f) for f in INFO.__struct_fields__}
    return wire.ObjectInfo(**{**fields, "range_first": first, "range_last": last})


def test_object_headers_whole() -> None:
    out = object_headers(INFO, query={}, checksum_mode=False)
    assert out == {
        "content-type": "text/plain",
        "etag": '"0123abcd"',
        "last-modified": "Tue, 14 Nov 2023 22:13:20 GMT",
        "accept-ranges": "bytes",
        "cache-control": "max-age=5",
        "content-encoding": "gzip",
        "x-amz-meta-camera": "x100",
        "content-length": "100",
    }
    with_sums = object_headers(INFO, query={}, checksum_mode=True)
    assert with_sums["x-amz-checksum-crc32"] == "DUoRhQ=="
    assert with_sums["x-amz-checksum-type"] == "FULL_OBJECT"


def test_object_headers_range() -> None:
    out = object_headers(ranged(10, 19), query={}, checksum_mode=True)
    assert out["content-range"] == "bytes 10-19/100"
    assert out["content-length"] == "10"
    assert "x-amz-checksum-crc32" not in out  # checksums describe the whole object only
    assert object_headers(ranged(99, 99), query={}, checksum_mode=False)["content-length"] == "1"
    assert object_headers(ranged(0, 99), query={}, checksum_mode=False)["content-range"] == (
        "bytes 0-99/100"
    )


def test_content_range() -> None:
    assert content_range(INFO) is None
    assert content_range(ranged(0, 0)) == "bytes 0-0/100"


def test_object_headers_overrides() -> None:
    out = object_headers(
        INFO,
        query={
            "response-content-type": "application/json",
            "response-content-disposition": "attachment",
            "response-cache-control": "no-store",
            "response-expires": "0",
            "response-content-language": "fr",
            "response-content-encoding": "identity",
        },
        checksum_mode=False,
    )
    assert out["content-type"] == "application/json"
    assert out["content-disposition"] == "attachment"
    assert out["cache-control"] == "no-store"
    assert out["expires"] == "0"
    assert out["content-language"] == "fr"
    assert out["content-encoding"] == "identity"


def test_unsafe_values_are_rfc2047_encoded() -> None:
    fields = {f: getattr(INFO, f) for f in INFO.__struct_fields__}
    info = wire.ObjectInfo(
        **{
            **fields,
            "metadata": {
                "plain": "caf\xe9",
                "wide": "€",
                "crlf": "a\r\nx-evil: 1",
                "bad name": "x",
            },
            "headers": {"content-disposition": "inline\n", "x-other": "dropped"},
        }
    )
    out = object_headers(
        info,
        query={"response-content-disposition": 'attachment; filename="ü"'},
        checksum_mode=False,
    )
    assert out["x-amz-meta-plain"] == "caf\xe9"  # latin-1: bytes as received
    assert out["x-amz-meta-wide"] == "=?UTF-8?B?4oKs?="
    assert out["x-amz-meta-crlf"].startswith("=?UTF-8?B?")
    assert "x-amz-meta-bad name" not in out
    assert "x-other" not in out
    assert out["content-disposition"] == 'attachment; filename="\xc3\xbc"'  # UTF-8 bytes
    for value in out.values():
        value.encode("latin-1")
        assert "\n" not in value and "\r" not in value


def test_composite_checksum_type() -> None:
    fields = {f: getattr(INFO, f) for f in INFO.__struct_fields__}
    info = wire.ObjectInfo(**{**fields, "checksums": {"crc32": "AAAAAA==-3"}})
    assert object_headers(info, query={}, checksum_mode=True)["x-amz-checksum-type"] == "COMPOSITE"


def test_dates() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT") == 10
    assert parse_http_date("Thursday, 01-Jan-70 00:00:10 GMT") == 10
    assert parse_http_date("garbage") is None
    assert parse_http_date(None) is None
    assert iso8601(T) == "2023-11-14T22:13:20.750Z"


# == preconditions =============================================================================
LATER = email.utils.formatdate(T + 60, usegmt=True)
EARLIER = email.utils.formatdate(T - 60, usegmt=True)
SAME = email.utils.formatdate(T, usegmt=True)  # second resolution: T's fraction is dropped


@pytest.mark.parametrize(
    ("values", "outcome"),
    [
        ({}, False),
        ({"if_match": '"0123abcd"'}, False),
        ({"if_match": '"x", "0123abcd"'}, False),
        ({"if_match": "*"}, False),
        ({"if_match": '"other"'}, 412),
        ({"if_none_match": '"0123abcd"'}, True),
        ({"if_none_match": 'W/"0123abcd"'}, True),
        ({"if_none_match": "*"}, True),
        ({"if_none_match": '"other"'}, False),
        ({"if_modified_since": LATER}, True),
        ({"if_modified_since": SAME}, True),
        ({"if_modified_since": EARLIER}, False),
        ({"if_modified_since": "bogus"}, False),
        ({"if_unmodified_since": EARLIER}, 412),
        ({"if_unmodified_since": SAME}, False),
        ({"if_unmodified_since": LATER}, False),
        # S3: If-Match true + If-Unmodified-Since false → 200
        ({"if_match": '"0123abcd"', "if_unmodified_since": EARLIER}, False),
        # If-None-Match present: If-Modified-Since is not looked at (RFC 7232 §6, as S3)
        ({"if_none_match": '"other"', "if_modified_since": LATER}, False),
        ({"if_none_match": '"0123abcd"', "if_modified_since": EARLIER}, True),
    ],
)
def test_preconditions(values: dict[str, str], outcome: bool | int) -> None:
    h = headers(**values)
    if outcome == 412:
        with pytest.raises(errors.PreconditionFailed):
            conditions.not_modified(h, "0123abcd", T)
    else:
        assert conditions.not_modified(h, "0123abcd", T) is outcome
