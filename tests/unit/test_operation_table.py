"""The operation table (the request types of ``wire.Request``): every operation has a
subject, a handler on the cache node and a route in the gateway, and nothing is served that
the table does not list."""

from __future__ import annotations

import msgspec
import pytest

from edgecache.cachenode.service import HANDLERS as NODE_HANDLERS
from edgecache.common import subjects, wire
from edgecache.common.client import operation_of
from edgecache.gateway.handlers import HANDLERS as GATEWAY_HANDLERS
from edgecache.gateway.handlers import ROUTES
from edgecache.gateway.operations import route

# One HTTP request for each S3 action the gateway serves, as a client sends it.
HTTP = {
    "ListBuckets": ("GET", b"/", b""),
    "CreateBucket": ("PUT", b"/b", b""),
    "HeadBucket": ("HEAD", b"/b", b""),
    "DeleteBucket": ("DELETE", b"/b", b""),
    "GetBucketLocation": ("GET", b"/b", b"location"),
    "GetBucketAcl": ("GET", b"/b", b"acl"),
    "GetObjectAcl": ("GET", b"/b/k", b"acl"),
    "ListObjects": ("GET", b"/b", b""),
    "ListObjectsV2": ("GET", b"/b", b"list-type=2"),
    "DeleteObjects": ("POST", b"/b", b"delete"),
    "PostObject": ("POST", b"/b", b""),
    "PutObject": ("PUT", b"/b/k", b""),
    "GetObject": ("GET", b"/b/k", b""),
    "HeadObject": ("HEAD", b"/b/k", b""),
    "DeleteObject": ("DELETE", b"/b/k", b""),
    "CreateMultipartUpload": ("POST", b"/b/k", b"uploads"),
    "UploadPart": ("PUT", b"/b/k", b"partNumber=1&uploadId=u"),
    "CompleteMultipartUpload": ("POST", b"/b/k", b"uploadId=u"),
    "AbortMultipartUpload": ("DELETE", b"/b/k", b"uploadId=u"),
    "ListParts": ("GET", b"/b/k", b"uploadId=u"),
    "CopyObject": ("PUT", b"/b/k", b"", {"copy_source": True}),
    "UploadPartCopy": ("PUT", b"/b/k", b"partNumber=1&uploadId=u", {"copy_source": True}),
    "ListMultipartUploads": ("GET", b"/b", b"uploads"),
    "ListObjectVersions": ("GET", b"/b", b"versions"),
    "GetObjectAttributes": ("GET", b"/b/k", b"attributes"),
    "PutObjectTagging": ("PUT", b"/b/k", b"tagging"),
    "GetObjectTagging": ("GET", b"/b/k", b"tagging"),
    "DeleteObjectTagging": ("DELETE", b"/b/k", b"tagging"),
    "NotImplemented": ("GET", b"/b", b"versioning"),
    "MethodNotAllowed": ("PATCH", b"/b", b""),
}
ERROR_ACTIONS = {"NotImplemented", "MethodNotAllowed"}  # answered by the gateway alone


def _sample(request_type: type[wire.Request]) -> wire.Request:
    """A request of ``request_type``, decoded from JSON as a cache node decodes it."""
    tag = request_type.__struct_config__.tag
    fields = {
        "bucket": "b",
        "key": "k",
        "upload_id": "u",
        "part_number": 1,
        "parts": [],
        "source": {"bucket": "s", "key": "k"},
    }
    return wire.REQUEST_DECODER.decode(msgspec.json.encode({"type": tag, **fields}))


@pytest.mark.parametrize("request_type", wire.REQUESTS, ids=lambda t: t.__name__)
def test_every_operation_has_a_subject_a_node_handler_and_a_gateway_route(
    request_type: type[wire.Request],
) -> None:
    operation = request_type.operation
    assert request_type.__struct_config__.tag.startswith(f"{operation}.v")
    assert operation in subjects.S3_OPERATIONS
    assert subjects.s3(operation) == subjects.s3_request(request_type) == f"s3.{operation}"
    request = _sample(request_type)
    assert type(request) is request_type
    assert operation_of(request) == f"s3.{operation}"
    assert request_type in NODE_HANDLERS
    own = ROUTES[request_type.__name__]  # the S3 action the type is named after
    assert own.request is request_type
    method, path, query, *flags = HTTP[own.action]
    assert route(method, path, query, **(flags[0] if flags else {})).name == own.action


def test_nothing_is_served_outside_the_table() -> None:
    assert len(wire.OPERATIONS) == len(wire.REQUESTS)  # operation names are unique
    assert tuple(t.operation for t in wire.REQUESTS) == subjects.S3_OPERATIONS
    assert set(NODE_HANDLERS) == set(wire.REQUESTS)
    assert set(GATEWAY_HANDLERS) == set(ROUTES)
    for action, r in ROUTES.items():
        assert r.action == action and GATEWAY_HANDLERS[action] is r.handler
        if r.request is None:
            assert action in ERROR_ACTIONS
        else:
            assert r.request in wire.REQUESTS


def test_the_gateway_routes_to_every_action_it_serves() -> None:
    assert set(HTTP) == set(ROUTES)
    for action, (method, path, query, *flags) in HTTP.items():
        assert route(method, path, query, **(flags[0] if flags else {})).name == action


def test_an_unknown_operation_has_no_subject() -> None:
    with pytest.raises(ValueError):
        subjects.s3("renameobject")
