"""ETag preconditions (``If-Match``, ``If-None-Match``, ``x-amz-copy-source-if-*``)."""

from __future__ import annotations

__all__ = ["etag_matches"]


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` value names ``etag`` (hex, unquoted).

    ``header`` is a comma-separated list of ETags, quoted or bare, or ``*`` (matches any);
    weak tags (``W/"…"``) compare by their opaque part.
    """
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.removeprefix("W/").strip('"') == etag:
            return True
    return False
