"""Server-side copy headers (``x-amz-copy-source*``, ``x-amz-metadata-directive``), write
conditions (``If-Match``, ``If-None-Match``) and part spans of a manifest."""

from __future__ import annotations

import pytest

from edgecache.cachenode.objects import part_sizes, requested_span
from edgecache.common import errors, wire
from edgecache.common.etags import etag_matches
from edgecache.gateway.conditions import write_condition
from edgecache.gateway.copysource import copy_source, copy_source_range, replaces_metadata
from edgecache.gateway.headers import RequestHeaders


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("/b/k", ("b", "k")),
        ("b/dir/a%20b%2Bc%C3%BC", ("b", "dir/a b+cü")),
        ("/b/a%2Fb?versionId=null", ("b", "a/b")),
        ("b/k%3FversionId%3Dx", ("b", "k?versionId=x")),  # an encoded ? belongs to the key
    ],
)
def test_copy_source(header: str, expected: tuple[str, str]) -> None:
    assert copy_source(RequestHeaders({"x-amz-copy-source": header})) == expected


@pytest.mark.parametrize("header", ["", "/b", "b/", "/b/k?versionId=abc", "/b/k?x=null", "/b/%FF"])
def test_bad_copy_source_is_invalid_argument(header: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        copy_source(RequestHeaders({"x-amz-copy-source": header}))


def test_copy_source_range() -> None:
    assert copy_source_range(RequestHeaders()) is None
    assert copy_source_range(RequestHeaders({"x-amz-copy-source-range": "bytes=0-9"})) == (0, 9)
    for bad in ("bytes=5-1", "bytes=0-", "bytes=-5", "0-9", "bytes=0-1,3-4"):
        with pytest.raises(errors.InvalidArgument):
            copy_source_range(RequestHeaders({"x-amz-copy-source-range": bad}))


def test_metadata_directive() -> None:
    assert replaces_metadata(RequestHeaders()) is False
    assert replaces_metadata(RequestHeaders({"x-amz-metadata-directive": "REPLACE"})) is True
    assert replaces_metadata(RequestHeaders({"x-amz-metadata-directive": "COPY"})) is False
    with pytest.raises(errors.InvalidArgument):
        replaces_metadata(RequestHeaders({"x-amz-metadata-directive": "MOVE"}))


def test_write_condition() -> None:
    assert write_condition(RequestHeaders()) is None
    assert write_condition(RequestHeaders({"if-none-match": "*"})) == wire.WriteCondition(
        if_none_match=True
    )
    assert write_condition(RequestHeaders({"if-match": '"abc"'})) == wire.WriteCondition(
        if_match='"abc"'
    )
    with pytest.raises(errors.NotImplementedError_):
        write_condition(RequestHeaders({"if-none-match": '"abc"'}))


def test_etag_matches() -> None:
    assert etag_matches('"abc"', "abc") and etag_matches("abc", "abc") and etag_matches("*", "x")
    assert etag_matches('"x", W/"abc"', "abc")
    assert not etag_matches('"abcd"', "abc")


def _manifest(**fields) -> wire.Manifest:
    return wire.Manifest(bucket="b", key="k", version="v", etag="e", last_modified=0.0, **fields)


def test_part_spans_of_multipart_single_part_and_old_manifests() -> None:
    mp = _manifest(size=12, parts_count=2, part_sizes=[8, 4])
    assert requested_span(mp, None, 1) == (0, 7) and requested_span(mp, None, 2) == (8, 11)
    with pytest.raises(errors.InvalidPartNumber):
        requested_span(mp, None, 3)
    single = _manifest(size=10)
    assert requested_span(single, None, 1) == (0, 9)
    assert requested_span(single, "bytes=2-3", None) == (2, 3)
    with pytest.raises(errors.InvalidPartNumber):
        requested_span(single, None, 2)
    chunks = [wire.ChunkRef(id=i, size=s) for i, s in (("p1.0", 4), ("p1.1", 4), ("p2.0", 3))]
    old = _manifest(size=11, parts_count=2, chunks=chunks)  # written before part_sizes
    assert part_sizes(old) == [8, 3]
    with pytest.raises(errors.InvalidRequest):
        part_sizes(_manifest(size=11, parts_count=3, chunks=chunks))
