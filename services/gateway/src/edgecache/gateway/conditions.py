"""Conditional GET/HEAD: ``If-Match``, ``If-None-Match``, ``If-Modified-Since``,
``If-Unmodified-Since``, evaluated as S3 does (RFC 9110 §13.2.2 order).

* ``If-Match`` fails → 412; if it holds, ``If-Unmodified-Since`` is not looked at.
* else ``If-Unmodified-Since`` fails → 412.
* ``If-None-Match`` matches → 304; if it does not, ``If-Modified-Since`` is not looked at.
* else ``If-Modified-Since`` not modified → 304.

Dates compare at whole seconds (``Last-Modified`` has no fractions); an unparseable
date is ignored, as S3 does.
"""

from __future__ import annotations

import math

from edgecache.common import errors, wire
from edgecache.common.etags import etag_matches
from edgecache.gateway.headers import RequestHeaders, parse_http_date

__all__ = ["CONDITION_HEADERS", "etag_matches", "not_modified", "write_condition"]

#: the request headers :func:`not_modified` reads (a GET without any of them is unconditional)
CONDITION_HEADERS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def not_modified(h: RequestHeaders, etag: str, last_modified: float) -> bool:
    """Evaluate the preconditions of a GET or HEAD against the object's state.

    Args:
        h: the request headers.
        etag: the object's ETag, hex without quotes.
        last_modified: the object's modification time, Unix seconds.

    Returns:
        ``True`` when the answer is 304 Not Modified; ``False`` to serve the object.

    Raises:
        PreconditionFailed: ``If-Match`` or ``If-Unmodified-Since`` does not hold (412).
    """
    modified = math.floor(last_modified)
    if_match = h.get("if-match")
    if if_match is not None:
        if not etag_matches(if_match, etag):
            raise errors.PreconditionFailed(
                "At least one of the pre-conditions you specified did not hold: If-Match"
            )
    else:
        since = parse_http_date(h.get("if-unmodified-since"))
        if since is not None and modified > since:
            raise errors.PreconditionFailed(
                "At least one of the pre-conditions you specified did not hold: If-Unmodified-Since"
            )
    if_none_match = h.get("if-none-match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    since = parse_http_date(h.get("if-modified-since"))
    return since is not None and modified <= since


def write_condition(h: RequestHeaders) -> wire.WriteCondition | None:
    """The conditional write a PutObject, CompleteMultipartUpload or CopyObject asks for:
    ``If-None-Match: *`` (create only) and/or ``If-Match: "<etag>"`` (replace only that
    version); ``None`` for an unconditional write.

    Raises:
        NotImplemented: ``If-None-Match`` with anything but ``*`` (S3 accepts only ``*``).
    """
    if_match, if_none_match = h.get("if-match"), h.get("if-none-match")
    if if_match is None and if_none_match is None:
        return None
    if if_none_match is not None and if_none_match.strip() != "*":
        raise errors.NotImplementedError_(
            "A header you provided implies functionality that is not implemented: If-None-Match"
        )
    return wire.WriteCondition(if_match=if_match, if_none_match=if_none_match is not None)
