"""Reading a chunk from the cache nodes that hold it, failing over between them.

A cache node reads from its peers the chunks it lacks (or asks the object's owner to fill
one); the writeback service reads dirty chunks on their way to the origin. Both open the
chunk with :func:`open_chunk`: the sources are asked in order
(``edgecache.chunk.<node>.get``, a download stream) until one sends the first piece. After
that first piece it is too late to switch silently: a stream that breaks raises from its
body, and the caller decides (the writeback resumes on another node at the byte where it
broke; a cache node fails the read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from edgecache.common import errors, stream, subjects, wire
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.credit import CreditBudget

__all__ = ["Opened", "Source", "open_chunk"]

log = get_logger(__name__)

#: A node and the request to send it (the owner of an object gets one that names the
#: object, so it fills the chunk from the origin if it lacks it).
Source = tuple[str, wire.ChunkGet]


class Opened(NamedTuple):
    """A chunk stream that has started.

    Attributes:
        node: the node serving it.
        body: the rest of its pieces (``aclose()`` it when stopping early); raises an
            ``S3Error`` if the stream breaks.
        first: its first piece, already received (never empty).
    """

    node: str
    body: AsyncIterator[bytes]
    first: bytes


async def open_chunk(
    nc: NATS,
    sources: Sequence[Source],
    *,
    budget: CreditBudget,
    window: int,
    timeout_s: float,
    downstream: stream.Downstream | None = None,
    on_failure: Callable[[str, errors.S3Error], None] | None = None,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> Opened | None:
    """Open the download of one chunk from the first source that sends a byte of it.

    Args:
        nc: the NATS connection.
        sources: whom to ask, in order.
        budget: the download credit of ``nc`` (shared by every download on it).
        window: most download credit of this stream, in frames.
        timeout_s: how long to wait for a node's answer or its next frame, seconds.
        downstream: the sender the bytes are relayed to, if any (see
            :func:`edgecache.common.stream.download`).
        on_failure: told of each source that failed before its first byte (unreachable,
            ``NoSuchKey``, a stream that broke or ended at once), before the next is asked.
        liveness: heartbeats asked of each node and the silence after which it is taken
            for dead (and the next asked).

    Returns:
        The started stream, or ``None`` if no source served the chunk.
    """
    for node, request in sources:
        try:
            _, body = await stream.download(
                nc,
                subjects.chunk_get(node),
                request,
                budget=budget,
                window=window,
                timeout_s=timeout_s,
                downstream=downstream,
                liveness=liveness,
            )
            try:
                first = await anext(body)  # starts the stream: aclose() now cancels it
            except StopAsyncIteration:
                raise errors.IncompleteBody(f"chunk ended at byte {request.first}") from None
        except errors.S3Error as exc:
            log.warning("chunk.peer_read_failed", chunk=request.chunk_id, peer=node, error=exc.code)
            if on_failure is not None:
                on_failure(node, exc)
            continue
        return Opened(node, body, first)
    return None
