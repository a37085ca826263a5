"""GetObject and HeadObject answered from the gateway's memory tier, and the tier filled by
the GETs that miss it (see :mod:`edgecache.gateway.memtier` for what it holds and why it is
coherent).

A hit is answered like the cache node would: conditional requests (304/412), ``Range``
(206, or 416 InvalidRange), ``response-*`` overrides and ``x-amz-checksum-mode``. Only a
GET of the whole object (no ``Range``) that the node answered completely, with its
checksum verified, fills the tier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from litestar import Response

from edgecache.common.ranges import parse_range
from edgecache.gateway import conditions
from edgecache.gateway.headers import RESPONSE_OVERRIDES, http_date, object_headers
from edgecache.gateway.responses import empty
from edgecache.gateway.wholeresponse import header_lines

if TYPE_CHECKING:
    from edgecache.common import wire
    from edgecache.gateway.exchange import Exchange
    from edgecache.gateway.memtier import CachedObject, Fill
    from edgecache.gateway.operations import Operation

__all__ = [
    "Answer",
    "Collector",
    "WholeAnswer",
    "answer",
    "held",
    "not_modified",
    "render",
    "render_whole",
    "start_fill",
]


async def held(x: Exchange, op: Operation) -> CachedObject | None:
    """The object if this gateway's memory tier holds it and may serve it now: the tier is
    in sync with the invalidation events, and every event queued for this gateway before
    the request arrived is applied (the read barrier of
    :meth:`~edgecache.gateway.invalidations.InvalidationListener.settled`). A ``partNumber``
    read is never answered here: the tier does not know part boundaries."""
    tier, listener = x.gateway.memtier, x.gateway.invalidations
    if "partNumber" in op.query:
        return None
    if tier is None or listener is None or not tier.holds(op.bucket, op.key):
        return None
    if not await listener.settled():
        return None
    return tier.lookup(op.bucket, op.key)


class Answer(NamedTuple):
    """A memory-tier answer before any framework sees it: status, every header, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def render(x: Exchange, op: Operation, cached: CachedObject, *, head: bool) -> Answer:
    """The GET (or HEAD, ``head``) answer for a held object; counts ``bytes_out``.

    Raises:
        PreconditionFailed: ``If-Match`` / ``If-Unmodified-Since`` does not hold.
        InvalidRange: the range selects nothing of the object.
    """
    info = cached.info
    out = x.response_headers()
    if conditions.not_modified(x.headers, info.etag, info.last_modified):
        out.update(_not_modified_headers(info))
        return Answer(304, out, b"")
    body = cached.data
    selected = parse_range(x.range_header(), info.size)
    status = 200
    if selected is not None:
        first, last = selected
        info = msgspec.structs.replace(info, range_first=first, range_last=last)
        body = body[first : last + 1]
        status = 206
    out.update(object_headers(info, query=op.query, checksum_mode=x.checksum_mode()))
    if head:
        return Answer(status, out, b"")
    x.bytes_out += len(body)
    if x.gateway.memtier is not None:
        x.gateway.memtier.stats.sent_bytes += len(body)
    return Answer(status, out, body)


class WholeAnswer(NamedTuple):
    """:class:`Answer` with its headers as header lines (``name: value\r\n``, latin-1), for
    :class:`~edgecache.gateway.wholeresponse.WholeResponse`."""

    status: int
    lines: bytes
    body: bytes


def render_whole(x: Exchange, op: Operation, cached: CachedObject, *, head: bool) -> WholeAnswer:
    """:func:`render` as header lines. The answer to a request without ``Range``,
    preconditions or ``response-*`` overrides (every plain hit) reuses the object's header
    lines, built once per cached version (``cached.heads``); any other is rendered.

    Raises:
        PreconditionFailed, InvalidRange: as :func:`render`.
        ValueError: a header value holds a control character (nothing is sent then).
    """
    if (
        x.range_header() is None
        and conditions.CONDITION_HEADERS.isdisjoint(x.headers)
        and RESPONSE_OVERRIDES.isdisjoint(op.query)
    ):
        checksum_mode = x.checksum_mode()
        lines = cached.heads.get(checksum_mode)
        if lines is None:
            headers = object_headers(cached.info, query={}, checksum_mode=checksum_mode)
            lines = cached.heads[checksum_mode] = header_lines(headers)
        if head:
            return WholeAnswer(200, x.response_lines() + lines, b"")
        body = cached.data
        x.bytes_out += len(body)
        if x.gateway.memtier is not None:
            x.gateway.memtier.stats.sent_bytes += len(body)
        return WholeAnswer(200, x.response_lines() + lines, body)
    status, headers, body = render(x, op, cached, head=head)
    return WholeAnswer(status, header_lines(headers), body)


def answer(x: Exchange, op: Operation, cached: CachedObject, *, head: bool) -> Response[Any]:
    """:func:`render` as a Litestar response (the handlers' path)."""
    status, headers, body = render(x, op, cached, head=head)
    if status == 304 or head:
        return empty(x, status=status, headers=headers)
    return Response(body, status_code=status, headers=headers, media_type=cached.info.content_type)


def not_modified(x: Exchange, info: wire.ObjectInfo) -> Response[Any]:
    """``304 Not Modified`` with the object's ETag and Last-Modified."""
    return empty(x, status=304, headers=_not_modified_headers(info))


def _not_modified_headers(info: wire.ObjectInfo) -> dict[str, str]:
    return {"etag": f'"{info.etag}"', "last-modified": http_date(info.last_modified)}


def start_fill(x: Exchange, op: Operation) -> Fill | None:
    """A ticket to fill the tier with this GET's object, taken before the node is asked;
    ``None`` when the GET cannot fill it (tier off or out of sync, a ``Range``)."""
    tier = x.gateway.memtier
    if tier is None or not x.gateway.in_sync() or x.range_header() is not None:
        return None
    return tier.start_fill(op.bucket, op.key)


class Collector:
    """Keeps the pieces of a whole-object GET small enough for the tier, and admits them
    when the download has ended with its checksum verified."""

    def __init__(self, x: Exchange, fill: Fill | None, info: wire.ObjectInfo) -> None:
        self._x = x
        self._fill = fill if self.wanted(x, fill, info) else None
        self._info = info
        self._pieces: list[bytes] = []

    @staticmethod
    def wanted(x: Exchange, fill: Fill | None, info: wire.ObjectInfo) -> bool:
        """Whether a GET of ``info`` with ``fill`` collects its bytes for the tier."""
        tier = x.gateway.memtier
        return fill is not None and tier is not None and info.range_first is None and info.size <= tier.gate_bytes

    def add(self, piece: bytes) -> None:
        if self._fill is not None:
            self._pieces.append(piece)

    def complete(self) -> None:
        """The body ended whole: admit it (the tier refuses it if it changed meanwhile)."""
        tier = self._x.gateway.memtier
        if self._fill is not None and tier is not None:
            tier.admit(self._fill, self._info, b"".join(self._pieces))
        self._pieces = []
