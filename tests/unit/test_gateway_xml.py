"""S3 XML: every response body parsed back, and the untrusted request bodies."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import unquote_plus

import pytest

from edgecache.common import errors, wire
from edgecache.gateway import xml

N = "{" + xml.NS + "}"
T = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def parse(body: bytes) -> ET.Element:
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(body)


def texts(root: ET.Element, path: str) -> list[str]:
    return [e.text or "" for e in root.findall(path)]


def test_error() -> None:
    root = parse(xml.error("NoSuchKey", "The specified key does not exist.", "/b/k", "ABC123"))
    assert root.tag == "Error"  # S3 errors carry no namespace
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("Message") == "The specified key does not exist."
    assert root.findtext("Resource") == "/b/k"
    assert root.findtext("RequestId") == "ABC123"


def test_error_escapes() -> None:
    root = parse(xml.error("InvalidArgument", "a < b & c", "/b/<k>", "R"))
    assert root.findtext("Message") == "a < b & c"
    assert root.findtext("Resource") == "/b/<k>"


def test_list_buckets() -> None:
    body = xml.list_buckets_result(
        [wire.BucketInfo(name="a", created=T), wire.BucketInfo(name="b", created=0)], owner="me"
    )
    root = parse(body)
    assert root.tag == N + "ListAllMyBucketsResult"
    assert root.findtext(f"{N}Owner/{N}ID") == "me"
    assert texts(root, f"{N}Buckets/{N}Bucket/{N}Name") == ["a", "b"]
    assert texts(root, f"{N}Buckets/{N}Bucket/{N}CreationDate") == [
        "2023-11-14T22:13:20.250Z",
        "1970-01-01T00:00:00.000Z",
    ]


def test_location_constraint() -> None:
    assert parse(xml.location_constraint("us-east-1")).text is None
    root = parse(xml.location_constraint("eu-west-1"))
    assert (root.tag, root.text) == (N + "LocationConstraint", "eu-west-1")


RESULT = wire.ListObjectsResult(
    contents=[
        wire.ObjectSummary(key="a b+c", size=3, etag="e1", last_modified=T),
        wire.ObjectSummary(key="ü/€\x01", size=0, etag="e2-2", last_modified=T),
    ],
    common_prefixes=["d&e/"],
    is_truncated=True,
    next_token="tok",
)


def test_list_objects_v2() -> None:
    body = xml.list_objects_v2_result(
        RESULT,
        bucket="bkt",
        prefix="",
        delimiter="/",
        max_keys=3,
        start_after="",
        continuation_token="prev",
        encoding_url=False,
    )
    root = ET.fromstring(body.replace(b"\x01", b""))  # raw control chars: not XML 1.0
    assert root.findtext(f"{N}Name") == "bkt"
    assert root.findtext(f"{N}KeyCount") == "3"
    assert root.findtext(f"{N}MaxKeys") == "3"
    assert root.findtext(f"{N}IsTruncated") == "true"
    assert root.findtext(f"{N}ContinuationToken") == "prev"
    assert root.findtext(f"{N}NextContinuationToken") == "tok"
    assert root.findtext(f"{N}Delimiter") == "/"
    assert root.find(f"{N}EncodingType") is None
    assert root.find(f"{N}StartAfter") is None
    assert texts(root, f"{N}Contents/{N}Key") == ["a b+c", "ü/€"]
    assert texts(root, f"{N}Contents/{N}ETag") == ['"e1"', '"e2-2"']
    assert texts(root, f"{N}Contents/{N}Size") == ["3", "0"]
    assert texts(root, f"{N}Contents/{N}LastModified") == ["2023-11-14T22:13:20.250Z"] * 2
    assert texts(root, f"{N}Contents/{N}StorageClass") == ["STANDARD"] * 2
    assert texts(root, f"{N}CommonPrefixes/{N}Prefix") == ["d&e/"]


def test_list_objects_v2_url_encoding() -> None:
    body = xml.list_objects_v2_result(
        RESULT,
        bucket="bkt",
        prefix="p q/",
        delimiter="/",
        max_keys=1000,
        start_after="s t",
        continuation_token="",
        encoding_url=True,
    )
    root = parse(body)  # control characters are encoded: valid XML
    assert root.findtext(f"{N}EncodingType") == "url"
    keys = texts(root, f"{N}Contents/{N}Key")
    assert keys == ["a+b%2Bc", "%C3%BC/%E2%82%AC%01"]
    assert [unquote_plus(k) for k in keys] == ["a b+c", "ü/€\x01"]  # what botocore does
    assert root.findtext(f"{N}Prefix") == "p+q/"
    assert root.findtext(f"{N}StartAfter") == "s+t"
    assert root.findtext(f"{N}Delimiter") == "/"
    assert texts(root, f"{N}CommonPrefixes/{N}Prefix") == ["d%26e/"]
    assert root.find(f"{N}ContinuationToken") is None
    assert root.findtext(f"{N}NextContinuationToken") == "tok"  # tokens are not encoded


def test_list_objects_v2_not_truncated_has_no_next_token() -> None:
    result = wire.ListObjectsResult(contents=[], next_token="ignored")
    body = xml.list_objects_v2_result(
        result,
        bucket="b",
        prefix="",
        delimiter="",
        max_keys=10,
        start_after="",
        continuation_token="",
        encoding_url=False,
    )
    root = parse(body)
    assert root.findtext(f"{N}KeyCount") == "0"
    assert root.findtext(f"{N}IsTruncated") == "false"
    assert root.find(f"{N}NextContinuationToken") is None
    assert root.find(f"{N}Delimiter") is None


def test_list_objects_v1_next_marker() -> None:
    def v1(result: wire.ListObjectsResult, delimiter: str) -> ET.Element:
        return ET.fromstring(
            xml.list_objects_result(
                result,
                bucket="b",
                prefix="",
                delimiter=delimiter,
                max_keys=2,
                marker="m",
                encoding_url=False,
            ).replace(b"\x01", b"")  # raw control chars: not XML 1.0
        )

    root = v1(RESULT, "/")
    assert root.findtext(f"{N}Marker") == "m"
    assert root.findtext(f"{N}NextMarker") == "ü/€"  # the larger of last key / last prefix
    root = v1(RESULT, "")
    assert root.find(f"{N}NextMarker") is None  # without a delimiter clients use the last key
    given = wire.ListObjectsResult(contents=[], is_truncated=True, next_marker="nm")
    assert v1(given, "/").findtext(f"{N}NextMarker") == "nm"


def test_list_objects_v1_url_encoding() -> None:
    root = parse(
        xml.list_objects_result(
            RESULT,
            bucket="b",
            prefix="a b",
            delimiter="",
            max_keys=2,
            marker="c d",
            encoding_url=True,
        )
    )
    assert root.findtext(f"{N}Marker") == "c+d"
    assert root.findtext(f"{N}Prefix") == "a+b"
    assert texts(root, f"{N}Contents/{N}Key")[0] == "a+b%2Bc"


def test_multipart_results() -> None:
    root = parse(
        xml.initiate_multipart_result(wire.MultipartUpload(bucket="b", key="k/ü", upload_id="u1"))
    )
    assert root.tag == N + "InitiateMultipartUploadResult"
    assert [root.findtext(N + t) for t in ("Bucket", "Key", "UploadId")] == ["b", "k/ü", "u1"]

    info = wire.ObjectInfo(
        bucket="b",
        key="k",
        size=10,
        etag="abc-2",
        last_modified=T,
        checksums={"crc32": "AAAAAA==-2"},
    )
    root = parse(xml.complete_multipart_result(info, location="http://h/b/k"))
    assert root.tag == N + "CompleteMultipartUploadResult"
    assert root.findtext(f"{N}Location") == "http://h/b/k"
    assert root.findtext(f"{N}Bucket") == "b"
    assert root.findtext(f"{N}Key") == "k"
    assert root.findtext(f"{N}ETag") == '"abc-2"'
    assert root.findtext(f"{N}ChecksumCRC32") == "AAAAAA==-2"


def test_list_parts() -> None:
    result = wire.ListPartsResult(
        bucket="b",
        key="k",
        upload_id="u",
        parts=[
            wire.PartInfo(
                part_number=1, etag="e1", size=5, last_modified=T, checksums={"sha256": "x"}
            ),
            wire.PartInfo(part_number=2, etag="e2", size=6, last_modified=T),
        ],
        is_truncated=True,
        next_part_number_marker=2,
    )
    root = parse(xml.list_parts_result(result, max_parts=2, part_number_marker=0))
    assert root.tag == N + "ListPartsResult"
    assert root.findtext(f"{N}UploadId") == "u"
    assert root.findtext(f"{N}MaxParts") == "2"
    assert root.findtext(f"{N}IsTruncated") == "true"
    assert root.findtext(f"{N}NextPartNumberMarker") == "2"
    assert texts(root, f"{N}Part/{N}PartNumber") == ["1", "2"]
    assert texts(root, f"{N}Part/{N}ETag") == ['"e1"', '"e2"']
    assert texts(root, f"{N}Part/{N}Size") == ["5", "6"]
    assert texts(root, f"{N}Part/{N}ChecksumSHA256") == ["x"]


def test_delete_result() -> None:
    root = parse(xml.delete_result(["a", "b"], [("c", errors.AccessDenied())]))
    assert texts(root, f"{N}Deleted/{N}Key") == ["a", "b"]
    assert texts(root, f"{N}Error/{N}Key") == ["c"]
    assert texts(root, f"{N}Error/{N}Code") == ["AccessDenied"]


# == parsing ===================================================================================
def complete(*parts: str, ns: bool = True) -> bytes:
    attr = f' xmlns="{xml.NS}"' if ns else ""
    return f"<CompleteMultipartUpload{attr}>{''.join(parts)}</CompleteMultipartUpload>".encode()


def part(number: object, etag: str = '"abc"') -> str:
    return f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"


def test_complete_multipart_good() -> None:
    body = complete(part(1, '"aa"'), part(2, "bb"), part(7, "&quot;cc&quot;"))
    assert xml.parse_complete_multipart(body) == [
        wire.CompletedPart(part_number=1, etag="aa"),
        wire.CompletedPart(part_number=2, etag="bb"),
        wire.CompletedPart(part_number=7, etag="cc"),
    ]
    # without namespace, with checksums and whitespace, as various SDKs send it
    body = complete(
        '\n  <Part>\n <ETag> "aa" </ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32>'
        "<PartNumber> 1 </PartNumber></Part>\n",
        ns=False,
    )
    assert xml.parse_complete_multipart(body) == [
        wire.CompletedPart(part_number=1, etag="aa", checksums={"crc32": "AAAAAA=="})
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<CompleteMultipartUpload>",
        complete(),  # no parts
        complete(ns=False),
        b"<Other><Part><PartNumber>1</PartNumber><ETag>a</ETag></Part></Other>",
        complete(part("x")),
        complete(part("-1")),
        complete(part("1.5")),
        complete(part(1, "")),
        complete("<Part><ETag>a</ETag></Part>"),
        complete("<Part><PartNumber>1</PartNumber></Part>"),
    ],
)
def test_complete_multipart_malformed(body: bytes) -> None:
    with pytest.raises(errors.MalformedXML):
        xml.parse_complete_multipart(body)


def test_complete_multipart_unordered() -> None:
    with pytest.raises(errors.InvalidPartOrder):
        xml.parse_complete_multipart(complete(part(2), part(1)))
    with pytest.raises(errors.InvalidPartOrder):
        xml.parse_complete_multipart(complete(part(1), part(1)))


def test_complete_multipart_part_number_range() -> None:
    with pytest.raises(errors.InvalidArgument):
        xml.parse_complete_multipart(complete(part(0)))
    with pytest.raises(errors.InvalidArgument):
        xml.parse_complete_multipart(complete(part(10001)))
    assert xml.parse_complete_multipart(complete(part(10000)))[0].part_number == 10000


@pytest.mark.parametrize(
    "body",
    [
        # entity expansion ("billion laughs")
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&b;</ETag></Part>"
        b"</CompleteMultipartUpload>",
        # external entity
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&x;</ETag></Part>"
        b"</CompleteMultipartUpload>",
    ],
)
def test_untrusted_xml_is_refused(body: bytes) -> None:
    with pytest.raises(errors.MalformedXML):
        xml.parse_complete_multipart(body)


def test_create_bucket_configuration() -> None:
    assert xml.parse_create_bucket(b"") == ""
    assert xml.parse_create_bucket(b"  \n") == ""
    body = (
        f'<CreateBucketConfiguration xmlns="{xml.NS}">'
        "<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
    ).encode()
    assert xml.parse_create_bucket(body) == "eu-west-1"
    assert xml.parse_create_bucket(b"<CreateBucketConfiguration/>") == ""
    with pytest.raises(errors.MalformedXML):
        xml.parse_create_bucket(b"<Nope/>")
    with pytest.raises(errors.MalformedXML):
        xml.parse_create_bucket(b"<CreateBucketConfiguration>")


def test_delete_request() -> None:
    body = (
        f'<Delete xmlns="{xml.NS}"><Quiet>true</Quiet><Object><Key>a b</Key></Object>'
        "<Object><Key>c</Key><VersionId>null</VersionId></Object></Delete>"
    ).encode()
    assert xml.parse_delete(body) == (["a b", "c"], True)
    assert xml.parse_delete(b"<Delete><Object><Key>k</Key></Object></Delete>") == (["k"], False)
    for bad in (
        b"<Delete/>",
        b"<Delete><Object/></Delete>",
        b"<Delete><Object><Key></Key></Object></Delete>",
        b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
    ):
        with pytest.raises(errors.MalformedXML):
            xml.parse_delete(bad)
