"""S3 naming rules for buckets and keys, checked by the gateway and again by cache nodes
(platform services may publish on ``s3.*`` directly)."""

from __future__ import annotations

import ipaddress
import re

from edgecache.common import errors

__all__ = ["MAX_KEY_BYTES", "validate_bucket_name", "validate_key"]

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def validate_bucket_name(name: str) -> None:
    """Check the S3 general-purpose bucket naming rules.

    3–63 characters of ``a-z 0-9 . -``, starting and ending with a letter or digit, no
    ``..``, not an IPv4 address, not starting with ``xn--``/``sthree-`` nor ending with
    ``-s3alias``/``--ol-s3``.

    Raises:
        InvalidBucketName: the name breaks a rule.
    """
    bad = (
        not _BUCKET.match(name)
        or ".." in name
        or name.startswith(("xn--", "sthree-"))
        or name.endswith(("-s3alias", "--ol-s3"))
    )
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise errors.InvalidBucketName(resource=name)


def validate_key(bucket: str, key: str) -> None:
    """Check an object key: 1 to 1024 bytes of UTF-8.

    Raises:
        KeyTooLongError: over 1024 bytes.
        InvalidArgument: empty.
    """
    if not key:
        raise errors.InvalidArgument("The object key must not be empty.", resource=bucket)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(resource=f"{bucket}/{key[:64]}…")
