"""Listing details with boto3 against the session's `edgecache up` (issue 6, part E):
``encoding-type=url`` in ListObjects v1 and v2, keys with control characters listed and
read back, ``fetch-owner``, continuation tokens we did not make, and ListBuckets pages
(``max-buckets``, ``continuation-token``, ``prefix``).

botocore asks for ``encoding-type=url`` on every listing and decodes the names itself
unless the caller passes ``EncodingType`` (then the names come back as sent): both are used.
"""

from __future__ import annotations

import secrets

import pytest
from botocore.exceptions import ClientError

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e

# keys XML 1.0 cannot carry (\x01, \x1f), one it would turn into a line feed (\r), and
# characters URL encoding must escape (space, +, parentheses, %, non-ASCII)
KEYS = [
    "ctl/a\x01b",
    "ctl/cr\r\nlf",
    "ctl/del\x7f",
    "ctl/sp ace+plus(1)%25ü",
    "ctl/tab\there",
    "ctl/unit\x1fsep/deep",
]


@pytest.fixture(scope="module")
def s3(stack: Stack):
    return stack.boto3()


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    name = f"ls-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=name)
    for key in KEYS:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    return name


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


def test_control_character_keys_list_and_read_back(s3, bucket: str) -> None:
    v2 = s3.list_objects_v2(Bucket=bucket, Prefix="ctl/")
    assert [o["Key"] for o in v2["Contents"]] == KEYS
    v1 = s3.list_objects(Bucket=bucket, Prefix="ctl/")
    assert [o["Key"] for o in v1["Contents"]] == KEYS
    versions = s3.list_object_versions(Bucket=bucket, Prefix="ctl/")
    assert [o["Key"] for o in versions["Versions"]] == KEYS
    for key in KEYS:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()


def test_encoding_type_url_v2(s3, bucket: str) -> None:
    page = s3.list_objects_v2(
        Bucket=bucket,
        Prefix="ctl/",
        Delimiter="\x1f",
        StartAfter="ctl/a\x01b",
        EncodingType="url",
    )
    assert page["EncodingType"] == "url"
    assert (page["Prefix"], page["Delimiter"], page["StartAfter"]) == ("ctl/", "%1F", "ctl/a%01b")
    assert [o["Key"] for o in page["Contents"]] == [
        "ctl/cr%0D%0Alf",
        "ctl/del%7F",
        "ctl/sp+ace%2Bplus%281%29%2525%C3%BC",
        "ctl/tab%09here",
    ]
    assert page["CommonPrefixes"] == [{"Prefix": "ctl/unit%1F"}]


def test_encoding_type_url_v1_with_markers(s3, bucket: str) -> None:
    page = s3.list_objects(
        Bucket=bucket,
        Prefix="ctl/",
        Delimiter="\x1f",
        Marker="ctl/a\x01b",
        MaxKeys=2,
        EncodingType="url",
    )
    assert (page["Marker"], page["Delimiter"], page["IsTruncated"]) == ("ctl/a%01b", "%1F", True)
    assert [o["Key"] for o in page["Contents"]] == ["ctl/cr%0D%0Alf", "ctl/del%7F"]
    assert page["NextMarker"] == "ctl/del%7F"
    # botocore's own encoding-type=url: names decoded, so the marker round-trips
    rest = s3.list_objects(Bucket=bucket, Prefix="ctl/", Delimiter="\x1f", Marker="ctl/del\x7f")
    assert [o["Key"] for o in rest["Contents"]] == ["ctl/sp ace+plus(1)%25ü", "ctl/tab\there"]
    assert rest["CommonPrefixes"] == [{"Prefix": "ctl/unit\x1f"}]


def test_owner_in_v1_always_and_in_v2_with_fetch_owner(s3, bucket: str) -> None:
    assert all("Owner" in o for o in s3.list_objects(Bucket=bucket)["Contents"])
    assert not any("Owner" in o for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    owners = [o["Owner"] for o in s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"]]
    assert owners and all(o["ID"] and o["DisplayName"] for o in owners)


@pytest.mark.parametrize("token", ["bogus", "AAAA", "eyJ0b2tlbiI6IDF9"])
def test_continuation_token_we_did_not_make_is_invalid_argument(
    s3, bucket: str, token: str
) -> None:
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken=token)
    assert _code(exc) == ("InvalidArgument", 400)


def test_continuation_token_pages_through(s3, bucket: str) -> None:
    first = s3.list_objects_v2(Bucket=bucket, Prefix="ctl/", MaxKeys=4)
    rest = s3.list_objects_v2(
        Bucket=bucket, Prefix="ctl/", ContinuationToken=first["NextContinuationToken"]
    )
    assert [o["Key"] for o in first["Contents"] + rest["Contents"]] == KEYS
    assert rest["ContinuationToken"] == first["NextContinuationToken"]


# == ListBuckets pages ===========================================================================
def test_list_buckets_pages(s3) -> None:
    prefix = f"lb-{secrets.token_hex(4)}-"
    names = [f"{prefix}{i}" for i in range(5)]
    for name in names:
        s3.create_bucket(Bucket=name)
    first = s3.list_buckets(Prefix=prefix, MaxBuckets=2)
    assert [b["Name"] for b in first["Buckets"]] == names[:2]
    assert first["Prefix"] == prefix and first["ContinuationToken"]
    assert all(b["BucketRegion"] == "us-east-1" for b in first["Buckets"])
    second = s3.list_buckets(
        Prefix=prefix, MaxBuckets=2, ContinuationToken=first["ContinuationToken"]
    )
    assert [b["Name"] for b in second["Buckets"]] == names[2:4]
    paged = [
        b["Name"]
        for page in s3.get_paginator("list_buckets").paginate(
            Prefix=prefix, PaginationConfig={"PageSize": 2}
        )
        for b in page["Buckets"]
    ]
    assert paged == names
    last = s3.list_buckets(
        Prefix=prefix, MaxBuckets=3, ContinuationToken=second["ContinuationToken"]
    )
    assert [b["Name"] for b in last["Buckets"]] == names[4:] and "ContinuationToken" not in last
    everything = [b["Name"] for b in s3.list_buckets()["Buckets"]]  # no pages asked: all of them
    assert set(names) <= set(everything) and everything == sorted(everything)
    assert s3.list_buckets(BucketRegion="eu-west-1", Prefix=prefix)["Buckets"] == []


@pytest.mark.parametrize(
    "params", [{"MaxBuckets": 10001}, {"ContinuationToken": "bogus"}, {"ContinuationToken": ""}]
)
def test_list_buckets_bad_page_is_invalid_argument(s3, params: dict) -> None:
    with pytest.raises(ClientError) as exc:
        s3.list_buckets(**params)
    assert _code(exc) == ("InvalidArgument", 400)
