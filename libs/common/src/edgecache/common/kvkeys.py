"""KV key names for object manifests and multipart uploads, built here only.

NATS KV keys allow ``[-/_=.A-Za-z0-9]``; S3 keys are any UTF-8, so object keys are
base64url-encoded (with padding). Bucket names (``[a-z0-9.-]``) are safe as they are.

* KV ``objects``: ``o.<bucket>.<b64url(key)>`` → ``wire.Manifest``;
  ``d.<bucket>._<b64url(segment 1)>._<b64url(segment 2)>…`` → the version last marked
  dirty (the *dirty index*: one token per ``/``-separated segment of the key, unpadded,
  so a listing's prefix up to its last ``/`` becomes a subject filter)
* KV ``uploads``: ``u.<upload_id>`` → ``wire.UploadRecord``;
  ``p.<upload_id>.<part_number>`` → ``wire.PartRecord``
"""

from __future__ import annotations

import base64

__all__ = [
    "DIRTY_ALL",
    "OBJECTS_ALL",
    "bucket_filter",
    "dirty_filter",
    "dirty_key",
    "parse_dirty_key",
    "object_key",
    "part_filter",
    "part_key",
    "parse_object_key",
    "upload_filter",
    "upload_key",
]


def object_key(bucket: str, key: str) -> str:
    """KV ``objects`` key of ``bucket/key``."""
    return f"o.{bucket}.{base64.urlsafe_b64encode(key.encode()).decode()}"


def parse_object_key(kv_key: str) -> tuple[str, str]:
    """``(bucket, key)`` of a KV ``objects`` key; raises ``ValueError`` if it is not one."""
    kind, rest = kv_key.split(".", 1)
    bucket, _, encoded = rest.rpartition(".")
    if kind != "o" or not bucket:
        raise ValueError(f"not an object key: {kv_key!r}")
    return bucket, base64.urlsafe_b64decode(encoded.encode()).decode()


def bucket_filter(bucket: str) -> str:
    """Subject filter matching every object key of ``bucket`` in KV ``objects``."""
    return f"o.{bucket}.*"


def upload_key(upload_id: str) -> str:
    """KV ``uploads`` key of a multipart upload's record."""
    return f"u.{upload_id}"


def upload_filter() -> str:
    """Subject filter matching every multipart upload's record (not their parts)."""
    return "u.*"


def part_key(upload_id: str, part_number: int) -> str:
    """KV ``uploads`` key of one part of a multipart upload."""
    return f"p.{upload_id}.{part_number}"


def part_filter(upload_id: str) -> str:
    """Subject filter matching every part of ``upload_id``."""
    return f"p.{upload_id}.*"


DIRTY_ALL = "d.>"  # subject filter matching the dirty index of every bucket
OBJECTS_ALL = "o.>"  # subject filter matching every manifest


def _segment_token(segment: str) -> str:
    return "_" + base64.urlsafe_b64encode(segment.encode()).decode().rstrip("=")


def dirty_key(bucket: str, key: str) -> str:
    """KV ``objects`` key of ``bucket/key`` in the dirty index."""
    return f"d.{bucket}." + ".".join(_segment_token(s) for s in key.split("/"))


def dirty_filter(bucket: str, prefix: str = "") -> str:
    """Subject filter matching the dirty index keys of ``bucket`` whose key starts with
    ``prefix`` up to its last ``/`` (a superset: the caller checks the rest of ``prefix``)."""
    whole = prefix.split("/")[:-1]  # the segments that end in a "/" of the prefix
    return f"d.{bucket}." + "".join(_segment_token(s) + "." for s in whole) + ">"


def parse_dirty_key(kv_key: str) -> tuple[str, str]:
    """``(bucket, key)`` of a dirty index key; raises ``ValueError`` if it is not one.
    Bucket names never hold ``_``, so the first token starting with ``_`` ends the bucket."""
    tokens = kv_key.split(".")
    first = next((i for i, t in enumerate(tokens) if t.startswith("_")), 0)
    if tokens[0] != "d" or first < 2:
        raise ValueError(f"not a dirty index key: {kv_key!r}")
    segments = []
    for token in tokens[first:]:
        encoded = token[1:]
        segments.append(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode())
    return ".".join(tokens[1:first]), "/".join(segments)
