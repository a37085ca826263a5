"""The app end to end in-process (Litestar's AsyncTestClient), with requests signed by
botocore and the real SigV4 verifier; the ``s3.*`` client is replaced by a recorder that
answers what each test says (the cache node is not under test here)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from edgecache.common import errors, wire
from edgecache.common.config import load_config
from edgecache.gateway.app import create_app

AK, SK, REGION = "AKIDUNIT", "unit-secret", "us-east-1"
BASE = "http://testserver.local"


class Recorder:
    """Stands in for EdgecacheClient: records requests, answers from ``replies``."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.bodies: list[bytes] = []
        self.trailers: list[dict[str, str]] = []
        self.replies: dict[type, Any] = {}

    def _answer(self, request: Any) -> Any:
        self.requests.append(request)
        reply = self.replies.get(type(request), wire.Ok())
        if isinstance(reply, BaseException):
            raise reply
        return reply

    timeout_s = 30.0

    async def request(self, request: Any, *, timeout_s: float | None = None) -> Any:
        return self._answer(request)

    async def put_object(self, request: Any, body: Any, *, trailers: Any = None) -> Any:
        self.bodies.append(b"".join([piece async for piece in body]))
        self.trailers.append(dict(trailers or {}))
        return self._answer(request)

    async def get_object(self, request: Any) -> tuple[Any, AsyncIterator[bytes]]:
        info, data = self._answer(request)

        async def body() -> AsyncIterator[bytes]:
            yield data

        return info, body()


class _Signer(S3SigV4Auth):
    """botocore's S3 signer, signing the ``x-amz-content-sha256`` a test asks for."""

    def __init__(self, content_sha256: str | None) -> None:
        super().__init__(Credentials(AK, SK), "s3", REGION)
        self._content_sha256 = content_sha256

    def payload(self, request: AWSRequest) -> str:
        return self._content_sha256 or super().payload(request)


def signed(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, str]:
    content_sha256 = headers.pop("x-amz-content-sha256", None)
    request = AWSRequest(method=method, url=BASE + path, data=body, headers=headers)
    _Signer(content_sha256).add_auth(request)
    return dict(request.headers)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def http(recorder: Recorder) -> AsyncIterator[AsyncTestClient]:
    config = load_config(
        env={}, overrides={"gateway": {"access_key": AK, "secret_key": SK, "region": REGION}}
    )
    async with AsyncTestClient(create_app(config, None, client=recorder)) as client:  # type: ignore[arg-type]
        yield client


async def send(http: AsyncTestClient, method: str, path: str, body: bytes = b"", **headers: str):
    return await http.request(
        method, path, content=body, headers=signed(method, path, body, **headers)
    )


def error_code(response) -> str:
    import xml.etree.ElementTree as ET

    return ET.fromstring(response.content).findtext("Code") or ""


def common_headers_ok(response) -> None:
    assert len(response.headers["x-amz-request-id"]) == 16
    assert response.headers["x-amz-id-2"]
    assert response.headers["server"] == "edgecache"


async def test_unsigned_is_denied_before_anything(
    http: AsyncTestClient, recorder: Recorder
) -> None:
    for method, path in [("GET", "/"), ("GET", "/b?acl"), ("PUT", "/Bad_Name"), ("PATCH", "/b")]:
        response = await http.request(method, path)
        assert response.status_code == 403, (method, path)
        assert error_code(response) == "AccessDenied"
        assert response.headers["content-type"] == "application/xml"
        common_headers_ok(response)
    assert recorder.requests == []


async def test_wrong_key_and_secret(http: AsyncTestClient) -> None:
    headers = signed("GET", "/")
    response = await http.get(
        "/", headers={**headers, "Authorization": headers["Authorization"].replace(AK, "OTHER")}
    )
    assert error_code(response) == "InvalidAccessKeyId"
    tampered = headers["Authorization"][:-4] + "0000"
    response = await http.get("/", headers={**headers, "Authorization": tampered})
    assert (response.status_code, error_code(response)) == (403, "SignatureDoesNotMatch")


async def test_error_xml_fields(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.GetObject] = errors.NoSuchKey()
    response = await send(http, "GET", "/b/dir%2Fk")
    assert response.status_code == 404
    import xml.etree.ElementTree as ET

    root = ET.fromstring(response.content)
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("Message") == "The specified key does not exist."
    assert root.findtext("Resource") == "/b/dir/k"
    assert root.findtext("RequestId") == response.headers["x-amz-request-id"]
    assert recorder.requests[0].key == "dir/k"


async def test_head_errors_have_no_body(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.HeadObject] = errors.NoSuchKey()
    response = await send(http, "HEAD", "/b/k")
    assert response.status_code == 404
    assert response.content == b""
    common_headers_ok(response)


async def test_503_has_retry_after(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.ListBuckets] = errors.ServiceUnavailable("no node", retry_after_s=3)
    response = await send(http, "GET", "/")
    assert (response.status_code, error_code(response)) == (503, "ServiceUnavailable")
    assert response.headers["retry-after"] == "3"


async def test_unexpected_exception_is_500_without_traceback(
    http: AsyncTestClient, recorder: Recorder
) -> None:
    recorder.replies[wire.ListBuckets] = RuntimeError("secret internals")
    with capture_logs() as logs:
        response = await send(http, "GET", "/")
    assert (response.status_code, error_code(response)) == (500, "InternalError")
    assert b"secret internals" not in response.content
    assert b"Traceback" not in response.content
    failed = [e for e in logs if e["event"] == "request.failed"]
    assert failed and failed[0]["exc_info"] is True
    line = [e for e in logs if e["event"] == "request"][0]
    assert line["status"] == 500 and line["error"] == "InternalError"


async def test_not_implemented_after_auth(http: AsyncTestClient) -> None:
    for method, path in [("GET", "/b?versioning"), ("PUT", "/b/k?retention"), ("PUT", "/b?acl")]:
        response = await send(http, method, path)
        assert (response.status_code, error_code(response)) == (501, "NotImplemented"), path
    response = await send(http, "PUT", "/b/k?tagging", **{"x-amz-copy-source": "/b/other"})
    assert (response.status_code, error_code(response)) == (501, "NotImplemented")


async def test_method_not_allowed(http: AsyncTestClient) -> None:
    response = await send(http, "PATCH", "/b/k")
    assert (response.status_code, error_code(response)) == (405, "MethodNotAllowed")
    response = await send(http, "PUT", "/")
    assert (response.status_code, error_code(response)) == (405, "MethodNotAllowed")
    response = await http.request("TRACE", "/b/k")  # refused by the framework itself
    assert (response.status_code, error_code(response)) == (405, "MethodNotAllowed")
    common_headers_ok(response)


async def test_create_bucket(http: AsyncTestClient, recorder: Recorder) -> None:
    response = await send(http, "PUT", "/Bad_Name")
    assert (response.status_code, error_code(response)) == (400, "InvalidBucketName")
    response = await send(http, "PUT", "/good-name")
    assert response.status_code == 200
    assert response.headers["location"] == "/good-name"
    assert recorder.requests == [wire.CreateBucket(bucket="good-name")]
    config = (
        b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint>"
        b"</CreateBucketConfiguration>"
    )
    response = await send(http, "PUT", "/other-name", config)
    assert (response.status_code, error_code(response)) == (
        400,
        "IllegalLocationConstraintException",
    )
    response = await send(http, "PUT", "/other-name", b"<oops")
    assert (response.status_code, error_code(response)) == (400, "MalformedXML")


async def test_put_object_maps_headers(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.PutObject] = wire.ObjectInfo(
        bucket="b",
        key="k",
        size=11,
        etag="5eb63bbbe01eeed093cb22bb8f5acdc3",
        last_modified=0,
        checksums={"crc32": "DUoRhQ=="},
    )
    body = b"hello world"
    with capture_logs() as logs:
        response = await send(
            http,
            "PUT",
            "/b/a%2Fb%20c",
            body,
            **{
                "Content-Type": "text/plain",
                "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
                "x-amz-checksum-crc32": "DUoRhQ==",
                "x-amz-meta-Color": "blue",
                "Cache-Control": "no-cache",
            },
        )
    assert response.status_code == 200, response.content
    assert response.headers["etag"] == '"5eb63bbbe01eeed093cb22bb8f5acdc3"'
    assert response.headers["x-amz-checksum-crc32"] == "DUoRhQ=="
    assert recorder.requests == [
        wire.PutObject(
            bucket="b",
            key="a/b c",
            size=11,
            content_type="text/plain",
            metadata={"color": "blue"},
            headers={"cache-control": "no-cache"},
            content_md5="XrY7u+Ae7tCTyyK7j1rNww==",
            checksums={"crc32": "DUoRhQ=="},
        )
    ]
    assert recorder.bodies == [body]
    line = [e for e in logs if e["event"] == "request"][0]
    assert line["operation"] == "PutObject"
    assert (line["bucket"], line["key"], line["status"], line["bytes_in"]) == (
        "b",
        "a/b c",
        200,
        11,
    )
    assert line["duration_ms"] >= 0


async def test_put_object_bad_payload_hash(http: AsyncTestClient, recorder: Recorder) -> None:
    headers = signed("PUT", "/b/k", b"hello")
    response = await http.put("/b/k", content=b"HELLO", headers=headers)
    assert (response.status_code, error_code(response)) == (400, "XAmzContentSHA256Mismatch")


async def test_put_object_needs_a_length(http: AsyncTestClient, recorder: Recorder) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello"

    headers = signed("PUT", "/b/k", b"", **{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    headers.pop("Content-Length", None)
    response = await http.put("/b/k", content=chunks(), headers=headers)
    assert (response.status_code, error_code(response)) == (411, "MissingContentLength")
    assert recorder.requests == []


async def test_aws_chunked_upload_with_trailer(http: AsyncTestClient, recorder: Recorder) -> None:
    """The https shape of boto3's PutObject: unsigned aws-chunked body with a crc32 trailer."""
    recorder.replies[wire.PutObject] = wire.ObjectInfo(
        bucket="b", key="k", size=11, etag="e", last_modified=0
    )
    body = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    response = await send(
        http,
        "PUT",
        "/b/k",
        body,
        **{
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "Content-Encoding": "aws-chunked",
            "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-decoded-content-length": "11",
        },
    )
    assert response.status_code == 200, response.content
    assert recorder.bodies == [b"hello world"]
    assert recorder.trailers == [{"crc32": "DUoRhQ=="}]
    assert recorder.requests[0].size == 11
    assert recorder.requests[0].headers == {}  # aws-chunked is not a stored encoding


async def test_get_object_headers_and_range(http: AsyncTestClient, recorder: Recorder) -> None:
    info = wire.ObjectInfo(
        bucket="b",
        key="k",
        size=100,
        etag="abc",
        last_modified=1_700_000_000,
        content_type="text/plain",
        metadata={"m": "1"},
        range_first=10,
        range_last=14,
        checksums={"crc32": "AAAAAA=="},
    )
    recorder.replies[wire.GetObject] = (info, b"01234")
    response = await send(http, "GET", "/b/k?response-content-type=a%2Fb", Range="bytes=10-14")
    assert response.status_code == 206
    assert response.content == b"01234"
    assert response.headers["content-range"] == "bytes 10-14/100"
    assert response.headers["content-length"] == "5"
    assert response.headers["content-type"] == "a/b"
    assert response.headers["x-amz-meta-m"] == "1"
    assert response.headers["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert "x-amz-checksum-crc32" not in response.headers
    assert recorder.requests[-1].range == "bytes=10-14"
    # several ranges: S3 ignores the header and sends the whole object
    await send(http, "GET", "/b/k", Range="bytes=0-1,5-6")
    assert recorder.requests[-1].range is None


async def test_get_object_checksum_mode(http: AsyncTestClient, recorder: Recorder) -> None:
    info = wire.ObjectInfo(
        bucket="b", key="k", size=11, etag="abc", last_modified=0, checksums={"crc32": "DUoRhQ=="}
    )
    recorder.replies[wire.GetObject] = (info, b"hello world")
    response = await send(http, "GET", "/b/k", **{"x-amz-checksum-mode": "ENABLED"})
    assert response.status_code == 200
    assert response.headers["x-amz-checksum-crc32"] == "DUoRhQ=="
    assert response.headers["accept-ranges"] == "bytes"


async def test_list_objects_v2_params(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.ListObjects] = wire.ListObjectsResult(
        contents=[wire.ObjectSummary(key="a b", size=1, etag="e", last_modified=0)]
    )
    response = await send(
        http,
        "GET",
        "/b?list-type=2&prefix=p%2Fq&delimiter=%2F&max-keys=5000&start-after=s&encoding-type=url",
    )
    assert response.status_code == 200
    assert b"<Key>a+b</Key>" in response.content
    assert recorder.requests == [
        wire.ListObjects(bucket="b", prefix="p/q", delimiter="/", max_keys=1000, start_after="s")
    ]
    response = await send(http, "GET", "/b?list-type=2&max-keys=-1")
    assert (response.status_code, error_code(response)) == (400, "InvalidArgument")
    response = await send(http, "GET", "/b?list-type=2&encoding-type=base64")
    assert (response.status_code, error_code(response)) == (400, "InvalidArgument")


async def test_complete_multipart(http: AsyncTestClient, recorder: Recorder) -> None:
    recorder.replies[wire.CompleteMultipartUpload] = wire.ObjectInfo(
        bucket="b", key="k y", size=1, etag="ff-2", last_modified=0
    )
    body = (
        b'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"a"</ETag></Part>'
        b'<Part><PartNumber>2</PartNumber><ETag>"b"</ETag></Part></CompleteMultipartUpload>'
    )
    response = await send(http, "POST", "/b/k%20y?uploadId=u1", body)
    assert response.status_code == 200, response.content
    assert b'<ETag>"ff-2"</ETag>' in response.content
    assert b"<Location>http://testserver.local/b/k%20y</Location>" in response.content
    assert recorder.requests[0].parts == [
        wire.CompletedPart(part_number=1, etag="a"),
        wire.CompletedPart(part_number=2, etag="b"),
    ]
    response = await send(http, "POST", "/b/k?uploadId=u1", b"<CompleteMultipartUpload/>")
    assert (response.status_code, error_code(response)) == (400, "MalformedXML")


async def test_upload_part_number_is_checked(http: AsyncTestClient) -> None:
    response = await send(http, "PUT", "/b/k?partNumber=0&uploadId=u", b"x")
    assert (response.status_code, error_code(response)) == (400, "InvalidArgument")
    response = await send(http, "PUT", "/b/k?partNumber=10001&uploadId=u", b"x")
    assert (response.status_code, error_code(response)) == (400, "InvalidArgument")


async def test_statuses(http: AsyncTestClient, recorder: Recorder) -> None:
    assert (await send(http, "DELETE", "/b/k")).status_code == 204
    assert (await send(http, "DELETE", "/b")).status_code == 204
    assert (await send(http, "DELETE", "/b/k?uploadId=u")).status_code == 204
    recorder.replies[wire.HeadBucket] = wire.BucketInfo(name="b", created=0)
    response = await send(http, "HEAD", "/b")
    assert response.status_code == 200
    assert response.headers["x-amz-bucket-region"] == REGION
    response = await send(http, "GET", "/b?location")
    assert response.status_code == 200
    assert b"LocationConstraint" in response.content
    recorder.replies[wire.CreateMultipartUpload] = wire.MultipartUpload(
        bucket="b", key="k", upload_id="u9"
    )
    response = await send(http, "POST", "/b/k?uploads")
    assert response.status_code == 200
    assert b"<UploadId>u9</UploadId>" in response.content


async def test_key_too_long(http: AsyncTestClient) -> None:
    response = await send(http, "GET", "/b/" + "k" * 1025)
    assert (response.status_code, error_code(response)) == (400, "KeyTooLongError")


def test_md5_in_fixture_is_right() -> None:
    import base64

    assert (
        base64.b64encode(hashlib.md5(b"hello world").digest()).decode()
        == "XrY7u+Ae7tCTyyK7j1rNww=="
    )


@pytest.mark.parametrize(
    ("region", "status", "code"),
    [("us-east-1", 200, None), ("eu-west-1", 409, "BucketAlreadyOwnedByYou")],
)
async def test_recreating_ones_own_bucket(region: str, status: int, code: str | None) -> None:
    recorder = Recorder()
    recorder.replies[wire.CreateBucket] = errors.BucketAlreadyOwnedByYou()
    config = load_config(
        env={}, overrides={"gateway": {"access_key": AK, "secret_key": SK, "region": region}}
    )
    request = AWSRequest(method="PUT", url=BASE + "/mine", data=b"")
    S3SigV4Auth(Credentials(AK, SK), "s3", region).add_auth(request)
    async with AsyncTestClient(create_app(config, None, client=recorder)) as client:  # type: ignore[arg-type]
        response = await client.request("PUT", "/mine", content=b"", headers=dict(request.headers))
    assert response.status_code == status
    if code:
        assert error_code(response) == code
    assert recorder.requests == [wire.CreateBucket(bucket="mine")]
