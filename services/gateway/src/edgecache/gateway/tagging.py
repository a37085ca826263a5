"""Object tags as S3 takes them: the rules of a tag set, the ``x-amz-tagging`` header and
the ``x-amz-tagging-directive`` of CopyObject.

S3's limits (the PutObjectTagging API reference, "Categorizing your storage using tags"):
at most 10 tags per object; a key of 1-128 and a value of 0-256 Unicode characters; keys
unique; letters, numbers, spaces (Unicode categories L, N, Z) and ``_ . : / = + - @``
only; no key starting with ``aws:``. A tag set that breaks one gets ``InvalidTag``.

The XML body of PutObjectTagging is parsed by :func:`edgecache.gateway.xml.parse_tagging`;
both forms end in :func:`validate`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

from edgecache.common import errors

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_TAGS",
    "MAX_VALUE_CHARS",
    "copy_tags",
    "header_tags",
    "validate",
]

MAX_TAGS = 10
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
# x-amz-tagging: 10 tags of the longest key and value, every character 4 UTF-8 bytes
# percent-encoded (12 characters), with their "=" and "&"
MAX_HEADER_CHARS = MAX_TAGS * ((MAX_KEY_CHARS + MAX_VALUE_CHARS) * 12 + 2)
_PUNCTUATION = frozenset("_.:/=+-@")
_RESERVED_PREFIX = "aws:"


def _allowed(text: str) -> bool:
    return all(c in _PUNCTUATION or unicodedata.category(c)[0] in "LNZ" for c in text)


def validate(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A tag set, checked against S3's rules, as ``{key: value}`` in the order given.

    Args:
        pairs: ``(key, value)`` pairs, decoded.

    Raises:
        InvalidTag: more than 10 tags, a repeated key, a key outside 1-128 or a value over
            256 characters, a character outside the allowed set, or a key starting with
            ``aws:``.
    """
    tags: dict[str, str] = {}
    for key, value in pairs:
        if len(tags) == MAX_TAGS:
            raise errors.InvalidTag("Object tags cannot be greater than 10")
        if key in tags:
            raise errors.InvalidTag("Cannot provide multiple Tags with the same key")
        if not 1 <= len(key) <= MAX_KEY_CHARS or not _allowed(key):
            raise errors.InvalidTag("The TagKey you have provided is invalid")
        if key.lower().startswith(_RESERVED_PREFIX):
            raise errors.InvalidTag("Your TagKey cannot be prefixed with aws:")
        if len(value) > MAX_VALUE_CHARS or not _allowed(value):
            raise errors.InvalidTag("The TagValue you have provided is invalid")
        tags[key] = value
    return tags


def header_tags(headers: Mapping[str, str]) -> dict[str, str]:
    """The tags of an ``x-amz-tagging`` header (URL query form: ``k1=v1&k2=v2``, ``+`` or
    ``%20`` for a space, UTF-8), ``{}`` if it is absent or empty.

    Raises:
        InvalidArgument: the header is not a URL-encoded query string (bad UTF-8, too long).
        InvalidTag: the tags break S3's rules (:func:`validate`).
    """
    value = headers.get("x-amz-tagging")
    if not value:
        return {}
    if len(value) > MAX_HEADER_CHARS:
        raise errors.InvalidTag("The header 'x-amz-tagging' is longer than any valid tag set")
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeError, ValueError) as exc:
        raise errors.InvalidArgument(
            "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates."
        ) from exc
    return validate(pairs)


def copy_tags(headers: Mapping[str, str]) -> dict[str, str] | None:
    """CopyObject's tags: ``None`` to keep the source's (``x-amz-tagging-directive: COPY``,
    the default), else the ``x-amz-tagging`` tags (``REPLACE``; none: no tags).

    Raises:
        InvalidArgument: a directive other than ``COPY`` or ``REPLACE``.
        InvalidTag, InvalidArgument: as :func:`header_tags`.
    """
    directive = headers.get("x-amz-tagging-directive", "COPY").strip()
    if directive == "COPY":
        return None
    if directive != "REPLACE":
        raise errors.InvalidArgument("Unknown tagging directive.")
    return header_tags(headers)
