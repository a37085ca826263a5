"""HTTP ``Range`` headers, as S3 reads them (RFC 9110 byte ranges, one range only)."""

from __future__ import annotations

import re

from edgecache.common import errors

__all__ = ["parse_range"]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` that ``header`` selects of ``size`` bytes.

    Returns ``None`` for the whole object: no header, or one S3 ignores (bad syntax,
    several ranges). ``last`` is clamped to ``size - 1``; ``bytes=-N`` is the last N bytes.

    Raises:
        InvalidRange: the range is syntactically valid but selects nothing (``first >=
            size``, ``bytes=-0``, or any range of an empty object).
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:  # suffix range
        length = int(end)
        if length == 0 or size == 0:
            raise errors.InvalidRange(f"range {header!r} of {size} bytes is not satisfiable")
        return max(0, size - length), size - 1
    first = int(start)
    last = int(end) if end else size - 1
    if end and last < first:
        return None  # invalid: ignored, as S3 does
    if first >= size:
        raise errors.InvalidRange(f"range {header!r} of {size} bytes is not satisfiable")
    return first, min(last, size - 1)
