"""An object's bytes, streamed chunk by chunk from the cache nodes that hold them.

The writeback service hands :meth:`ObjectBody.__aiter__` to ``Origin.put_object``: the
object is never held in memory. Per chunk, the first node that answers wins (the node
that served the previous chunk is asked first); a node that fails mid-chunk is replaced
by the next one, resuming at the byte where the stream broke (``ChunkGet.first``). While
the origin consumes the tail of one chunk, the next chunk's stream is already opened
(prefetch), so the origin does not wait a round trip at every chunk boundary. Opening a
chunk on the first node that answers is :func:`edgecache.common.peers.open_chunk`, which
cache nodes use for their peer reads too.

Before the last piece is handed over, the whole body is checked against the manifest
(total size; MD5 when the ETag is a plain MD5) and a caller-given fence runs, so an
origin that stops reading after ``size`` bytes still never commits unchecked bytes.

Memory: at most two download windows (``window_frames`` frames of up to ``max_payload``
bytes each, lent by the connection's credit budget) plus one held piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from edgecache.common import errors, peers, stream, wire
from edgecache.common.checksums import Digests
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.credit import CreditBudget

__all__ = ["ObjectBody"]

log = get_logger(__name__)

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")

_closing: set[asyncio.Future[None]] = set()  # strong refs to streams being closed



class ObjectBody:
    """The bytes of one manifest's version, read from the cache nodes, in order.

    Args:
        nc: the NATS connection.
        manifest: the (dirty) manifest whose chunks to read; ``ChunkRef.nodes`` when set,
            else ``manifest.nodes``, say who holds each chunk.
        credit: the download credit of ``nc`` (shared by every download on it).
        window_frames: most download credit per chunk stream, in frames.
        timeout_s: how long to wait for a node's first answer or its next frame, seconds.
        prefetch: open the next chunk's stream while the current one drains.
        before_last: awaited after every byte has been read and checked, before the last
            piece is yielded; raise from it to abort the origin write (the fence).
        liveness: idle heartbeats asked of each node, and the silence after which it is
            taken for dead and the next holder asked (:mod:`edgecache.common.heartbeats`).

    Attributes:
        bytes_read: bytes received from the nodes so far.
        nodes_used: the node that served each chunk (the last one, after a failover).

    Iterating raises:
        ServiceUnavailable: no node holding a chunk could serve it (all unreachable, or
            all answered ``NoSuchKey``, or every stream broke).
        IncompleteBody: the chunks do not add up to ``manifest.size``.
        BadDigest: the bytes' MD5 is not the manifest's (plain) ETag.
    """

    def __init__(
        self,
        nc: NATS,
        manifest: wire.Manifest,
        *,
        credit: CreditBudget,
        window_frames: int = 8,
        timeout_s: float = 30.0,
        prefetch: bool = True,
        before_last: Callable[[], Awaitable[None]] | None = None,
        liveness: Liveness = DEFAULT_LIVENESS,
    ) -> None:
        self._nc = nc
        self._liveness = liveness
        self._manifest = manifest
        self._credit = credit
        self._window = max(1, window_frames)
        self._timeout = timeout_s
        self._prefetch = prefetch
        self._before_last = before_last
        self._preferred: str | None = None  # served the last chunk: asked first
        self._demoted: set[str] = set()  # failed during this object: asked last
        self.bytes_read = 0
        self.nodes_used: list[str] = []

    # -- node choice ---------------------------------------------------------------------------
    def _candidates(self, chunk: wire.ChunkRef) -> list[str]:
        nodes = list(dict.fromkeys(chunk.nodes or self._manifest.nodes))
        # stable sort: the preferred node, then the others in manifest order, then failed ones

        def rank(node: str) -> int:
            return 0 if node == self._preferred else 2 if node in self._demoted else 1

        return sorted(nodes, key=rank)

    async def _open(self, chunk: wire.ChunkRef, first: int, order: list[str]) -> peers.Opened:
        """Open a stream of ``chunk`` from byte ``first`` on the first node of ``order`` that
        answers with at least one byte. Nodes that fail move to the end of ``order``.

        Raises:
            ServiceUnavailable: no node in ``order`` served it.
        """
        problems: list[str] = []

        def failed(node: str, exc: errors.S3Error) -> None:
            problems.append(f"{node}: {exc.code} {exc.message}")
            self._demoted.add(node)
            order.remove(node)
            order.append(node)

        request = wire.ChunkGet(chunk_id=chunk.id, first=first)
        opened = await peers.open_chunk(
            self._nc,
            [(node, request) for node in order],
            budget=self._credit,
            window=self._window,
            timeout_s=self._timeout,
            on_failure=failed,
            liveness=self._liveness,
        )
        if opened is None:
            raise errors.ServiceUnavailable(
                f"no node serves chunk {chunk.id} from byte {first}: "
                + ("; ".join(problems) or "no nodes listed"),
                retry_after_s=1,
            )
        self._demoted.discard(opened.node)
        return opened

    # -- one chunk -----------------------------------------------------------------------------
    async def _chunk(self, chunk: wire.ChunkRef, opened: peers.Opened | None) -> AsyncIterator[bytes]:
        """The bytes of one chunk, failing over between its nodes mid-stream."""
        order = self._candidates(chunk)
        budget = 2 * max(1, len(order))  # stream breaks tolerated for this chunk
        got = 0
        while True:
            if opened is None:
                opened = await self._open(chunk, got, order)
            node, body, piece = opened
            opened = None
            try:
                while True:
                    if got + len(piece) > chunk.size:
                        raise errors.IncompleteBody(
                            f"chunk {chunk.id} on {node} is longer than {chunk.size} bytes"
                        )
                    got += len(piece)
                    self.bytes_read += len(piece)
                    yield piece
                    try:
                        piece = await anext(body)
                    except StopAsyncIteration:
                        break
                if got != chunk.size:
                    raise errors.IncompleteBody(
                        f"chunk {chunk.id} on {node} ended at {got} of {chunk.size} bytes"
                    )
            except errors.S3Error as exc:
                budget -= 1
                log.warning(
                    "writeback.chunk_stream_broke",
                    chunk=chunk.id,
                    node=node,
                    at=got,
                    error=f"{exc.code}: {exc.message}",
                    retries_left=budget,
                )
                if self._preferred == node:
                    self._preferred = None
                self._demoted.add(node)
                if node in order:
                    order.remove(node)
                    order.append(node)
                if budget <= 0:
                    raise errors.ServiceUnavailable(
                        f"chunk {chunk.id}: every stream broke, last on {node}: {exc.message}",
                        retry_after_s=1,
                    ) from exc
                continue
            finally:
                with contextlib.suppress(Exception):
                    await body.aclose()  # type: ignore[attr-defined]
            self._preferred = node
            self.nodes_used.append(node)
            return

    # -- the object ----------------------------------------------------------------------------
    async def _pieces(self) -> AsyncIterator[bytes]:
        chunks = [c for c in self._manifest.chunks if c.size > 0]
        ahead: asyncio.Task[peers.Opened] | None = None
        # start the next chunk's stream once this many bytes of the current one are left
        threshold = self._window * stream.frame_bytes(self._nc)
        try:
            for i, chunk in enumerate(chunks):
                opened: peers.Opened | None = None
                if ahead is not None:
                    task, ahead = ahead, None
                    try:
                        opened = await task
                    except errors.S3Error:
                        opened = None  # _chunk tries every node itself
                following = chunks[i + 1] if i + 1 < len(chunks) else None
                left = chunk.size
                async for piece in self._chunk(chunk, opened):
                    left -= len(piece)
                    if self._prefetch and following and ahead is None and left <= threshold:
                        ahead = asyncio.create_task(
                            self._open(following, 0, self._candidates(following))
                        )
                    yield piece
        finally:
            if ahead is not None:
                _discard(ahead)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the object's bytes in pieces of at most ``max_payload`` bytes, in order.

        The last piece is held back until the whole body is checked and the fence passed.
        """
        digests = Digests()
        held: bytes | None = None
        async for piece in self._pieces():
            if held is not None:
                yield held
            digests.update(piece)
            held = piece
        m = self._manifest
        if digests.size != m.size:
            raise errors.IncompleteBody(f"chunks hold {digests.size} bytes, manifest says {m.size}")
        etag = m.etag.strip('"').lower()
        if m.parts_count is None and _PLAIN_MD5.match(etag) and digests.md5_hex != etag:
            raise errors.BadDigest(f"bytes have MD5 {digests.md5_hex}, manifest ETag is {etag}")
        if self._before_last is not None:
            await self._before_last()
        if held is not None:
            yield held


def _discard(task: asyncio.Task[peers.Opened]) -> None:
    """Drop a prefetch: cancel it, and close the stream it opened if it got that far."""

    def close_opened(done: asyncio.Task[peers.Opened]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        _, body, _ = done.result()
        closing = asyncio.ensure_future(body.aclose())  # type: ignore[attr-defined]
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)

    task.add_done_callback(close_opened)
    task.cancel()
