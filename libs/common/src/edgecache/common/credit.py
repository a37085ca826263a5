"""Download credit of one NATS connection, shared by every download stream on it.

nats-server buffers at most ``max_pending`` bytes (64 MiB by default) on their way to one
client connection; past that it marks the connection a slow consumer and drops its
messages, and every stream on the connection breaks at once. A stream's own window
(``Ec-Credit``, 8 frames of 1 MiB by default) bounds that stream, not the sum over the
streams: eight of them fill 64 MiB. So whoever owns a connection owns one
:class:`CreditBudget` for it, and every download stream on the connection lends the credit
it grants its sender from that budget:

* a new stream takes its initial window from the budget (at least one frame, so it always
  progresses; it waits, in arrival order, while the budget is spent);
* each frame it reads goes back to the budget at once, and it takes credit again only as
  the budget can spare it — while other streams wait, it shrinks to nothing and queues
  behind them, so any number of streams share the budget and all of them progress;
* everything it holds goes back when it ends, fails, is closed early or cancelled.

So the bytes granted and not yet read on one connection, wherever they are (the server's
buffer, the socket, nats-py's pending queues), never exceed the budget. Keep the budget at
most a quarter of the server's ``max_pending``: nats-server counts a write to the socket as
pending until the whole batch is written, so what it holds against ``max_pending`` can reach
about twice the credit outstanding (measured: 52 MiB with a budget of 32 MiB). The default,
16 MiB, is a quarter of the server's default. Credit is counted in frames of at most
:func:`frame_bytes`.

A stream that forwards what it reads into another credit-controlled stream (a cache node
relaying a peer's chunk to the gateway) asks for no more than the next hop's credit (the
``limit`` of :class:`Share`): it never holds budget while it waits for credit downstream,
so no cycle of budgets waiting on each other can form.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from edgecache.common import errors

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = [
    "DEFAULT_CREDIT_BYTES",
    "HEADER_ROOM",
    "MAX_WAITING",
    "CreditBudget",
    "Share",
    "frame_bytes",
]

MiB = 1024 * 1024
DEFAULT_CREDIT_BYTES = 16 * MiB  # a quarter of nats-server's default max_pending (64 MiB)
HEADER_ROOM = 256  # bytes kept free for NATS headers ("NATS/1.0\r\nEc-Seq: …\r\n\r\n")
MAX_WAITING = 4096  # streams queued for credit on one connection before new ones are refused


def frame_bytes(nc: NATS) -> int:
    """Largest frame body for this connection: the server's ``max_payload`` less room for
    headers (the server counts headers in ``max_payload``; nats-py checks only the body)."""
    return max(1024, nc.max_payload - HEADER_ROOM)


class CreditBudget:
    """The frames of credit every download stream on one connection may hold together.

    Args:
        nc: the (connected) connection the streams receive on; its ``max_payload`` sets the
            frame size.
        max_bytes: bytes granted and not yet read, all streams together; at most a quarter
            of the server's ``max_pending`` (64 MiB by default; see the module docstring).
            At least one frame, whatever it says.
        max_waiting: streams that may queue for credit at once; more are refused.

    Attributes:
        nc: the connection.
        frame_bytes: the frame size of ``nc``, bytes.
        frames: the budget in frames (``max_bytes // frame_bytes``, at least 1).

    Raises:
        ValueError: ``max_bytes`` or ``max_waiting`` is not positive.
    """

    def __init__(
        self, nc: NATS, *, max_bytes: int = DEFAULT_CREDIT_BYTES, max_waiting: int = MAX_WAITING
    ) -> None:
        if max_bytes <= 0 or max_waiting <= 0:
            raise ValueError(f"credit budget of {max_bytes} bytes, {max_waiting} waiting")
        self.nc = nc
        self.frame_bytes = frame_bytes(nc)
        self.frames = max(1, max_bytes // self.frame_bytes)
        self._free = self.frames
        self._max_waiting = max_waiting
        self._waiting: deque[tuple[asyncio.Future[int], int]] = deque()

    @property
    def available(self) -> int:
        """Frames nobody holds right now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Streams queued for credit right now."""
        return len(self._waiting)

    def take_nowait(self, want: int) -> int:
        """Up to ``want`` frames if they are free now; 0 if none is, or if streams are
        queued (they come first)."""
        if self._waiting or want <= 0:
            return 0
        n = min(want, self._free)
        self._free -= n
        return n

    def request(self, want: int) -> asyncio.Future[int]:
        """Queue for between 1 and ``want`` frames; the future's result is how many were
        taken (granted in arrival order, as frames come back). Pair every request with
        :meth:`withdraw` once done with the future (it returns a grant nobody took up).

        Raises:
            SlowDown: ``max_waiting`` streams are queued already.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        n = self.take_nowait(max(1, want))
        if n:
            future.set_result(n)
        elif len(self._waiting) >= self._max_waiting:
            raise errors.SlowDown(f"{len(self._waiting)} download streams wait for credit")
        else:
            self._waiting.append((future, max(1, want)))
        return future

    def withdraw(self, future: asyncio.Future[int]) -> None:
        """Leave the queue, or return the frames granted to a request nobody took up."""
        if not future.done():
            future.cancel()
            self._waiting = deque(w for w in self._waiting if w[0] is not future)
            self._serve()  # a request that left the head of the queue blocks nobody
        elif not future.cancelled():
            self.give(future.result())

    async def take(self, want: int, *, timeout_s: float) -> int:
        """Between 1 and ``want`` frames, waiting in arrival order while none is free.

        Raises:
            ServiceUnavailable: none came free within ``timeout_s``.
            SlowDown: ``max_waiting`` streams are queued already.
        """
        future = self.request(want)
        try:
            await asyncio.wait((future,), timeout=timeout_s)
        except BaseException:  # cancelled: a grant that came meanwhile goes back
            self.withdraw(future)
            raise
        if not future.done():
            self.withdraw(future)
            raise errors.ServiceUnavailable(
                f"no download credit free on this connection for {timeout_s}s", retry_after_s=1
            )
        return future.result()

    def give(self, frames: int) -> None:
        """Return frames (read, or never to be used) to the budget and serve the queue.

        Raises:
            ValueError: more frames come back than were taken.
        """
        if frames < 0 or self._free + frames > self.frames:
            raise ValueError(f"{frames} frames back to a budget with {self._free}/{self.frames} free")
        self._free += frames
        self._serve()

    def _serve(self) -> None:
        while self._waiting and self._free:
            future, want = self._waiting[0]
            if future.done():  # cancelled by its owner
                self._waiting.popleft()
                continue
            n = min(want, self._free)
            self._free -= n
            self._waiting.popleft()
            future.set_result(n)


class Share:
    """One receiving stream's part of a :class:`CreditBudget`.

    ``held``: frames taken from the budget, i.e. granted to the sender and not read yet (in
    flight, or waiting in the subscription); a frame read goes back to the budget at once.
    Use: :meth:`open` (the initial credit, sent with the request), :meth:`frame_read` for
    every frame handed to the reader, :meth:`regrant` before waiting for the next message
    (the credit to send the sender now, if any), and, when the stream is :attr:`starved`,
    :meth:`request` then :meth:`accept` (or :meth:`withdraw`) for more; :meth:`close`
    always.

    ``limit`` (to :meth:`open`, :meth:`regrant`, :meth:`request`) caps what the stream
    holds below its window: a relay passes the credit of the stream it forwards to, so every
    frame it asks for can be passed on at once and never waits downstream while it holds
    budget (which could otherwise deadlock two budgets against each other).

    Args:
        budget: the connection's budget.
        window: most frames the stream holds at once (its ``Ec-Credit``), at most the
            whole budget.
    """

    def __init__(self, budget: CreditBudget, window: int) -> None:
        self.budget = budget
        self.window = max(1, min(window, budget.frames))
        self._batch = max(1, self.window // 2)
        self.held = 0
        self._since_grant = 0  # frames read since credit was last granted
        self._request: asyncio.Future[int] | None = None
        self._closed = False

    @property
    def starved(self) -> bool:
        """The sender holds no credit: it can only end the stream until some comes."""
        return self.held == 0

    def _room(self, limit: int | None) -> int:
        target = self.window if limit is None else max(1, min(self.window, limit))
        return max(0, target - self.held)

    async def open(self, *, limit: int | None = None, timeout_s: float) -> int:
        """Take the initial credit: between 1 and ``window`` (or ``limit``) frames, waiting
        in turn.

        Raises:
            ServiceUnavailable: the budget had nothing free within ``timeout_s``.
            SlowDown: too many streams are queued already.
        """
        self.held = await self.budget.take(self._room(limit), timeout_s=timeout_s)
        return self.held

    def frame_read(self) -> None:
        """A frame was handed to the reader: its credit goes back to the budget.

        Raises:
            InternalError: the sender sent more frames than it was granted.
        """
        if self.held <= 0:
            raise errors.InternalError("the sender sent a frame it had no credit for")
        self.held -= 1
        self._since_grant += 1
        self.budget.give(1)

    def regrant(self, limit: int | None = None) -> int:
        """Frames of credit to send the sender now (0: none).

        Once half the window was read since the last grant, or everything granted: as much
        as the budget can spare right now, up to the window (or ``limit``); nothing while
        other streams are queued for credit (they come first).
        """
        room = self._room(limit)
        if not room or (self.held and self._since_grant < self._batch):
            return 0
        more = self.budget.take_nowait(room)
        if more:
            self.held += more
            self._since_grant = 0
        return more

    def request(self, limit: int | None = None) -> asyncio.Future[int]:
        """Queue for more credit (up to the window, or ``limit``); then either
        :meth:`accept` the future's frames or :meth:`withdraw` (always safe, also after
        ``accept``).

        Raises:
            SlowDown: too many streams are queued already.
        """
        self.withdraw()
        self._request = self.budget.request(max(1, self._room(limit)))
        return self._request

    def accept(self) -> int:
        """Take up the frames the (done) request was granted; how many."""
        assert self._request is not None and self._request.done(), "request() first"
        frames = self._request.result()
        self._request = None
        self.held += frames
        self._since_grant = 0
        return frames

    def withdraw(self) -> None:
        """Drop a request not taken up (its grant, if any, goes back to the budget)."""
        if self._request is not None:
            self.budget.withdraw(self._request)
            self._request = None

    def close(self) -> None:
        """Give everything held (and any request's grant) back to the budget. Idempotent."""
        self.withdraw()
        if not self._closed:
            self._closed = True
            self.budget.give(self.held)
            self.held = 0
