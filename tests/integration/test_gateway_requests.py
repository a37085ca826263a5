"""Everyday request details against one gateway and a real cache node (session
nats-server, file origin), served by uvicorn as the service serves it
(:func:`edgecache.gateway.service.asgi`): connections after early errors, SigV2, request
headers, bad input. One stack for the module."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import random
import re
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.exceptions
import httpx
import nats
import pytest
import pytest_asyncio

from edgecache.cachenode.service import start_node
from edgecache.common.config import load_config
from edgecache.gateway.app import create_app
from edgecache.gateway.httpprotocol import protocol_class
from edgecache.gateway.service import asgi
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving

AK, SK = "AKIAREQUESTDETAILS", "request-details-secret"
DOMAIN = "s3.localhost"
HEAD_TIMEOUT_S = BODY_IDLE_TIMEOUT_S = 1.0


@dataclass
class Gateway:
    url: str
    port: int

    def s3(self, **config: Any) -> Any:
        style = config.pop("addressing_style", "path")
        endpoint = config.pop("endpoint_url", self.url)
        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": style}, retries={"total_max_attempts": 1}, **config
            ),
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gateway(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    data_dir: Path = tmp_path_factory.mktemp("requests")
    config = load_config(
        env={},
        overrides={
            "data_dir": str(data_dir),
            "nats": {"url": nats_server.url, "request_timeout_s": 10.0},
            "cachenode": {"chunk_bytes": 1024 * 1024, "node_id": f"req-{secrets.token_hex(3)}"},
            "gateway": {"access_key": AK, "secret_key": SK, "domain": DOMAIN},
        },
    )
    async with AsyncExitStack() as stack:
        await start_node(config, stack)
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.drain)
        app = asgi(create_app(config, nc))
        protocol = protocol_class(HEAD_TIMEOUT_S, BODY_IDLE_TIMEOUT_S)
        url = await stack.enter_async_context(serving(app, http=protocol))
        yield Gateway(url, int(url.rsplit(":", 1)[1]))


@pytest.fixture
def bucket() -> str:
    return f"req-{secrets.token_hex(6)}"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def error_code(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        fn(*args, **kwargs)
    return info.value.response["Error"]["Code"]


# -- raw HTTP/1.1 on one socket -----------------------------------------------------------------
def signed(
    gw: Gateway,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    v2: bool = False,
) -> bytes:
    """A signed request (botocore's SigV4 signer, or its SigV2 one, which signs header
    values as UTF-8 and so lets them hold any text) as the bytes of an HTTP/1.1 message,
    body included."""
    request = botocore.awsrequest.AWSRequest(
        method=method, url=f"{gw.url}{path}", data=body, headers=headers or {}
    )
    credentials = botocore.credentials.Credentials(AK, SK)
    if v2:
        botocore.auth.HmacV1Auth(credentials).add_auth(request)
    else:
        if request.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
            request.context["checksum"] = {"request_algorithm": {"in": "trailer"}}  # that mode
        botocore.auth.S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    if (body or method == "PUT") and "Transfer-Encoding" not in request.headers:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def read_response(sock: socket.socket, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed; no body after a HEAD) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a whole response head: {data!r}")
        data += piece
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return int(status_line.split()[1]), headers, rest[:length]


def raw_exchange(gw: Gateway, *messages: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send each message on one connection, reading one response after each."""
    out = []
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        for message in messages:
            sock.sendall(message)
            out.append(read_response(sock, head=message.startswith(b"HEAD ")))
    return out


# == a failed PUT does not poison the connection =================================================
async def test_boto3_keeps_working_after_an_early_rejected_put(
    gateway: Gateway, bucket: str
) -> None:
    s3 = gateway.s3()

    def run() -> None:
        s3.create_bucket(Bucket=bucket)
        for _ in range(3):  # boto3 sends Expect: 100-continue and so never the body
            code = error_code(s3.put_object, Bucket=f"{bucket}-missing", Key="k", Body=b"x" * 1000)
            assert code == "NoSuchBucket"
            code = error_code(s3.put_object, Bucket=bucket, Key="k", Body=b"x", ContentMD5="bad")
            assert code == "InvalidDigest"
            s3.put_object(Bucket=bucket, Key="k", Body=b"after")
            assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"after"

    await call(run)


async def test_an_early_answer_to_expect_100_closes_the_connection(gateway: Gateway) -> None:
    put = signed(gateway, "PUT", "/no-such-bucket-here/k", headers={"Expect": "100-continue"})
    put = put.replace(b"Content-Length: 0", b"Content-Length: 5")

    def run() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(put)  # the body never follows: the client waits for 100 Continue
            status, headers, body = read_response(sock)
            assert status == 404 and b"<Code>NoSuchBucket</Code>" in body
            assert headers["connection"] == "close"
            assert sock.recv(1024) == b""  # closed, not left to parse the next request

    await call(run)


async def test_an_early_answer_drains_a_body_that_was_sent(gateway: Gateway, bucket: str) -> None:
    body = b"y" * 50_000
    put = signed(gateway, "PUT", f"/{bucket}-missing/k").replace(
        b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
    )
    answers = await call(
        raw_exchange,
        gateway,
        put + body,
        signed(gateway, "GET", "/"),
        b"PUT /x/y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",  # unsigned
        signed(gateway, "GET", "/"),
    )
    (s1, h1, b1), (s2, _, b2), (s3, _, b3), (s4, _, b4) = answers
    assert (s1, s2, s3, s4) == (404, 200, 403, 200)
    assert "connection" not in h1
    assert b"NoSuchBucket" in b1 and b"ListAllMyBucketsResult" in b2 and b4 == b2
    assert b"<Code>AccessDenied</Code>" in b3


# == SigV2 =======================================================================================
def fetch(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """One request with the standard library's client (no signing of its own)."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:  # else urllib sends a form Content-Type, which SigV2 signs
        request.add_header("Content-Type", "")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_sigv2_header_and_presigned_urls(gateway: Gateway, bucket: str) -> None:
    v2 = gateway.s3(signature_version="s3")  # Authorization: AWS key:signature

    def run() -> None:
        v2.create_bucket(Bucket=bucket)
        v2.put_object(Bucket=bucket, Key="dir/ü k+~.txt", Body=b"v2 body", Metadata={"a": "b"})
        got = v2.get_object(Bucket=bucket, Key="dir/ü k+~.txt", ResponseContentType="text/x-v2")
        assert got["Body"].read() == b"v2 body" and got["ContentType"] == "text/x-v2"
        assert [o["Key"] for o in v2.list_objects(Bucket=bucket)["Contents"]] == ["dir/ü k+~.txt"]
        # boto3's default presigned URL is SigV2 (AWSAccessKeyId, Expires, Signature)
        presigner = gateway.s3()
        url = presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "dir/ü k+~.txt"}, ExpiresIn=60
        )
        assert "AWSAccessKeyId=" in url and "Signature=" in url
        assert fetch(url) == (200, b"v2 body")
        status, body = fetch(url.replace("Signature=", "Signature=A"))
        assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
        expired = presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "dir/ü k+~.txt"}, ExpiresIn=-1
        )
        status, body = fetch(expired)
        assert status == 403 and b"Request has expired" in body
        put_url = presigner.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=60
        )
        assert fetch(put_url, "PUT", b"uploaded")[0] == 200
        assert v2.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded"
        stranger = boto3.client(
            "s3",
            endpoint_url=gateway.url,
            aws_access_key_id="AKIANOBODY",
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                signature_version="s3",
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
            ),
        )
        assert error_code(stranger.list_buckets) == "InvalidAccessKeyId"

    await call(run)


# == virtual-hosted style ========================================================================
async def test_virtual_hosted_style(
    gateway: Gateway, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:  # *.s3.localhost → loopback
        if isinstance(host, str) and (host == DOMAIN or host.endswith("." + DOMAIN)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    endpoint = f"http://{DOMAIN}:{gateway.port}"
    v4 = gateway.s3(addressing_style="virtual", endpoint_url=endpoint)
    v2 = gateway.s3(addressing_style="virtual", endpoint_url=endpoint, signature_version="s3")

    def run() -> None:
        v4.create_bucket(Bucket=bucket)
        v4.put_object(Bucket=bucket, Key="a/b c", Body=b"virtual")
        assert v2.get_object(Bucket=bucket, Key="a/b c")["Body"].read() == b"virtual"
        assert [o["Key"] for o in v4.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b c"]
        # the same objects path-style
        assert gateway.s3().get_object(Bucket=bucket, Key="a/b c")["Body"].read() == b"virtual"
        assert error_code(v4.head_bucket, Bucket=f"{bucket}-none") == "404"

    await call(run)


# == browser POST uploads ========================================================================
def post_form(
    url: str, fields: dict[str, str], file: bytes, filename: str = "photo.jpg"
) -> httpx.Response:
    """The form as a browser sends it: the fields, then the file."""
    return httpx.post(url, data=fields, files={"file": (filename, file, "image/jpeg")}, timeout=10)


async def test_post_uploads_with_sigv4_and_sigv2_policies(gateway: Gateway, bucket: str) -> None:
    s3 = gateway.s3()

    def run() -> None:
        s3.create_bucket(Bucket=bucket)
        post = gateway.s3(signature_version="s3v4").generate_presigned_post(
            bucket,
            "uploads/${filename}",
            Fields={
                "success_action_status": "201",
                "Content-Type": "image/jpeg",
                "x-amz-meta-who": "me",
            },
            Conditions=[
                {"success_action_status": "201"},
                ["starts-with", "$Content-Type", "image/"],
                {"x-amz-meta-who": "me"},
                ["content-length-range", 1, 1000],
            ],
            ExpiresIn=60,
        )
        assert post["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
        answer = post_form(post["url"], post["fields"], b"jpeg bytes", "C:\\dir\\photo.jpg")
        assert answer.status_code == 201, answer.text
        assert "<Key>uploads/photo.jpg</Key>" in answer.text and answer.headers["etag"]
        got = s3.get_object(Bucket=bucket, Key="uploads/photo.jpg")
        assert got["Body"].read() == b"jpeg bytes"
        assert (got["ContentType"], got["Metadata"]) == ("image/jpeg", {"who": "me"})

        too_big = post_form(post["url"], post["fields"], b"x" * 1001, "big.jpg")
        assert too_big.status_code == 400 and "<Code>EntityTooLarge</Code>" in too_big.text
        assert error_code(s3.head_object, Bucket=bucket, Key="uploads/big.jpg") == "404"
        extra = post_form(post["url"], {**post["fields"], "cache-control": "no"}, b"x", "e.jpg")
        assert extra.status_code == 403 and "Extra input fields: cache-control" in extra.text
        wrong = post_form(post["url"], {**post["fields"], "Content-Type": "text/html"}, b"x")
        assert wrong.status_code == 403 and "Policy Condition failed" in wrong.text
        forged = post_form(post["url"], {**post["fields"], "x-amz-signature": "0" * 64}, b"x")
        assert forged.status_code == 403 and "SignatureDoesNotMatch" in forged.text
        no_file = httpx.post(
            post["url"], data=post["fields"], files={"other": ("a", b"a")}, timeout=10
        )
        assert no_file.status_code == 400 and "IncorrectNumberOfFilesInPostRequest" in no_file.text

        expired = gateway.s3(signature_version="s3v4").generate_presigned_post(
            bucket, "late", ExpiresIn=-5
        )
        late = post_form(expired["url"], expired["fields"], b"x")
        assert late.status_code == 403 and "Policy expired" in late.text

        v2 = s3.generate_presigned_post(bucket, "v2-key", ExpiresIn=60)  # boto3's default: SigV2
        assert "signature" in v2["fields"] and "AWSAccessKeyId" in v2["fields"]
        answer = post_form(v2["url"], v2["fields"], b"v2 form")
        assert answer.status_code == 204, answer.text
        assert s3.get_object(Bucket=bucket, Key="v2-key")["Body"].read() == b"v2 form"

    await call(run)


# == request details =============================================================================
async def test_request_details(gateway: Gateway, bucket: str) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="kept", Body=b"kept")
    # us-east-1 answers its owner's re-creation with 200, and the bucket keeps its objects
    again = await call(s3.create_bucket, Bucket=bucket)
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (await call(s3.get_object, Bucket=bucket, Key="kept"))["Body"].read() == b"kept"

    # Content-Encoding other than aws-chunked is kept exactly as sent
    await call(s3.put_object, Bucket=bucket, Key="enc", Body=b"z", ContentEncoding="gzip, br")
    assert (await call(s3.head_object, Bucket=bucket, Key="enc"))["ContentEncoding"] == "gzip, br"

    value = "héllo ✓ 日本"  # user metadata in UTF-8 round-trips byte for byte
    chunked = signed(
        gateway, "PUT", f"/{bucket}/nolength", headers={"Transfer-Encoding": "chunked"}
    )
    answers = await call(
        raw_exchange,
        gateway,
        signed(gateway, "PUT", f"/{bucket}/utf8", b"u", {"x-amz-meta-name": value}, v2=True),
        signed(gateway, "HEAD", f"/{bucket}/utf8", v2=True),
        b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: \r\n\r\n",
        chunked + b"5\r\nhello\r\n0\r\n\r\n",
    )
    (put, _, _), (head, head_headers, _), (empty_auth, _, denied), (nolength, _, missing) = answers
    assert (put, head, empty_auth, nolength) == (200, 200, 403, 411)
    assert head_headers["x-amz-meta-name"].encode("latin-1") == value.encode("utf-8")
    assert b"<Code>AccessDenied</Code>" in denied
    assert b"<Code>MissingContentLength</Code>" in missing
    assert await call(error_code, s3.head_object, Bucket=bucket, Key="nolength") == "404"


# == bad input: the fuzz run's findings, each its 4xx ===========================================
DIGITS = "9" * 5000
PRESIGNED_LONG_EXPIRES = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAREQUESTDETAILS%2F20261130%2Fus-east-1"
    f"%2Fs3%2Faws4_request&X-Amz-Date=20261130T000000Z&X-Amz-Expires={DIGITS}"
    "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64
)


async def test_bad_input_gets_its_s3_error(gateway: Gateway, bucket: str) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket=bucket)
    chunked_headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "3",
    }
    one_byte_chunks = b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"
    complete = f"<CompleteMultipartUpload><Part><PartNumber>{DIGITS}</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>"
    cases = [
        (b"GET / HTTP/1.1\r\nHost: h\r\nDate: Fri, 31 Dec 9999 23:59:59 -1200\r\n"
         b"Authorization: AWS AKIAREQUESTDETAILS:c2ln\r\n\r\n", 403, "AccessDenied"),
        (f"GET /{bucket}/k?{PRESIGNED_LONG_EXPIRES} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
         400, "AuthorizationQueryParametersError"),
        (signed(gateway, "PUT", f"/{bucket}/k?partNumber={DIGITS}&uploadId=u", b"x"), 400, "InvalidArgument"),
        (signed(gateway, "GET", f"/{bucket}/k?uploadId=u&part-number-marker={DIGITS}"), 400, "InvalidArgument"),
        (signed(gateway, "PUT", f"/{bucket}/k", b"x", {**chunked_headers, "x-amz-decoded-content-length": DIGITS}),
         400, "InvalidArgument"),
        (signed(gateway, "POST", f"/{bucket}/k?uploadId=u", complete.encode()), 400, "InvalidArgument"),
        (signed(gateway, "GET", "/bad%20name/k"), 400, "InvalidBucketName"),
        (signed(gateway, "GET", "/nul%00name/k"), 400, "InvalidBucketName"),
        (signed(gateway, "GET", "/b%C3%BCcket/k"), 400, "InvalidBucketName"),
        (signed(gateway, "PUT", f"/{bucket}/big-header", b"x", {"Content-Disposition": "a" * 9000}),
         400, "RequestHeaderSectionTooLarge"),
        (signed(gateway, "PUT", f"/{bucket}/small-chunks", one_byte_chunks, chunked_headers),
         403, "InvalidChunkSizeError"),
    ]  # fmt: skip
    for message, status, code in cases:
        [(got, _, body)] = await call(raw_exchange, gateway, message)
        assert (got, f"<Code>{code}</Code>" in body.decode()) == (status, True), (
            message[:80],
            body,
        )
    for key in ("big-header", "small-chunks"):  # nothing stored from a rejected request
        assert await call(error_code, s3.head_object, Bucket=bucket, Key=key) == "404"


async def test_a_slow_or_huge_request_head_or_a_stalled_body_gets_an_s3_error(
    gateway: Gateway, bucket: str
) -> None:
    await call(gateway.s3().create_bucket, Bucket=bucket)
    stalled = signed(gateway, "PUT", f"/{bucket}/stalled", b"0123456789")[:-7]  # 3 of 10 bytes

    def run() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(stalled)  # ... and the rest never comes
            status, headers, body = read_response(sock)
            assert (status, headers["connection"]) == (400, "close")
            assert b"<Code>RequestTimeout</Code>" in body
        assert error_code(gateway.s3().head_object, Bucket=bucket, Key="stalled") == "404"
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")  # ... and nothing more
            started = time.monotonic()
            status, headers, body = read_response(sock)
            assert HEAD_TIMEOUT_S <= time.monotonic() - started < HEAD_TIMEOUT_S + 5
            assert (status, headers["connection"]) == (400, "close")
            assert b"<Code>RequestTimeout</Code>" in body
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            )
            status, _, body = read_response(sock)
            assert status == 400 and b"<Code>RequestHeaderSectionTooLarge</Code>" in body
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 400 and b"<Code>InvalidRequest</Code>" in body

    await call(run)


# == a bounded fuzz run against the live gateway ==================================================
FUZZ_REQUESTS = 300


def _mutate(message: bytes, rng: random.Random) -> bytes:
    """One random damage to an HTTP message: what the fuzz run that found the 500s did."""
    head, sep, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    choice = rng.randrange(9)
    if choice == 0:  # a byte flipped anywhere
        data = bytearray(message)
        data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 1:  # a number grown to thousands of digits
        return re.sub(
            rb"\d+", lambda m: m.group() * 900 if rng.random() < 0.3 else m.group(), message
        )
    if choice == 2:  # a header value replaced by junk
        i = rng.randrange(1, len(lines))
        name = lines[i].partition(b":")[0]
        junk = rng.choice(
            [
                b"\x00",
                b"\xff\xfe",
                b"9" * 5000,
                b"a" * 10000,
                b"",
                b"=?UTF-8?B?AA==?=",
                "ü".encode(),
            ]
        )
        lines[i] = name + b": " + junk
    elif choice == 3:  # a header dropped
        del lines[rng.randrange(1, len(lines))]
    elif choice == 4:  # a header repeated
        lines.insert(1, lines[rng.randrange(1, len(lines))])
    elif choice == 5:  # the target damaged
        method, _, rest = lines[0].partition(b" ")
        target, _, version = rest.rpartition(b" ")
        target = rng.choice(
            [
                target + b"%",
                target.replace(b"/", b"/%00", 1),
                b"/" + b"a" * 300 + target,
                target + b"?partNumber=" + b"9" * 5000 + b"&uploadId=x",
                target + b"?uploads&delete",
            ]
        )
        lines[0] = b" ".join((method, target, version))
    elif choice == 6:  # the body cut short or grown
        body = body[: rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + b"tail"
    elif choice == 7:  # a Date from the far future
        lines.append(b"Date: Fri, 31 Dec 9999 23:59:59 -1200")
    else:  # the method changed
        lines[0] = (
            rng.choice([b"PATCH", b"OPTIONS", b"POST", b"DELETE", b"BREW"])
            + lines[0][lines[0].index(b" ") :]
        )
    return b"\r\n".join(lines) + sep + body


def _send_one(gw: Gateway, message: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """Send ``message``; the answer, or ``None`` if the gateway closed without one (what
    uvicorn does to a message it cannot frame). A hang fails (socket timeout)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(message)
        try:
            return read_response(sock, head=message.startswith(b"HEAD "))
        except ConnectionError:
            return None


async def test_fuzz_run_gets_no_5xx_and_stores_nothing_rejected(
    gateway: Gateway, bucket: str
) -> None:
    s3 = gateway.s3()
    await call(s3.create_bucket, Bucket=bucket)
    await call(s3.put_object, Bucket=bucket, Key="fuzz/existing", Body=b"e")
    upload = (await call(s3.create_multipart_upload, Bucket=bucket, Key="fuzz/mp"))["UploadId"]
    complete = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>abc</ETag></Part></CompleteMultipartUpload>"
    templates = [
        lambda i: signed(gateway, "PUT", f"/{bucket}/fuzz/put-{i}", b"body %d" % i,
                         {"x-amz-meta-n": str(i), "Content-MD5": "", "Content-Type": "text/plain"}),
        lambda i: signed(gateway, "PUT", f"/{bucket}/fuzz/part-{i}?partNumber=1&uploadId={upload}", b"p"),
        lambda i: signed(gateway, "GET", f"/{bucket}/fuzz/existing", headers={"Range": "bytes=0-0"}),
        lambda i: signed(gateway, "GET", f"/{bucket}?list-type=2&prefix=fuzz/&max-keys=5"),
        lambda i: signed(gateway, "HEAD", f"/{bucket}/fuzz/existing", headers={"If-None-Match": '"x"'}),
        lambda i: signed(gateway, "POST", f"/{bucket}/fuzz/mp?uploadId={upload}", complete),
        lambda i: signed(gateway, "POST", f"/{bucket}?delete",
                         b"<Delete><Object><Key>fuzz/none</Key></Object></Delete>"),
        lambda i: signed(gateway, "PUT", f"/{bucket}/fuzz/chunked-{i}", b"3\r\nabc\r\n0\r\n\r\n", {
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "3"}),
    ]  # fmt: skip
    rng = random.Random(
        int(os.environ.get("EDGECACHE_FUZZ_SEED", "20261130"))
    )  # another seed: another run
    accepted_puts: set[str] = set()

    messages = [_mutate(templates[i % len(templates)](i), rng) for i in range(FUZZ_REQUESTS)]

    def run() -> None:
        statuses: dict[int, int] = {}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # bodies cut short wait 1 s each
            answers = list(pool.map(functools.partial(_send_one, gateway), messages))
        for message, answer in zip(messages, answers, strict=True):
            status = answer[0] if answer else 0
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (message[:300], answer)
            if answer and status >= 400 and not message.startswith(b"HEAD "):
                assert answer[2].startswith(b"<?xml") and b"<Code>" in answer[2], (
                    message[:300],
                    answer,
                )
            if status == 200 and message.startswith(b"PUT "):
                target = message.split(b" ", 2)[1].decode("latin-1")
                accepted_puts.add(urllib.parse.unquote(target.partition("?")[0].split("/", 2)[2]))
        stored = {
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="fuzz/").get("Contents", [])
        }
        assert stored - {"fuzz/existing"} <= accepted_puts  # nothing stored from a rejected request
        assert (
            sum(n for s, n in statuses.items() if s >= 400) > FUZZ_REQUESTS // 2
        )  # mostly damaged
        print("fuzz statuses", sorted(statuses.items()))

    await call(run)
