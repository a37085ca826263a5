"""KV key names for object manifests and multipart uploads, built here only.

NATS KV keys allow ``[-/_=.A-Za-z0-9]``; S3 keys are any UTF-8, so object keys are
base64url-encoded (with padding). Bucket names (``[a-z0-9.-]``) are safe as they are.

* KV ``objects``: ``o.<bucket>.<b64url(key)>`` → ``wire.Manifest``
* KV ``uploads``: ``u.<upload_id>`` → ``wire.UploadRecord``;
  ``p.<upload_id>.<part_number>`` → ``wire.PartRecord``
"""

from __future__ import annotations

import base64

__all__ = [
    "bucket_filter",
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


def part_key(upload_id: str, part_number: int) -> str:
    """KV ``uploads`` key of one part of a multipart upload."""
    return f"p.{upload_id}.{part_number}"


def part_filter(upload_id: str) -> str:
    """Subject filter matching every part of ``upload_id``."""
    return f"p.{upload_id}.*"


def upload_filter() -> str:
    """Subject filter matching every multipart upload's record (not its parts)."""
    return "u.*"
