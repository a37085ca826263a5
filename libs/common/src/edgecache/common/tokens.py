"""Continuation tokens: the opaque strings that resume a listing after a name.

A token is URL-safe base64 of ``ec1:`` and the UTF-8 name it resumes after, so a token we
did not make (another S3's, a typo, a truncated copy) is refused instead of silently
starting somewhere. Used by ListObjectsV2 (cache node) and ListBuckets (gateway).
"""

from __future__ import annotations

import base64
import binascii

from edgecache.common import errors

__all__ = ["decode_token", "encode_token"]

_TAG = b"ec1:"


def encode_token(after: str) -> str:
    """The token of a listing that resumes after ``after`` (a key or bucket name)."""
    return base64.urlsafe_b64encode(_TAG + after.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    """The name a token resumes after.

    Raises:
        InvalidArgument: an empty token, or one :func:`encode_token` did not make.
    """
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        if (
            not raw.startswith(_TAG)
            or encode_token(after := raw[len(_TAG) :].decode("utf-8", "surrogatepass")) != token
        ):
            raise ValueError(token)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise errors.InvalidArgument("The continuation token provided is incorrect") from exc
    return after
