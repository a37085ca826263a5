"""SigV4 verification: AWS's published S3 examples, botocore round trips, and the error map."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.common import errors
from edgecache.gateway import sigv4

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CREDENTIALS = {AK: SK}
T0 = 1369353600.0  # 20130524T000000Z, the time of every AWS example
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
HOST = (b"host", b"examplebucket.s3.amazonaws.com")
AMZ_DATE = (b"x-amz-date", b"20130524T000000Z")


def check(method, raw_path, query, headers, *, now=T0, region="us-east-1", credentials=None):
    return sigv4.verify(
        method,
        raw_path,
        query,
        headers,
        credentials=CREDENTIALS if credentials is None else credentials,
        region=region,
        now=now,
    )


def authorization(signed_headers: str, signature: str, *, region: str = "us-east-1"):
    value = (
        f"AWS4-HMAC-SHA256 Credential={AK}/20130524/{region}/s3/aws4_request,"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )
    return (b"authorization", value.encode())


# -- AWS examples: "Signature Calculations for the Authorization Header: Transferring Payload in
#    a Single Chunk" and "Authenticating Requests: Using Query Parameters" ------------------------
def get_object_example():
    return (
        "GET",
        b"/test.txt",
        b"",
        [
            HOST,
            (b"range", b"bytes=0-9"),
            (b"x-amz-content-sha256", EMPTY_SHA256.encode()),
            AMZ_DATE,
            authorization(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            ),
        ],
    )


def put_object_example(raw_path: bytes = b"/test%24file.text"):
    payload_sha256 = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    return (
        "PUT",
        raw_path,
        b"",
        [
            HOST,
            (b"date", b"Fri, 24 May 2013 00:00:00 GMT"),
            AMZ_DATE,
            (b"x-amz-storage-class", b"REDUCED_REDUNDANCY"),
            (b"x-amz-content-sha256", payload_sha256.encode()),
            authorization(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            ),
        ],
    )


def bucket_get_example(query: bytes, signature: str):
    return (
        "GET",
        b"/",
        query,
        [
            HOST,
            (b"x-amz-content-sha256", EMPTY_SHA256.encode()),
            AMZ_DATE,
            authorization("host;x-amz-content-sha256;x-amz-date", signature),
        ],
    )


PRESIGNED_QUERY = (
    b"X-Amz-Algorithm=AWS4-HMAC-SHA256"
    b"&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    b"&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    b"&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)

AWS_EXAMPLES = {
    "get-object-range": get_object_example(),
    "put-object-encoded-dollar": put_object_example(),
    "put-object-raw-dollar": put_object_example(b"/test$file.text"),
    "get-bucket-lifecycle": bucket_get_example(
        b"lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    ),
    "list-objects": bucket_get_example(
        b"max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    ),
}


@pytest.mark.parametrize("example", AWS_EXAMPLES.values(), ids=AWS_EXAMPLES.keys())
def test_aws_header_examples_verify(example):
    method, path, query, headers = example
    ctx = check(method, path, query, headers)
    signature = headers[-1][1].decode().rpartition("Signature=")[2]
    assert ctx.seed_signature == signature
    assert ctx.access_key == AK
    assert ctx.scope == "20130524/us-east-1/s3/aws4_request"
    assert ctx.amz_date == "20130524T000000Z"
    assert not ctx.presigned


def test_aws_presigned_example_verifies_until_it_expires():
    host = [HOST]
    ctx = check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=T0 + 86400)
    assert ctx.presigned
    assert ctx.content_sha256 == "UNSIGNED-PAYLOAD"
    assert ctx.seed_signature.startswith("aeeed9bb")
    with pytest.raises(errors.AccessDenied, match="Request has expired"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=T0 + 86401)
    with pytest.raises(errors.AccessDenied, match="not valid yet"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=T0 - 3600)


def test_a_presigned_url_verified_before_is_checked_again_for_what_may_differ():
    """Verified once, the same URL is not re-hashed, but a changed secret, a changed signed
    header or the clock still decide."""
    host = [HOST]
    now = T0 + 60
    assert check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=now).presigned
    assert check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=now).presigned  # again
    with pytest.raises(errors.SignatureDoesNotMatch):
        check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=now, credentials={AK: "rotated"})
    with pytest.raises(errors.SignatureDoesNotMatch):
        check("GET", b"/test.txt", PRESIGNED_QUERY, [(b"host", b"other.example")], now=now)
    with pytest.raises(errors.AccessDenied, match="unsigned|not signed"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, [*host, (b"x-amz-meta-a", b"1")], now=now)
    with pytest.raises(errors.AccessDenied, match="Request has expired"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=T0 + 86401)


def test_any_change_to_a_signed_part_breaks_the_signature():
    method, path, query, headers = get_object_example()
    changed = [(n, b"bytes=0-10" if n == b"range" else v) for n, v in headers]
    for args in (
        ("HEAD", path, query, headers),
        (method, b"/test.txu", query, headers),
        (method, path, b"x=1", headers),
        (method, path, query, changed),
    ):
        with pytest.raises(errors.SignatureDoesNotMatch):
            check(*args)
    with pytest.raises(errors.SignatureDoesNotMatch):
        check("GET", b"/test.txt", PRESIGNED_QUERY.replace(b"86400", b"86401"), [HOST])


def test_header_whitespace_and_case_are_canonicalised():
    method, path, query, headers = get_object_example()
    loose = [(n.upper(), b"  bytes=0-9 ") if n == b"range" else (n, v) for n, v in headers]
    assert check(method, path, query, loose).seed_signature.startswith("f0e8bdb8")


# -- time -----------------------------------------------------------------------------------
def test_clock_skew_is_limited():
    check(*get_object_example(), now=T0 + 900)
    check(*get_object_example(), now=T0 - 900)
    for now in (T0 + 901, T0 - 901):
        with pytest.raises(errors.RequestTimeTooSkewed):
            check(*get_object_example(), now=now)


def test_a_request_without_a_usable_date_is_denied():
    method, path, query, headers = get_object_example()
    bad = [(n, b"2013-05-24T00:00:00Z") if n == b"x-amz-date" else (n, v) for n, v in headers]
    with pytest.raises(errors.AccessDenied, match="valid Date"):
        check(method, path, query, bad)
    missing = [(n, v) for n, v in headers if n != b"x-amz-date"]
    with pytest.raises(errors.AccessDenied, match="valid Date"):
        check(method, path, query, missing)


def test_date_header_stands_in_for_x_amz_date():
    """Signed with botocore's SigV4 pieces, since its signer always adds X-Amz-Date."""
    request = AWSRequest(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        headers={"Date": "Fri, 24 May 2013 00:00:00 GMT", "X-Amz-Content-SHA256": EMPTY_SHA256},
    )
    request.context["timestamp"] = "20130524T000000Z"
    signer = S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1")
    signed_headers = signer.signed_headers(signer.headers_to_sign(request))
    signature = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    assert signed_headers == "date;host;x-amz-content-sha256"
    headers = [*request.headers.items(), authorization(signed_headers, signature)]
    ctx = check(*asgi("GET", request.url, headers))
    assert ctx.amz_date == "20130524T000000Z"
    with pytest.raises(errors.RequestTimeTooSkewed):
        check(*asgi("GET", request.url, headers), now=T0 + 3600)


# -- the error map --------------------------------------------------------------------------
def test_no_authentication_is_access_denied():
    with pytest.raises(errors.AccessDenied):
        check("GET", b"/bucket/key", b"", [HOST])


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ((b"authorization", b"AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg="), b""),
        (None, b"AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1141889120&Signature=vjbyPxybdZ"),
    ],
    ids=["header", "query"],
)
def test_sigv2_is_refused_clearly(header, query):
    headers = [HOST] + ([header] if header else [])
    with pytest.raises(errors.InvalidRequest, match="AWS4-HMAC-SHA256"):
        check("GET", b"/bucket/key", query, headers)


def test_unknown_access_key():
    with pytest.raises(errors.InvalidAccessKeyId):
        check(*get_object_example(), credentials={"OTHER": SK})


def test_wrong_region_is_malformed_authorization():
    with pytest.raises(errors.AuthorizationHeaderMalformed, match="'us-east-1' is wrong"):
        check(*get_object_example(), region="eu-west-1")
    with pytest.raises(errors.AuthorizationQueryParametersError, match="wrong"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, [HOST], region="eu-west-1")


@pytest.mark.parametrize(
    "value",
    [
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host"
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3,"
            "SignedHeaders=host,Signature=00"
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130525/us-east-1/s3/aws4_request,"
            "SignedHeaders=host,Signature=00"
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s4/aws4_request,"
            "SignedHeaders=host,Signature=00"
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=x-amz-date,Signature=00"
        ),
        "AWS4-HMAC-SHA256 garbage",
    ],
    ids=["no-signature", "short-credential", "date", "service", "host-unsigned", "garbage"],
)
def test_malformed_authorization_header(value):
    headers = [HOST, AMZ_DATE, (b"x-amz-content-sha256", EMPTY_SHA256.encode())]
    with pytest.raises(errors.AuthorizationHeaderMalformed):
        check("GET", b"/", b"", [*headers, (b"authorization", value.encode())])


def test_unsupported_authorization_type_and_double_auth_are_invalid_arguments():
    with pytest.raises(errors.InvalidArgument, match="Unsupported Authorization Type"):
        check("GET", b"/", b"", [HOST, (b"authorization", b"Bearer abc")])
    method, path, _, headers = get_object_example()
    with pytest.raises(errors.InvalidArgument, match="Only one auth mechanism"):
        check(method, path, PRESIGNED_QUERY, headers)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"X-Amz-Expires=86400", b"X-Amz-Expires=0"),
        (b"X-Amz-Expires=86400", b"X-Amz-Expires=604801"),
        (b"X-Amz-Expires=86400", b"X-Amz-Expires=-1"),
        (b"X-Amz-Expires=86400", b"X-Amz-Expires=1e3"),
        (b"X-Amz-Expires=86400&", b""),
        (b"X-Amz-Date=20130524T000000Z", b"X-Amz-Date=20130524"),
        (b"X-Amz-Algorithm=AWS4-HMAC-SHA256", b"X-Amz-Algorithm=AWS4-HMAC-SHA1"),
    ],
)
def test_malformed_presigned_parameters(old, new):
    with pytest.raises(errors.AuthorizationQueryParametersError):
        check("GET", b"/test.txt", PRESIGNED_QUERY.replace(old, new), [HOST])


def test_header_signatures_need_a_known_payload_hash():
    method, path, query, headers = get_object_example()
    without = [(n, v) for n, v in headers if n != b"x-amz-content-sha256"]
    with pytest.raises(errors.InvalidRequest, match="x-amz-content-sha256"):
        check(method, path, query, without)
    bogus = [(n, b"bogus") if n == b"x-amz-content-sha256" else (n, v) for n, v in headers]
    with pytest.raises(errors.InvalidArgument):
        check(method, path, query, bogus)


def test_unsigned_amz_headers_are_denied():
    method, path, query, headers = get_object_example()
    with pytest.raises(errors.AccessDenied, match="not signed: x-amz-acl"):
        check(method, path, query, [*headers, (b"x-amz-acl", b"public-read")])
    with pytest.raises(errors.AccessDenied, match="not signed"):
        check("GET", b"/test.txt", PRESIGNED_QUERY, [HOST, (b"x-amz-meta-a", b"1")])


# -- botocore round trips -------------------------------------------------------------------
class _Raw:
    def stream(self, *args, **kwargs):
        yield b""


class Client:
    """A botocore S3 client whose requests are captured instead of sent."""

    def __init__(self, endpoint: str = "http://s3.test:9000", secret: str = SK, **config) -> None:
        config = Config(s3={"addressing_style": "path"}, signature_version="s3v4", **config)
        self.s3 = botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id=AK,
            aws_secret_access_key=secret,
            config=config,
        )
        self.sent = []
        self.s3.meta.events.register("before-send.s3", self._capture)

    def _capture(self, request, **_):
        self.sent.append(request)
        return AWSResponse(request.url, 200, {}, _Raw())


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def asgi(method: str, url: str, headers) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]]]:
    """What an ASGI server would hand the gateway for this request (plus the Host it adds)."""
    parts = urlsplit(url)
    pairs = [(_bytes(n).lower(), _bytes(v)) for n, v in headers]
    if not any(n == b"host" for n, _ in pairs):
        pairs.append((b"host", parts.netloc.encode()))
    return method, parts.path.encode(), parts.query.encode(), pairs


def check_sent(request, **kwargs):
    return check(*asgi(request.method, request.url, request.headers.items()), **kwargs)


async def body(data: bytes, size: int = 7):
    for i in range(0, len(data), size):
        yield data[i : i + size]


KEYS = ["dir/a b+c~d ünï €.txt", "a%2Fb=c&d?e#f", "~/(tilde)!*'", "  leading", "x" * 300]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("endpoint", ["http://s3.test:9000", "https://s3.test"])
async def test_botocore_put_object_round_trip(key, endpoint):
    client = Client(endpoint, request_checksum_calculation="when_supported")
    data = b"hello world" * 100
    client.s3.put_object(Bucket="bucket", Key=key, Body=data, Metadata={"m": "v"})
    (request,) = client.sent
    ctx = check_sent(request, now=time.time())
    raw = request.body if isinstance(request.body, bytes) else request.body.read()
    headers = asgi(request.method, request.url, request.headers.items())[3]
    verified = sigv4.wrap_body(body(raw), ctx, headers)
    assert b"".join([piece async for piece in verified]) == data
    if endpoint.startswith("https"):
        assert ctx.content_sha256 == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        assert verified.trailers == {"crc32": crc}
    else:
        assert ctx.content_sha256 == hashlib.sha256(data).hexdigest()


def test_botocore_without_new_checksums_round_trips():
    client = Client(request_checksum_calculation="when_required")
    client.s3.put_object(Bucket="bucket", Key="k", Body=b"data")
    check_sent(client.sent[0], now=time.time())


def test_botocore_query_shapes_round_trip():
    client = Client()
    client.s3.create_multipart_upload(Bucket="bucket", Key="a/b c")
    client.s3.list_objects_v2(Bucket="bucket", Prefix="a/b", StartAfter="")
    client.s3.list_objects_v2(Bucket="bucket", Prefix="ü +/=&", Delimiter="/", MaxKeys=5)
    client.s3.get_object(Bucket="bucket", Key="k", Range="bytes=0-9", VersionId="v 1")
    assert b"?uploads" in client.sent[0].url.encode()
    assert "prefix=a%2Fb" in client.sent[1].url
    for request in client.sent:
        check_sent(request, now=time.time())


def test_repeated_and_empty_query_parameters_round_trip():
    url = "http://s3.test/bucket?b=2&a=2&a=1&empty=&bare&a=1"
    request = AWSRequest("GET", url, headers={"x-amz-content-sha256": EMPTY_SHA256})
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    check(*asgi("GET", url, request.headers.items()), now=time.time())


def test_percent_encoding_variants_of_a_path_verify_alike():
    client = Client()
    client.s3.head_object(Bucket="bucket", Key="a~b c")
    method, path, query, headers = asgi("HEAD", client.sent[0].url, client.sent[0].headers.items())
    assert path == b"/bucket/a~b%20c"
    for variant in (b"/bucket/a%7Eb%20c", b"/bucket/a%7eb%20c", b"/bucket/a~b%20c"):
        check(method, variant, query, headers, now=time.time())
    with pytest.raises(errors.SignatureDoesNotMatch):
        check(method, b"/bucket/a~b+c", query, headers, now=time.time())


def test_botocore_sigv2_presigned_url_is_refused():
    s3 = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        config=Config(signature_version="s3"),
    )
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": "k"})
    with pytest.raises(errors.InvalidRequest, match="AWS4-HMAC-SHA256"):
        check(*asgi("GET", url, []), now=time.time())


def test_botocore_presigned_get_and_its_expiry():
    client = Client()
    url = client.s3.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "a b/ü+~.txt"}, ExpiresIn=60
    )
    args = asgi("GET", url, [])
    ctx = check(*args, now=time.time())
    assert ctx.presigned and ctx.content_sha256 == "UNSIGNED-PAYLOAD"
    with pytest.raises(errors.AccessDenied, match="expired"):
        check(*args, now=time.time() + 120)


def test_botocore_presigned_put_round_trip():
    client = Client()
    url = client.s3.generate_presigned_url(
        "put_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=3600
    )
    check(*asgi("PUT", url, [(b"content-length", b"3")]), now=time.time())


def test_botocore_wrong_secret_unknown_key_and_skew():
    client = Client(secret="not the secret")
    client.s3.get_object(Bucket="bucket", Key="k")
    with pytest.raises(errors.SignatureDoesNotMatch):
        check_sent(client.sent[0], now=time.time())
    with pytest.raises(errors.InvalidAccessKeyId):
        check_sent(client.sent[0], now=time.time(), credentials={"AKIDOTHER": SK})
    good = Client()
    good.s3.get_object(Bucket="bucket", Key="k")
    with pytest.raises(errors.RequestTimeTooSkewed):
        check_sent(good.sent[0], now=time.time() + 3600)


@settings(max_examples=300, deadline=None, database=None)
@given(
    raw_path=st.binary(max_size=40),
    query=st.binary(max_size=120)
    | st.sampled_from([PRESIGNED_QUERY[:n] for n in range(0, 400, 7)]),
    authorization=st.none() | st.binary(max_size=200).map(lambda b: b"AWS4-HMAC-SHA256 " + b),
    date=st.binary(max_size=30),
)
def test_arbitrary_input_only_raises_s3_errors(raw_path, query, authorization, date):
    headers = [HOST, (b"x-amz-date", date), (b"date", date)]
    headers += [(b"authorization", authorization)] if authorization is not None else []
    with pytest.raises(errors.S3Error):
        check("GET", raw_path, query, headers)


# -- payload checks -------------------------------------------------------------------------
def context(content_sha256: str) -> sigv4.AuthContext:
    return sigv4.AuthContext(
        access_key=AK,
        region="us-east-1",
        amz_date="20130524T000000Z",
        scope="20130524/us-east-1/s3/aws4_request",
        signing_key=b"k" * 32,
        seed_signature="0" * 64,
        content_sha256=content_sha256,
        presigned=False,
    )


async def read(verified) -> bytes:
    return b"".join([piece async for piece in verified])


async def test_signed_payload_is_checked_at_the_end():
    data = b"Welcome to Amazon S3."
    good = hashlib.sha256(data).hexdigest()
    length = [(b"content-length", str(len(data)).encode())]
    assert await read(sigv4.wrap_body(body(data), context(good), length)) == data
    assert await read(sigv4.wrap_body(body(data), context(good.upper()), length)) == data
    seen = []
    with pytest.raises(errors.XAmzContentSHA256Mismatch):
        async for piece in sigv4.wrap_body(body(data), context(EMPTY_SHA256), length):
            seen.append(piece)
    assert b"".join(seen) == data  # streamed first, refused at the end


@pytest.mark.parametrize("content_sha256", ["UNSIGNED-PAYLOAD", "hex"])
@pytest.mark.parametrize("declared", [20, 22])
async def test_body_length_must_match_content_length(content_sha256, declared):
    data = b"Welcome to Amazon S3."
    if content_sha256 == "hex":
        content_sha256 = hashlib.sha256(data).hexdigest()
    length = [(b"content-length", str(declared).encode())]
    with pytest.raises(errors.IncompleteBody):
        await read(sigv4.wrap_body(body(data), context(content_sha256), length))


async def test_unsigned_payload_without_length_passes_through():
    verified = sigv4.wrap_body(body(b"abc"), context("UNSIGNED-PAYLOAD"), [])
    assert await read(verified) == b"abc"
    assert verified.trailers == {}


def test_wrap_body_rejects_unknown_modes_and_bad_lengths():
    with pytest.raises(errors.InvalidArgument):
        sigv4.wrap_body(body(b""), context("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"), [])
    with pytest.raises(errors.InvalidArgument):
        sigv4.wrap_body(body(b""), context("UNSIGNED-PAYLOAD"), [(b"content-length", b"-1")])
    with pytest.raises(errors.InvalidArgument):
        trailer = [(b"x-amz-trailer", b"x-amz-checksum-sha512")]  # not an S3 trailer checksum here
        sigv4.wrap_body(body(b""), context("STREAMING-UNSIGNED-PAYLOAD-TRAILER"), trailer)


def test_a_presigned_url_seen_before_is_accepted_only_with_the_same_header_bytes():
    """The byte-for-byte shortcut of the verified-URL cache (``get_raw``) never accepts what
    the full check refuses: an ``Authorization`` header, an unsigned ``x-amz-*`` header in
    any case, a second ``Host``, or a changed one all take the long way, and are refused
    there as on a first request."""
    host = [HOST]
    now = T0 + 60
    check("GET", b"/test.txt", PRESIGNED_QUERY, host, now=now)
    key = ("GET", b"/test.txt", PRESIGNED_QUERY, "us-east-1")
    assert sigv4._presigned.get_raw(key, host, CREDENTIALS) is not None  # the shortcut is taken
    assert sigv4._presigned.get_raw(key, host, {AK: "rotated"}) is None
    assert check("GET", b"/test.txt", PRESIGNED_QUERY, [(b"range", b"bytes=0-1"), *host], now=now)
    refused = {
        "both mechanisms": [*host, authorization("host", "0" * 64)],
        "unsigned x-amz header": [*host, (b"x-amz-meta-a", b"1")],
        "unsigned X-Amz header in upper case": [*host, (b"X-Amz-Meta-A", b"1")],
        "a second host": [*host, (b"host", b"other.example")],
        "another host": [(b"host", b"examplebucket.s3.amazonaws.com:80")],
    }
    for why, headers in refused.items():
        with pytest.raises((errors.InvalidArgument, errors.AccessDenied, errors.SignatureDoesNotMatch)):
            check("GET", b"/test.txt", PRESIGNED_QUERY, headers, now=now)
            pytest.fail(why)
    # what the long way accepts (case and spaces are canonicalised) is still accepted
    assert check("GET", b"/test.txt", PRESIGNED_QUERY, [(b"Host", b" examplebucket.s3.amazonaws.com ")], now=now)
