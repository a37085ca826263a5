"""Building responses: S3 errors as XML, XML results, empty answers, and the exception
that cuts a streamed body.

Every response carries ``x-amz-request-id``, ``x-amz-id-2`` and ``Server: edgecache``
(:meth:`Exchange.response_headers`). Errors: ``<Error>`` XML with the error's status and
``Content-Type: application/xml``; no body for HEAD; ``Retry-After`` on 503.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from litestar import Response

from edgecache.common import errors
from edgecache.gateway import xml

if TYPE_CHECKING:
    from edgecache.gateway.exchange import Exchange

__all__ = [
    "XML",
    "StreamCut",
    "StreamCutFilter",
    "empty",
    "error_response",
    "xml_response",
]

XML = "application/xml"


class StreamCut(Exception):  # noqa: N818 - not an error of ours: a deliberate abort
    """Raised inside a streamed body to make the server cut the connection, so the client
    sees a short body instead of a silently truncated 200."""


class StreamCutFilter(logging.Filter):
    """Drops the ASGI server's "Exception in ASGI application" record for a
    :class:`StreamCut` (the gateway has already logged the cause on its own line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _caused_by_cut(exc, depth=0)


def _caused_by_cut(exc: BaseException | None, *, depth: int) -> bool:
    if exc is None or depth > 8:
        return False
    if isinstance(exc, StreamCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_caused_by_cut(e, depth=depth + 1) for e in exc.exceptions)
    return _caused_by_cut(exc.__cause__ or exc.__context__, depth=depth + 1)


def error_response(x: Exchange, exc: errors.S3Error) -> Response[bytes]:
    """The S3 error response for ``exc``: XML ``<Error>`` (no body for HEAD)."""
    headers = x.response_headers()
    if exc.status == 503:
        headers["retry-after"] = str(exc.retry_after_s or 1)
    if x.method == "HEAD":
        return Response(b"", status_code=exc.status, headers=headers, media_type=XML)
    resource = exc.resource or (x.op.resource if x.op else "")
    body = xml.error(exc.code, exc.message, resource, x.request_id)
    return Response(body, status_code=exc.status, headers=headers, media_type=XML)


def xml_response(
    x: Exchange, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """A ``200`` (or ``status``) answer with an XML body."""
    out = x.response_headers()
    if headers:
        out.update(headers)
    return Response(body, status_code=status, headers=out, media_type=XML)


def empty(
    x: Exchange, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """An answer without a body (``Content-Length: 0`` unless ``headers`` say otherwise,
    as for HEAD)."""
    out = x.response_headers()
    if headers:
        out.update(headers)
    return Response(b"", status_code=status, headers=out, media_type=out.get("content-type", XML))
