"""Property tests of every parser that takes bytes from the network: whatever arrives, the
answer is a result or an :class:`~edgecache.common.errors.S3Error` (which the gateway
renders as a 4xx), never another exception. Example counts come from the ``suite``
hypothesis profile (tests/conftest.py); ``HYPOTHESIS_PROFILE=thorough`` searches longer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.common import errors, ranges
from edgecache.gateway import auth, conditions, operations, postobject, xml
from edgecache.gateway.chunked import (
    SIGNED_PAYLOAD_TRAILER,
    STREAMING_MODES,
    ChunkedDecoder,
    parse_trailer_names,
)
from edgecache.gateway.headers import (
    RequestHeaders,
    header_value,
    object_attributes,
    upload_digests,
    upload_size,
)
from edgecache.gateway.sigv4 import AuthContext

CREDENTIALS = {"AKIDEXAMPLE": "secret"}
latin1 = st.binary(max_size=200)
token = st.sampled_from(
    [b"AWS4-HMAC-SHA256", b"AWS", b"Credential=", b"SignedHeaders=", b"Signature=", b",", b" ",
     b"/", b"=", b"&", b"%", b"9" * 50, b"AKIDEXAMPLE", b"20261130", b"us-east-1", b"s3",
     b"aws4_request", b"host", b"X-Amz-", b"AWSAccessKeyId", b"Expires", b"\xff", b"\x00"]
)  # fmt: skip
structured = st.lists(st.one_of(token, latin1), max_size=12).map(b"".join)


def only_s3_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except errors.S3Error as exc:
        assert 400 <= exc.status < 500 or exc.status == 501, exc
        return exc


# -- signatures -------------------------------------------------------------------------------
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]),
    path=structured,
    query=structured,
    authorization=st.one_of(st.none(), structured),
    date=st.one_of(st.none(), structured, st.just(b"Fri, 31 Dec 9999 23:59:59 -1200")),
    amz=st.dictionaries(
        st.sampled_from([b"x-amz-date", b"x-amz-content-sha256", b"x-amz-meta-a"]),
        structured,
        max_size=3,
    ),
)
def test_signature_verification_answers_every_request(
    method, path, query, authorization, date, amz
):
    headers = [(b"host", b"h")] + list(amz.items())
    if authorization is not None:
        headers.append((b"authorization", authorization))
    if date is not None:
        headers.append((b"date", date))
    outcome = only_s3_errors(
        auth.verify, method, b"/" + path, query, headers,
        credentials=CREDENTIALS, region="us-east-1", now=time.time(),
    )  # fmt: skip
    assert isinstance(outcome, errors.S3Error)  # nothing random is ever a valid signature


# -- aws-chunked ------------------------------------------------------------------------------
CONTEXT = AuthContext(
    access_key="AKIDEXAMPLE", region="us-east-1", amz_date="20261130T000000Z",
    scope="20261130/us-east-1/s3/aws4_request", signing_key=b"k" * 32, seed_signature="0" * 64,
    content_sha256=SIGNED_PAYLOAD_TRAILER, presigned=False,
)  # fmt: skip
frame_token = st.sampled_from(
    [b"\r\n", b"0", b"1", b"a", b"ffffffffffffffff", b";chunk-signature=", b"0" * 64,
     b"x-amz-checksum-crc32:", b"DUoRhQ==", b"x-amz-trailer-signature:", b"hello", b":"]
)  # fmt: skip


async def _decode(body: list[bytes], mode: str, names: tuple[str, ...]) -> None:
    async def pieces():
        for piece in body:
            yield piece

    decoder = ChunkedDecoder(
        pieces(), mode, signing=CONTEXT, trailer_names=names, min_chunk_bytes=1
    )
    async for _ in decoder:
        pass


@given(
    body=st.lists(
        st.lists(st.one_of(frame_token, st.binary(max_size=20)), max_size=12).map(b"".join),
        max_size=4,
    ),
    mode=st.sampled_from(sorted(STREAMING_MODES)),
    names=st.sampled_from([(), ("crc32",), ("sha256",)]),
)
def test_aws_chunked_framing_and_trailers_answer_every_body(body, mode, names):
    only_s3_errors(asyncio.run, _decode(body, mode, names))


@given(st.one_of(st.none(), st.text(max_size=80)))
def test_trailer_names(value):
    only_s3_errors(parse_trailer_names, value)


# -- XML bodies ---------------------------------------------------------------------------------
xml_token = st.sampled_from(
    ["<CompleteMultipartUpload>", "</CompleteMultipartUpload>", "<Part>", "</Part>",
     "<PartNumber>", "</PartNumber>", "<ETag>", "</ETag>", "<Delete>", "</Delete>", "<Object>",
     "</Object>", "<Key>", "</Key>", "<Quiet>true</Quiet>", '<?xml version="1.0"?>',
     "<!DOCTYPE x [<!ENTITY e 'x'>]>", "&e;", "1", "10001", "9" * 5000, '"etag"', "\x00", "ü"]
)  # fmt: skip
xml_body = st.lists(st.one_of(xml_token, st.text(max_size=10)), max_size=16).map(
    lambda p: "".join(p).encode()
)


@given(xml_body)
def test_complete_multipart_body(body):
    only_s3_errors(xml.parse_complete_multipart, body)


@given(xml_body)
def test_delete_objects_body(body):
    only_s3_errors(xml.parse_delete, body)


@given(xml_body)
def test_create_bucket_body(body):
    only_s3_errors(xml.parse_create_bucket, body)


# -- Range and conditional headers -------------------------------------------------------------------
@given(st.text(max_size=60), st.integers(min_value=0, max_value=2**40))
def test_range(header, size):
    outcome = only_s3_errors(ranges.parse_range, header, size)
    if isinstance(outcome, tuple):
        first, last = outcome
        assert 0 <= first <= last < size


@given(
    st.integers(0, 2**20),
    st.integers(0, 2**20),
    st.sampled_from(["", "bytes=", "bytes=-", "bytes= 5 - 9 ", "bits=1-2"]),
)
def test_range_selects_what_it_says(first, length, prefix):
    size = first + length + 1
    assert ranges.parse_range(f"bytes={first}-{first + length}", size) == (first, first + length)
    only_s3_errors(ranges.parse_range, prefix, size)


@given(st.dictionaries(
    st.sampled_from(["if-match", "if-none-match", "if-modified-since", "if-unmodified-since"]),
    st.one_of(st.text(max_size=60), st.just("Fri, 31 Dec 99999999999 23:59:59 GMT")),
))  # fmt: skip
def test_conditional_headers(headers):
    only_s3_errors(conditions.not_modified, RequestHeaders(headers), "abc", time.time())


# -- targets, keys, metadata ------------------------------------------------------------------------
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "PATCH"]),
    path=st.binary(max_size=80).map(lambda b: b"/" + b),
    query=structured,
    host=st.text(max_size=30),
)
def test_routing_any_target(method, path, query, host):
    bucket = operations.host_bucket(host, "s3.localhost")
    outcome = only_s3_errors(operations.route, method, path, query, host_bucket=bucket)
    if isinstance(outcome, operations.Operation) and outcome.bucket:
        assert len(outcome.bucket) <= 255 and outcome.bucket.isascii() and " " not in outcome.bucket


@given(st.dictionaries(
    st.one_of(st.sampled_from(["content-type", "content-encoding", "cache-control", "content-md5",
                               "x-amz-checksum-crc32", "x-amz-decoded-content-length", "content-length",
                               "x-amz-content-sha256"]),
              st.text(min_size=1, max_size=20).map(lambda s: "x-amz-meta-" + s.lower())),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    max_size=6,
))  # fmt: skip
def test_object_headers_in_and_out(headers):
    h = RequestHeaders(headers)
    outcome = only_s3_errors(object_attributes, h)
    only_s3_errors(upload_digests, h)
    only_s3_errors(upload_size, h)
    if isinstance(outcome, tuple):
        content_type, metadata, stored = outcome
        for value in (content_type, *metadata.values(), *stored.values()):
            header_value(value).encode("latin-1")  # every value can go out as a header


# -- POST policies --------------------------------------------------------------------------------------
condition = st.one_of(
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers()), max_size=2),
    st.lists(st.one_of(st.sampled_from(["eq", "starts-with", "content-length-range", "$key"]),
                       st.text(max_size=8), st.integers(-5, 2**70)), max_size=4),
    st.integers(),
)  # fmt: skip


@given(
    expiration=st.one_of(st.text(max_size=30), st.just("2999-01-01T00:00:00.000Z"), st.integers()),
    conditions=st.one_of(st.lists(condition, max_size=4), st.text(max_size=5)),
    raw=st.one_of(st.none(), st.text(max_size=40)),
    fields=st.dictionaries(
        st.sampled_from(["key", "content-type", "x-ignore-a", "acl"]),
        st.text(max_size=10),
        max_size=3,
    ),
)
def test_post_policy_documents(expiration, conditions, raw, fields):
    document = json.dumps({"expiration": expiration, "conditions": conditions}).encode()
    policy = raw if raw is not None else base64.b64encode(document).decode()
    outcome = only_s3_errors(postobject.check_policy, policy, fields, bucket="b", now=time.time())
    if isinstance(outcome, tuple):
        assert outcome[0] >= 0 and outcome[1] <= 5 * 1024**3


@pytest.mark.parametrize(
    "body", [b"", b"--x\r\n", b"--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--\r\n"]
)
def test_post_form_without_file(body):
    async def run():
        async def pieces():
            yield body

        return await postobject.read_fields(postobject._events(pieces(), "b"))

    with pytest.raises((errors.MalformedPOSTRequest, errors.IncorrectNumberOfFilesInPostRequest)):
        asyncio.run(run())
