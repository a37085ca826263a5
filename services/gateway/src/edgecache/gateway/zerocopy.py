"""ASGI's zero-copy send (``http.response.zerocopysend``) in the gateway's HTTP protocol:
a span of a file goes from the page cache to the client's socket with ``os.sendfile``,
never through Python.

A cold GET on a cache node's host reads the fill's chunk file as the bytes land in it
(:mod:`.shortcircuit`, file frames). Reading each span into Python and handing it to
uvicorn cost the gateway about a third of a cold read's CPU (a ``pread`` copy, then
the socket write's copy). So the protocol (:mod:`.httpprotocol`) offers the ASGI
extension of that name in ``scope["extensions"]`` on plain-TCP connections (not over TLS:
the kernel cannot encrypt) and takes, after ``http.response.start``, messages::

    {"type": "http.response.zerocopysend", "file": fd_or_file, "offset": int,
     "count": int, "more_body": bool}

``file`` is an OS file descriptor (an ``int``) or an object with ``fileno()``; the app
keeps it open until its ``send`` returns. ``offset`` defaults to the file's position,
``count`` to the rest of the file. Plain ``http.response.body`` messages may come before,
between and after them.

What uvicorn's own ``send`` keeps, this keeps: ``Content-Length`` accounting (a longer
body is refused, a shorter one at ``more_body=False`` too), chunked framing when the
answer has no length, no body for HEAD, completion (keep-alive or ``Connection: close``,
the next pipelined request) and a no-op once the client is gone.

How bytes reach the socket without breaking the transport: the transport keeps the
socket; this writes to a ``dup`` of its descriptor, and only while the transport's own
buffer is empty (what uvicorn wrote before — the head, a plain body piece — goes first:
the buffer limits are set to zero for the wait, so the transport says when it is empty).
``os.sendfile`` runs non-blocking on the event loop thread; when the socket is full, the
loop watches the duplicate for writability (``loop.add_writer``; uvloop and asyncio's
own loop both allow it, the transport's descriptor being another number). The
duplicate is closed when the message is done, when the connection is lost (the protocol
wakes a waiting send, :meth:`ZeroCopySend.wake`) and when the sending task is cancelled,
so it never keeps a connection open on its own.
"""

from __future__ import annotations

import asyncio
import errno
import os
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["ZEROCOPY_SEND", "FilePiece", "ZeroCopySend", "can_send_files"]

ZEROCOPY_SEND = "http.response.zerocopysend"
"""The ASGI extension's name, and its message's ``type``."""

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED)

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FilePiece:
    """``count`` bytes of the open file ``fd`` from ``offset``: a piece of a body sent by
    the server from the file. The producer keeps ``fd`` open until the consumer asks for
    the next piece (or closes the iterator). ``len()`` is ``count``.
    """

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FilePiece(fd={self.fd}, offset={self.offset}, count={self.count})"


def can_send_files(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` is a plain TCP socket that ``os.sendfile`` can write to."""
    return (
        hasattr(os, "sendfile")
        and transport.get_extra_info("sslcontext") is None
        and transport.get_extra_info("ssl_object") is None
        and transport.get_extra_info("socket") is not None
    )


class ZeroCopySend:
    """The ASGI ``send`` of one request: ``http.response.zerocopysend`` messages here, the
    others to uvicorn's own ``send`` (see the module docstring).

    Args:
        cycle: uvicorn's exchange of this request.
        transport: the connection's own transport (not a wrapper of it).
    """

    __slots__ = ("_cycle_ref", "_lost", "_transport", "_waiter")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        # weakly: the cycle holds this as its ``send``, and a cycle of the two per request
        # would be left to the garbage collector (tests/integration/test_gateway_whole_answers.py)
        self._cycle_ref = weakref.ref(cycle)
        self._transport = transport
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False

    @property
    def _cycle(self) -> RequestResponseCycle:
        cycle = self._cycle_ref()
        if cycle is None:  # only after the request's task ended: nothing sends then
            raise RuntimeError("the request is over")
        return cycle

    @property
    def done(self) -> bool:
        """The answer is complete, or the connection is lost."""
        cycle = self._cycle_ref()
        return cycle is None or cycle.response_complete or self._lost

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        cycle = self._cycle
        if message["type"] != ZEROCOPY_SEND:
            await type(cycle).send(cycle, message)  # uvicorn's own (the instance's is this)
            return
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message {ZEROCOPY_SEND!r} outside a response body."
            )
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        more_body = message.get("more_body", False)
        if cycle.scope["method"] == "HEAD":
            cycle.expected_content_length = 0
        elif cycle.chunked_encoding:
            if count:
                cycle.transport.write(b"%x\r\n" % count)
                await self._sendfile(fd, offset, count)
                cycle.transport.write(b"\r\n")
            if not more_body:
                cycle.transport.write(b"0\r\n\r\n")
        else:
            if count > cycle.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            cycle.expected_content_length -= count
            await self._sendfile(fd, offset, count)
        if cycle.disconnected:
            return
        if message.get("offset") is None:
            os.lseek(fd, offset + count, os.SEEK_SET)
        if not more_body:
            if cycle.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()

    def wake(self) -> None:
        """The connection is lost: a send waiting for the socket gives up, and later ones
        do nothing (the protocol calls this from ``connection_lost``)."""
        self._lost = True
        cycle = self._cycle_ref()
        if cycle is not None:
            cycle.disconnected = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- internals ---------------------------------------------------------------------------
    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` to the client; returns early if the
        client is gone (the connection is then closed).

        Raises:
            RuntimeError: the file ended before ``count`` bytes.
            OSError: reading the file failed.
        """
        cycle = self._cycle
        transport = self._transport
        sock = os.dup(transport.get_extra_info("socket").fileno())
        try:
            while count and not cycle.disconnected:
                if transport.get_write_buffer_size():
                    await self._emptied()
                    continue
                try:
                    sent = os.sendfile(sock, fd, offset, count)
                except BlockingIOError:
                    await self._writable(sock)
                    continue
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
                    cycle.disconnected = True
                    transport.abort()
                    return
                if not sent:
                    raise RuntimeError(f"the file ended {count} bytes short of the span")
                offset += sent
                count -= sent
        finally:
            os.close(sock)

    async def _emptied(self) -> None:
        """Wait until the transport has written everything it holds (or the client is gone)."""
        cycle, transport = self._cycle, self._transport
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)  # pauses writing now, resumes when empty
        try:
            while transport.get_write_buffer_size() and not cycle.disconnected:
                await cycle.flow.drain()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _writable(self, sock: int) -> None:
        """Wait until ``sock`` can take more (or the connection is lost)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        loop.add_writer(sock, _wake, waiter)
        try:
            await waiter
        finally:
            loop.remove_writer(sock)
            self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
