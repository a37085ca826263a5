"""uvicorn's httptools HTTP/1.1 protocol with the limits an S3 endpoint needs on the request
head, and S3 errors instead of uvicorn's plain-text 400.

uvicorn has no timeout for reading a request's head (its keep-alive timer stops at the
first byte, and a new connection has none), nor a limit on its size: a client sending a
header a byte a minute, or megabytes of headers, held a connection (and memory) for as
long as it liked. Here:

- the head (request line and headers) must arrive within ``header_timeout_s`` of the
  connection opening or of its first byte; else ``400 RequestTimeout`` and the
  connection closes;
- a body must keep arriving: ``body_idle_timeout_s`` without a byte while the app waits
  for one (not while it holds reading back, nor while the client waits for ``100
  Continue``) gets ``400 RequestTimeout`` and closes the connection, as S3 does after
  about 20 s; the app sees a disconnect, so nothing of the upload is kept;
- the head may hold at most :data:`MAX_HEAD_BYTES`; else ``400
  RequestHeaderSectionTooLarge`` (the gateway's own limit for headers it reads,
  :data:`edgecache.gateway.exchange.MAX_HEADER_BYTES`, is smaller and answered by the
  app);
- what httptools cannot parse gets ``400 InvalidRequest`` as S3 XML;
- a connection closed while the client may still be sending (an answer given before the
  body was read, :mod:`.keepalive`) **lingers**: the answer is sent, the sending side is
  shut down (FIN), and what the client still sends is read and dropped for up to
  :data:`LINGER_S` or until it closes its side. Closing at once, with unread bytes in
  the socket, makes the kernel answer with a reset that can destroy the answer before
  the client read it (RFC 9112 §9.6; nginx's ``lingering_close``).

Build the class with :func:`protocol_class` and pass it as uvicorn's ``http``.

Given ``hits`` (:func:`edgecache.gateway.fastpath.hit_answerer`), a GET or HEAD without a
body, other than a health probe, is offered to it first, as its ASGI app: a memory-tier hit
is answered there without passing through the layers uvicorn and the gateway put in front
of the S3 app (proxy headers, health probes, the keep-alive watch), none of which acts on
such a request; anything else goes on to the whole app as before.

The three deadlines of a connection (its head, its body's idle time, and uvicorn's
keep-alive idle time between requests) are numbers checked by one periodic sweep per
event loop (:mod:`.deadlines`), not a timer armed and cancelled per request. Each request
also offers the app a one-write answer (:mod:`.wholeresponse`, in
``scope["extensions"]``) and, on plain TCP, ASGI's zero-copy send of a file span
(:mod:`.zerocopy`).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgecache.common import errors
from edgecache.common.logging import get_logger
from edgecache.common.monitor import HEALTH_PATHS
from edgecache.gateway import deadlines, xml
from edgecache.gateway.keepalive import may_have_body
from edgecache.gateway.wholeresponse import WHOLE_RESPONSE, WholeResponse
from edgecache.gateway.zerocopy import ZEROCOPY_SEND, ZeroCopySend, can_send_files

if TYPE_CHECKING:
    from edgecache.gateway.fastpath import Hits

__all__ = [
    "BODY_IDLE_TIMEOUT_S",
    "HEADER_TIMEOUT_S",
    "LINGER_S",
    "MAX_HEAD_BYTES",
    "GatewayHttpProtocol",
    "protocol_class",
]

log = get_logger("edgecache.gateway")

LINGER_S = 2.0
HEADER_TIMEOUT_S = 10.0
BODY_IDLE_TIMEOUT_S = 20.0
MAX_HEAD_BYTES = 64 * 1024
_READS = (b"GET", b"HEAD")


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: httptools turns it into a parser error."""


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` lingers (see the module
    docstring) instead of closing at once; everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, protocol: GatewayHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        # the calls of every request, bound once (``__getattr__`` costs a lookup a call)
        self.write = transport.write
        self.get_extra_info = transport.get_extra_info

    def close(self) -> None:
        self._protocol._linger()  # noqa: SLF001 - the protocol owns its connection

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()  # noqa: SLF001

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """See the module docstring; the timeouts are set by :func:`protocol_class`."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S
    sweep_interval_s: float = deadlines.interval_for(HEADER_TIMEOUT_S, BODY_IDLE_TIMEOUT_S)
    hits: Hits | None = None  # a staticmethod when set (see protocol_class)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._app = self.app  # the whole app; self.app is chosen per request
        # deadlines in loop.time() seconds, None when not running (see check_deadlines)
        self._head_deadline: float | None = None
        self._body_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._head_bytes = 0
        self._head_error: errors.S3Error | None = None
        self._lingering = False
        self._raw = transport
        self._sends_files = can_send_files(transport)
        self._zerocopies: list[ZeroCopySend] = []  # of the requests not yet answered whole
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        interval = min(self.sweep_interval_s, deadlines.interval_for(self.timeout_keep_alive))
        self._sweeper = deadlines.sweeper(self.loop, interval)
        self._sweeper.add(self, interval)
        self._arm()  # a new connection owes its first request head in time too

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody reads
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._lingering:
            self._raw.close()
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._sweeper.discard(self)
        self._head_deadline = self._body_deadline = self._idle_deadline = None
        super().connection_lost(exc)
        for send in self._zerocopies:
            send.wake()  # a send waiting for the socket gives up
        self._zerocopies.clear()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._count(0)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        if self.hits is not None:
            read = self.parser.get_method() in _READS and not may_have_body(self.headers)
            self.app = self._hit_first if read else self._app
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            self.scope["extensions"] = {WHOLE_RESPONSE: WholeResponse(cycle)}
            if self._sends_files:
                self.scope["extensions"][ZEROCOPY_SEND] = {}
                send = ZeroCopySend(cycle, self._raw)
                cycle.send = send  # type: ignore[method-assign] - what run_asgi hands the app
                self._zerocopies = [z for z in self._zerocopies if not z.done]
                self._zerocopies.append(send)
        self._body_deadline = self.loop.time() + self.body_idle_timeout_s

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_deadline = self.loop.time() + self.body_idle_timeout_s

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_deadline = None

    def on_response_complete(self) -> None:
        """uvicorn's, with its keep-alive timer a deadline of the sweep (uvicorn 0.54:
        count the request, resume reading, start a pipelined request or wait for one)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = self.loop.time() + self.timeout_keep_alive

    def _unset_keepalive_if_required(self) -> None:
        self._idle_deadline = None
        super()._unset_keepalive_if_required()

    def check_deadlines(self, now: float) -> None:
        """Act on the deadlines passed at ``now`` (called by the sweep, :mod:`.deadlines`)."""
        if self._head_deadline is not None and now >= self._head_deadline:
            self._head_deadline = None
            self._head_timed_out()
        if self._body_deadline is not None and now >= self._body_deadline:
            self._body_deadline = None
            self._body_idle()
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_deadline = None
            self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        """An S3 XML error (RequestHeaderSectionTooLarge, else InvalidRequest) for what
        uvicorn rejects before the app sees it; the connection then closes."""
        error = self._head_error or errors.InvalidRequest(f"Invalid HTTP request: {msg}")
        self._write_error(error)

    # -- internals ---------------------------------------------------------------------------
    async def _hit_first(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI app of a GET or HEAD without a body: a memory-tier hit, else the whole
        app (see the module docstring)."""
        assert self.hits is not None
        if scope["path"] in HEALTH_PATHS or not await self.hits(scope, send):
            await self._app(scope, receive, send)

    def _linger(self) -> None:
        """Close the connection, lingering if the client may still be sending."""
        if self._lingering or self._raw.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.more_body or not self._raw.can_write_eof():
            self._raw.close()  # nothing more to come: close at once
            return
        self._lingering = True
        self._disarm()
        self._watch_body(False)
        self._raw.write_eof()  # after what is buffered: the answer goes first
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self._raw.close)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_error = errors.RequestHeaderSectionTooLarge()
            raise _HeadTooLarge

    def _arm(self) -> None:
        self._head_deadline = self.loop.time() + self.header_timeout_s

    def _disarm(self) -> None:
        self._head_deadline = None

    def _watch_body(self, on: bool) -> None:
        self._body_deadline = self.loop.time() + self.body_idle_timeout_s if on else None

    def _body_idle(self) -> None:
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if cycle.response_complete:
            return  # answered early: uvicorn discards the rest (see keepalive.py)
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._watch_body(True)  # the app is not asking for the body yet
            return
        log.info(
            "request.body_timeout", client=str(self.client), timeout_s=self.body_idle_timeout_s
        )
        if cycle.response_started:
            self.transport.close()
            return
        self._write_error(errors.RequestTimeout())

    def _head_timed_out(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is on its way: nothing can be said
            return
        log.info("request.head_timeout", client=str(self.client), timeout_s=self.header_timeout_s)
        self._write_error(
            errors.RequestTimeout(
                "Your socket connection to the server was not read from or written to "
                "within the timeout period."
            )
        )

    def _write_error(self, error: errors.S3Error) -> None:
        request_id = os.urandom(8).hex().upper()
        body = xml.error(error.code, error.message, "", request_id)
        reason = {400: b"Bad Request", 403: b"Forbidden"}.get(error.status, b"Error")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/xml\r\ncontent-length: %d\r\n"
            b"x-amz-request-id: %s\r\nserver: edgecache\r\nconnection: close\r\n\r\n"
            % (error.status, reason, len(body), request_id.encode())
        )
        self.transport.write(head + body)
        self.transport.close()


def protocol_class(
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    hits: Hits | None = None,
) -> type[GatewayHttpProtocol]:
    """:class:`GatewayHttpProtocol` with its timeouts (seconds) set, and the memory-tier
    fast path it offers plain reads to first (``None``: none), for
    ``uvicorn.Config(http=…)``."""
    attributes: dict[str, Any] = {
        "header_timeout_s": header_timeout_s,
        "body_idle_timeout_s": body_idle_timeout_s,
        "sweep_interval_s": deadlines.interval_for(header_timeout_s, body_idle_timeout_s),
        "hits": None if hits is None else staticmethod(hits),
    }
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), attributes)
