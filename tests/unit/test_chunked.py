"""aws-chunked decoding: AWS's published examples, boto3-style trailers, splits, truncation, framing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import zlib

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecache.common import errors
from edgecache.gateway import sigv4
from edgecache.gateway.chunked import (
    SIGNED_PAYLOAD,
    SIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD_TRAILER,
    ChunkedDecoder,
    parse_trailer_names,
)

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
T0 = 1369353600.0  # 20130524T000000Z
DATA = b"a" * 66560  # the examples' object: a 65536-byte chunk, a 1024-byte chunk


def example_context(mode: str, signed_headers: str, seed: str, *extra) -> sigv4.AuthContext:
    """Verify the header part of AWS's chunked-upload example (sigv4-streaming[-trailers])."""
    headers = [
        (b"host", b"s3.amazonaws.com"),
        (b"x-amz-date", b"20130524T000000Z"),
        (b"x-amz-storage-class", b"REDUCED_REDUNDANCY"),
        (b"x-amz-content-sha256", mode.encode()),
        (b"content-encoding", b"aws-chunked"),
        (b"x-amz-decoded-content-length", b"66560"),
        *extra,
        (
            b"authorization",
            f"AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
            f"SignedHeaders={signed_headers},Signature={seed}".encode(),
        ),
    ]
    ctx = sigv4.verify(
        "PUT",
        b"/examplebucket/chunkObject.txt",
        b"",
        headers,
        credentials={AK: SK},
        region="us-east-1",
        now=T0,
    )
    assert ctx.seed_signature == seed
    return ctx


STREAMING_CTX = example_context(
    SIGNED_PAYLOAD,
    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class",
    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    (b"content-length", b"66824"),
)
TRAILER_CTX = example_context(
    SIGNED_PAYLOAD_TRAILER,
    "content-encoding;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
    (b"x-amz-trailer", b"x-amz-checksum-crc32c"),
)


def signed_example(signatures: list[str], trailer: bytes = b"") -> bytes:
    first, second, last = signatures
    return (
        f"10000;chunk-signature={first}\r\n".encode()
        + DATA[:65536]
        + f"\r\n400;chunk-signature={second}\r\n".encode()
        + DATA[65536:]
        + f"\r\n0;chunk-signature={last}\r\n".encode()
        + trailer
        + b"\r\n"
    )


STREAMING_BODY = signed_example(
    [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
)
TRAILER_BODY = signed_example(
    [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ],
    b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n",
)
BOTO3_BODY = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"


async def pieces(*parts: bytes):
    for part in parts:
        yield part


def split(data: bytes, cuts) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


async def decode(body: bytes | list[bytes], mode=UNSIGNED_PAYLOAD_TRAILER, **kwargs):
    """Decode; return (bytes, trailers). Chunks of any size (the examples' are small)."""
    parts = [body] if isinstance(body, bytes) else body
    kwargs.setdefault("signing", TRAILER_CTX if mode == SIGNED_PAYLOAD_TRAILER else STREAMING_CTX)
    kwargs.setdefault("min_chunk_bytes", 1)
    decoder = ChunkedDecoder(pieces(*parts), mode, **kwargs)
    out = b"".join([piece async for piece in decoder])
    return out, decoder.trailers


def unsigned_body(data: bytes, trailers: dict[str, str], chunk: int = 5) -> bytes:
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + chunk]), data[i : i + chunk])
        for i in range(0, len(data), chunk)
    )
    lines = "".join(f"x-amz-checksum-{name}:{value}\r\n" for name, value in trailers.items())
    return framed + b"0\r\n" + lines.encode() + b"\r\n"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def sign_chunks(ctx: sigv4.AuthContext, chunks: list[bytes]) -> bytes:
    """A client's encoder for STREAMING-AWS4-HMAC-SHA256-PAYLOAD (no trailer)."""
    out, previous = b"", ctx.seed_signature
    for chunk in [*chunks, b""]:
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                ctx.amz_date,
                ctx.scope,
                previous,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(chunk).hexdigest(),
            ]
        )
        previous = hmac.new(ctx.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        out += b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode())
        out += chunk + b"\r\n" if chunk else b""
    return out + b"\r\n"


# -- AWS examples ---------------------------------------------------------------------------
async def test_aws_chunked_example_decodes_with_every_signature_checked():
    data, trailers = await decode(STREAMING_BODY, SIGNED_PAYLOAD, decoded_length=66560)
    assert data == DATA and trailers == {}


async def test_aws_trailer_example_decodes_and_checks_its_crc32c():
    names = parse_trailer_names("x-amz-checksum-crc32c")
    data, trailers = await decode(
        TRAILER_BODY, SIGNED_PAYLOAD_TRAILER, trailer_names=names, decoded_length=66560
    )
    assert data == DATA and trailers == {"crc32c": "sOO8/Q=="}


async def test_wrap_body_routes_the_example_to_the_decoder():
    headers = [(b"x-amz-decoded-content-length", b"66560"), (b"content-length", b"66824")]
    verified = sigv4.wrap_body(pieces(STREAMING_BODY), STREAMING_CTX, headers)
    assert b"".join([piece async for piece in verified]) == DATA


@pytest.mark.parametrize(
    "offset",
    [
        100,  # a data byte of the first chunk
        STREAMING_BODY.index(b"400;") - 10,  # a data byte of the second chunk
        STREAMING_BODY.index(b"400;") + 30,  # the second chunk's signature
        len(STREAMING_BODY) - 10,  # the final chunk's signature
    ],
)
async def test_any_tampered_byte_breaks_a_chunk_signature(offset):
    tampered = bytearray(STREAMING_BODY)
    tampered[offset] = ord("b") if tampered[offset] != ord("b") else ord("c")
    with pytest.raises(errors.SignatureDoesNotMatch):
        await decode(bytes(tampered), SIGNED_PAYLOAD)


async def test_chunks_cannot_be_reordered_or_dropped():
    ctx = STREAMING_CTX
    good = sign_chunks(ctx, [b"one", b"two"])
    assert (await decode(good, SIGNED_PAYLOAD))[0] == b"onetwo"
    reordered = sign_chunks(ctx, [b"two"]).replace(b"two", b"one")
    with pytest.raises(errors.SignatureDoesNotMatch):
        await decode(reordered, SIGNED_PAYLOAD)
    without_final = good[: good.index(b"0;chunk")]
    with pytest.raises(errors.IncompleteBody):
        await decode(without_final, SIGNED_PAYLOAD)


async def test_tampered_or_missing_trailer_signature():
    names = ("crc32c",)
    for bad in (
        TRAILER_BODY.replace(b"sOO8/Q==", b"AAAAAA=="),
        TRAILER_BODY.replace(b"d81f82fc", b"d81f82fd"),
        TRAILER_BODY[: TRAILER_BODY.index(b"x-amz-trailer-signature")] + b"\r\n",
    ):
        with pytest.raises(errors.SignatureDoesNotMatch):
            await decode(bad, SIGNED_PAYLOAD_TRAILER, trailer_names=names)


async def test_signed_chunks_need_their_signature():
    with pytest.raises(errors.InvalidArgument):
        await decode(BOTO3_BODY, SIGNED_PAYLOAD)


# -- unsigned payload with trailers (boto3 over HTTPS) ---------------------------------------
async def test_boto3_unsigned_trailer_body():
    data, trailers = await decode(BOTO3_BODY, trailer_names=("crc32",), decoded_length=11)
    assert data == b"hello world" and trailers == {"crc32": "DUoRhQ=="}


async def test_wrong_crc32_is_bad_digest():
    body = BOTO3_BODY.replace(b"DUoRhQ==", b"DUoRhA==")
    with pytest.raises(errors.BadDigest):
        await decode(body, trailer_names=("crc32",))


@pytest.mark.parametrize("value", ["DUoRhQ", "!!!!", "DUoRhQDUoRhQ", ""])
async def test_malformed_checksum_is_invalid_digest(value):
    body = unsigned_body(b"hello world", {"crc32": value})
    with pytest.raises(errors.InvalidDigest):
        await decode(body, trailer_names=("crc32",))


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("crc32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
        ("crc32c", lambda d: crc32c.crc32c(d).to_bytes(4, "big")),
        ("sha1", lambda d: hashlib.sha1(d).digest()),
        ("sha256", lambda d: hashlib.sha256(d).digest()),
    ],
)
async def test_each_checksum_algorithm_is_verified(name, digest):
    data = bytes(range(256)) * 5
    body = unsigned_body(data, {name: b64(digest(data))}, chunk=100)
    assert await decode(body, trailer_names=(name,)) == (data, {name: b64(digest(data))})
    wrong = unsigned_body(data, {name: b64(digest(data + b"!"))}, chunk=100)
    with pytest.raises(errors.BadDigest):
        await decode(wrong, trailer_names=(name,))


async def test_trailers_must_be_the_announced_ones():
    with pytest.raises(errors.InvalidArgument):
        await decode(BOTO3_BODY)  # nothing announced
    with pytest.raises(errors.InvalidArgument):
        await decode(BOTO3_BODY, trailer_names=("crc32c",))
    with pytest.raises(errors.IncompleteBody):
        await decode(unsigned_body(b"hi", {}), trailer_names=("crc32",))
    with pytest.raises(errors.InvalidArgument):
        await decode(BOTO3_BODY, SIGNED_PAYLOAD)  # that mode has no trailers


def test_parse_trailer_names():
    assert parse_trailer_names(None) == ()
    assert parse_trailer_names("X-Amz-Checksum-CRC32C") == ("crc32c",)
    assert parse_trailer_names("x-amz-checksum-sha1, x-amz-checksum-sha256") == ("sha1", "sha256")
    assert parse_trailer_names("x-amz-checksum-crc64nvme") == ("crc64nvme",)
    for bad in ("x-amz-checksum-xxhash64", "x-amz-meta-a", "content-md5"):
        with pytest.raises(errors.InvalidArgument):
            parse_trailer_names(bad)


async def test_client_variants_are_tolerated():
    names = ("crc32",)
    no_final_crlf = BOTO3_BODY[:-2]
    no_trailer_crlf = BOTO3_BODY[:-4]
    blank_before_trailers = BOTO3_BODY.replace(b"0\r\n", b"0\r\n\r\n")
    spaced = BOTO3_BODY.replace(b"crc32:", b"CRC32 : ")
    for body in (no_final_crlf, no_trailer_crlf, blank_before_trailers, spaced):
        assert await decode(body, trailer_names=names) == (b"hello world", {"crc32": "DUoRhQ=="})
    extensions = BOTO3_BODY.replace(b"b\r\n", b"B;ext=1\r\n")
    assert (await decode(extensions, trailer_names=names))[0] == b"hello world"


# -- splits, truncation, lengths, framing ----------------------------------------------------
SMALL_SIGNED = sign_chunks(STREAMING_CTX, [b"hello ", b"world", b"!"])


@pytest.mark.parametrize(
    ("body", "mode", "names"),
    [
        (BOTO3_BODY, UNSIGNED_PAYLOAD_TRAILER, ("crc32",)),
        (SMALL_SIGNED, SIGNED_PAYLOAD, ()),
    ],
    ids=["unsigned-trailer", "signed"],
)
async def test_every_split_in_two_decodes_the_same(body, mode, names):
    expected = await decode(body, mode, trailer_names=names)
    for cut in range(len(body) + 1):
        assert await decode([body[:cut], body[cut:]], mode, trailer_names=names) == expected


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(cuts=st.lists(st.integers(0, len(TRAILER_BODY)), max_size=40))
async def test_any_split_of_the_aws_trailer_example_decodes_the_same(cuts):
    parts = split(TRAILER_BODY, cuts)
    data, trailers = await decode(parts, SIGNED_PAYLOAD_TRAILER, trailer_names=("crc32c",))
    assert data == DATA and trailers == {"crc32c": "sOO8/Q=="}


@pytest.mark.parametrize(
    ("body", "mode", "names"),
    [
        (BOTO3_BODY, UNSIGNED_PAYLOAD_TRAILER, ("crc32",)),
        (SMALL_SIGNED, SIGNED_PAYLOAD, ()),
    ],
    ids=["unsigned-trailer", "signed"],
)
async def test_truncation_never_passes_as_a_different_body(body, mode, names):
    """Every prefix fails with an S3 error, except those that only drop the optional last CRLFs."""
    expected = await decode(body, mode, trailer_names=names)
    tolerated = 0
    for end in range(len(body)):
        try:
            result = await decode(body[:end], mode, trailer_names=names)
        except errors.S3Error:
            continue
        assert result == expected
        tolerated += 1
    assert tolerated <= 4


async def test_decoded_length_must_match():
    names = ("crc32",)
    for declared in (10, 12, 0):
        with pytest.raises(errors.IncompleteBody):
            await decode(BOTO3_BODY, trailer_names=names, decoded_length=declared)
    with pytest.raises(errors.IncompleteBody):
        await decode(STREAMING_BODY, SIGNED_PAYLOAD, decoded_length=66561)


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello!!\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\ngarbage",
        b"5\r\nhello\r\n0\r\nnot-a-header\r\n\r\n",
        b"1" * 5000 + b"\r\n",
        b"ffffffffffffffffffff\r\n",
    ],
)
async def test_malformed_framing_is_an_s3_error(body):
    with pytest.raises(errors.InvalidArgument):
        await decode(body)


@pytest.mark.parametrize("body", [b"", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r\n"])
async def test_truncated_framing_is_incomplete_body(body):
    with pytest.raises(errors.IncompleteBody):
        await decode(body)


async def test_data_streams_through_without_buffering_a_chunk():
    size, piece = 8 * 1024 * 1024, 64 * 1024
    consumed = 0

    async def body():
        nonlocal consumed
        yield b"%x\r\n" % size
        for _ in range(size // piece):
            consumed += 1
            yield b"x" * piece
        yield b"\r\n0\r\n\r\n"

    decoder = ChunkedDecoder(body(), UNSIGNED_PAYLOAD_TRAILER)
    total = 0
    async for out in decoder:
        assert len(out) <= piece
        assert consumed <= total // piece + 1  # output follows input piece by piece
        total += len(out)
    assert total == size


def test_signed_modes_need_a_signing_context():
    with pytest.raises(ValueError, match="signing context"):
        ChunkedDecoder(pieces(), SIGNED_PAYLOAD)
    with pytest.raises(ValueError, match="not an aws-chunked"):
        ChunkedDecoder(pieces(), "UNSIGNED-PAYLOAD")


async def test_only_the_last_chunk_may_be_small():
    small = b"".join(b"1\r\nx\r\n" for _ in range(3)) + b"0\r\n\r\n"
    with pytest.raises(errors.InvalidChunkSizeError):
        await decode(small, min_chunk_bytes=8192)
    ok = b"2000\r\n" + b"a" * 8192 + b"\r\n1\r\nb\r\n0\r\n\r\n"
    assert (await decode(ok, min_chunk_bytes=8192))[0] == b"a" * 8192 + b"b"
