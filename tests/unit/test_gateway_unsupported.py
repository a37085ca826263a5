"""Headers asking for what the gateway does not do are refused (501), the one value that
means "what we do anyway" is accepted; the canned ACL ``private`` renders as S3 does."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from edgecache.common import errors
from edgecache.gateway import xml
from edgecache.gateway.unsupported import refuse_unsupported


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-amz-acl": "private"},
        {"x-amz-acl": "Private "},
        {"x-amz-storage-class": "STANDARD"},
        {"x-amz-bucket-object-lock-enabled": "false"},
        {"x-amz-meta-acl": "public-read", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
        {"x-amz-checksum-crc32": "DUoRhQ==", "x-amz-server-side": "not a header we know"},
        {"x-amz-tagging": "a=b", "x-amz-tagging-directive": "REPLACE"},  # object tagging is served
    ],
)
def test_accepted(headers: dict[str, str]) -> None:
    refuse_unsupported(headers)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-amz-acl", "public-read"),
        ("x-amz-acl", "bucket-owner-full-control"),
        ("x-amz-grant-read", 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'),
        ("x-amz-grant-full-control", "id=abc"),
        ("x-amz-server-side-encryption", "AES256"),
        ("x-amz-server-side-encryption", "aws:kms"),
        ("x-amz-server-side-encryption-aws-kms-key-id", "key"),
        ("x-amz-server-side-encryption-customer-algorithm", "AES256"),
        ("x-amz-storage-class", "GLACIER"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-object-lock-mode", "GOVERNANCE"),
        ("x-amz-bucket-object-lock-enabled", "true"),
        ("x-amz-website-redirect-location", "/other"),
    ],
)
def test_refused_with_501_naming_the_header(name: str, value: str) -> None:
    with pytest.raises(errors.NotImplementedError_) as caught:
        refuse_unsupported({"content-type": "text/plain", name: value})
    assert caught.value.status == 501 and caught.value.code == "NotImplemented"
    assert name in caught.value.message


def test_access_control_policy_grants_the_owner_full_control() -> None:
    ns = {"s3": xml.NS, "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
    root = ET.fromstring(xml.access_control_policy("edgecache"))
    assert root.tag == f"{{{xml.NS}}}AccessControlPolicy"
    assert root.findtext("s3:Owner/s3:ID", namespaces=ns) == "edgecache"
    grants = root.findall("s3:AccessControlList/s3:Grant", ns)
    assert len(grants) == 1
    grantee = grants[0].find("s3:Grantee", ns)
    assert grantee is not None and grantee.get(f"{{{ns['xsi']}}}type") == "CanonicalUser"
    assert grantee.findtext("s3:ID", namespaces=ns) == "edgecache"
    assert grants[0].findtext("s3:Permission", namespaces=ns) == "FULL_CONTROL"
