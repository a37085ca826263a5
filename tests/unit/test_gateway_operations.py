"""Routing: HTTP method + raw path + query → S3 operation and its parameters."""

from __future__ import annotations

import pytest

from edgecache.common.errors import InvalidURI
from edgecache.gateway import operations
from edgecache.gateway.operations import parse_query, route


@pytest.mark.parametrize(
    ("method", "path", "query", "name"),
    [
        ("GET", b"/", b"", "ListBuckets"),
        ("GET", b"/", b"x-id=ListBuckets", "ListBuckets"),
        ("PUT", b"/", b"", "MethodNotAllowed"),
        ("PUT", b"/b", b"", "CreateBucket"),
        ("PUT", b"/b/", b"", "CreateBucket"),
        ("HEAD", b"/b", b"", "HeadBucket"),
        ("DELETE", b"/b", b"", "DeleteBucket"),
        ("GET", b"/b", b"", "ListObjects"),
        ("GET", b"/b", b"prefix=a&marker=x", "ListObjects"),
        ("GET", b"/b", b"list-type=2&encoding-type=url", "ListObjectsV2"),
        ("GET", b"/b", b"location", "GetBucketLocation"),
        ("GET", b"/b", b"location=", "GetBucketLocation"),
        ("POST", b"/b", b"delete", "DeleteObjects"),
        ("GET", b"/b", b"versioning", "NotImplemented"),
        ("GET", b"/b", b"acl", "GetBucketAcl"),
        ("GET", b"/b/k", b"acl", "GetObjectAcl"),
        ("PUT", b"/b", b"acl", "NotImplemented"),
        ("GET", b"/b", b"uploads", "ListMultipartUploads"),
        ("GET", b"/b", b"uploads&prefix=a&key-marker=k", "ListMultipartUploads"),
        ("GET", b"/b", b"versions", "ListObjectVersions"),
        ("GET", b"/b", b"versions&key-marker=k&version-id-marker=null", "ListObjectVersions"),
        ("PUT", b"/b", b"policy", "NotImplemented"),
        ("DELETE", b"/b", b"cors", "NotImplemented"),
        ("PATCH", b"/b", b"", "MethodNotAllowed"),
        ("PUT", b"/b/k", b"", "PutObject"),
        ("PUT", b"/b/k", b"x-id=PutObject", "PutObject"),
        ("GET", b"/b/k", b"", "GetObject"),
        ("GET", b"/b/k", b"response-content-type=text/plain", "GetObject"),
        ("GET", b"/b/k", b"versionId=null", "GetObject"),
        ("GET", b"/b/k", b"versionId=3", "NotImplemented"),
        ("GET", b"/b/k", b"partNumber=1", "GetObject"),
        ("HEAD", b"/b/k", b"partNumber=2", "HeadObject"),
        ("GET", b"/b/k", b"partNumber=1&uploadId=u", "NotImplemented"),
        ("GET", b"/b/k", b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00", "GetObject"),
        ("HEAD", b"/b/k", b"", "HeadObject"),
        ("DELETE", b"/b/k", b"", "DeleteObject"),
        ("POST", b"/b/k", b"uploads", "CreateMultipartUpload"),
        ("POST", b"/b/k", b"uploadId=u", "CompleteMultipartUpload"),
        ("PUT", b"/b/k", b"partNumber=3&uploadId=u", "UploadPart"),
        ("PUT", b"/b/k", b"uploadId=u", "NotImplemented"),
        ("DELETE", b"/b/k", b"uploadId=u", "AbortMultipartUpload"),
        ("GET", b"/b/k", b"uploadId=u&max-parts=2", "ListParts"),
        ("GET", b"/b/k", b"tagging", "GetObjectTagging"),
        ("PUT", b"/b/k", b"tagging", "PutObjectTagging"),
        ("DELETE", b"/b/k", b"tagging&versionId=null", "DeleteObjectTagging"),
        ("GET", b"/b/k", b"retention", "NotImplemented"),
        ("PUT", b"/b/k", b"acl", "NotImplemented"),
        ("POST", b"/b/k", b"restore", "NotImplemented"),
        ("POST", b"/b/k", b"", "NotImplemented"),
        ("OPTIONS", b"/b/k", b"", "MethodNotAllowed"),
    ],
)
def test_route(method: str, path: bytes, query: bytes, name: str) -> None:
    assert route(method, path, query).name == name


def test_copy_is_not_taken_for_an_upload() -> None:
    assert route("PUT", b"/b/k", b"", copy_source=True).name == "CopyObject"
    assert route("PUT", b"/b/k", b"partNumber=1&uploadId=u", copy_source=True).name == "UploadPartCopy"
    op = route("PUT", b"/b/k", b"tagging", copy_source=True)
    assert (op.name, op.detail) == ("NotImplemented", "tagging")


def test_not_implemented_names_the_subresource() -> None:
    assert route("GET", b"/b", b"versioning").detail == "versioning"


@pytest.mark.parametrize(
    ("path", "bucket", "key"),
    [
        (b"/", "", ""),
        (b"/b", "b", ""),
        (b"/b/", "b", ""),
        (b"/b/k", "b", "k"),
        (b"/b/a/b/c", "b", "a/b/c"),
        (b"/b/a%2Fb", "b", "a/b"),  # %2F is a slash of the key
        (b"/b/a//b/", "b", "a//b/"),  # not normalised
        (b"/b//lead", "b", "/lead"),
        (b"/b/a+b", "b", "a+b"),  # + is literal in a path
        (b"/b/a%20b", "b", "a b"),
        (b"/b/%2541", "b", "%41"),  # decoded exactly once
        (b"/b/%C3%BC%E2%82%AC", "b", "ü€"),
        (b"/b/.", "b", "."),
        (b"/b/../x", "b", "../x"),
    ],
)
def test_target_is_decoded_once(path: bytes, bucket: str, key: str) -> None:
    op = route("GET", path, b"")
    assert (op.bucket, op.key) == (bucket, key)


def test_resource() -> None:
    assert route("GET", b"/", b"").resource == "/"
    assert route("GET", b"/b", b"").resource == "/b"
    assert route("GET", b"/b/a%2Fb", b"").resource == "/b/a/b"


@pytest.mark.parametrize("path", [b"/b/%FF", b"/b/%C3", b"b/k"])
def test_bad_targets(path: bytes) -> None:
    with pytest.raises(InvalidURI):
        route("GET", path, b"")


def test_parse_query() -> None:
    assert parse_query(b"") == {}
    assert parse_query(b"a=1&b&c=%2F&d=x+y&e=%20&&a=2") == {
        "a": "1",
        "b": "",
        "c": "/",
        "d": "x+y",
        "e": " ",
    }
    assert parse_query(b"prefix=%C3%BC") == {"prefix": "ü"}
    with pytest.raises(InvalidURI):
        parse_query(b"prefix=%FF")
    with pytest.raises(InvalidURI):
        parse_query(b"&".join(b"p%d=1" % i for i in range(100)))


def test_route_read_remembers_reads_and_routes_as_route_does():
    query = b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&x-id=GetObject"
    first = operations.route_read("GET", b"/b/k%2Fx", query)
    assert first == route("GET", b"/b/k%2Fx", query)
    assert first.key == "k/x" and first.query["X-Amz-Credential"] == "a/b"
    assert operations.route_read("GET", b"/b/k%2Fx", query) is first  # looked up, not routed
    assert operations.route_read("HEAD", b"/b/k%2Fx", query).name == "HeadObject"
    # PUT is routed every time: copy_source matters there
    assert operations.route_read("PUT", b"/b/k", b"", copy_source=True).name == "CopyObject"
    assert operations.route_read("PUT", b"/b/k", b"").name == "PutObject"
    # a target that cannot be routed raises every time
    for _ in range(2):
        with pytest.raises(InvalidURI):
            operations.route_read("GET", b"/b/%FF", b"")
    # bounded: the oldest goes first
    for i in range(operations._READS + 10):
        operations.route_read("GET", b"/b/k", b"n=%d" % i)
    assert len(operations._reads) == operations._READS
    # a long target is routed, not remembered
    long = b"p=" + b"a" * operations._READ_TARGET_BYTES
    assert operations.route_read("GET", b"/b/k", long).name == "GetObject"
    assert ("GET", b"/b/k", long, "") not in operations._reads
