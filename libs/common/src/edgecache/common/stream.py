"""Byte streams over core NATS: frames that fit ``max_payload``, in order, with credit.

The protocol (docs/protocol.md has the full description):

* A **frame** is a NATS message whose header ``Ec-Seq`` holds its sequence number (0, 1,
  …) and whose body is raw bytes, at most :func:`frame_bytes` long.
* The stream ends with a JSON :class:`~edgecache.common.wire.End` (frame count, byte
  count, CRC-32 of all bytes) or is cut by a JSON :class:`~edgecache.common.wire.Error`.
* The receiver grants **credit** (:class:`~edgecache.common.wire.Credit`, in frames); the
  sender never has more frames outstanding than it was granted, so a slow reader slows
  the writer and nothing queues without bound or gets dropped as a slow consumer.
* Every download stream on one connection lends its credit from that connection's
  :class:`~edgecache.common.credit.CreditBudget`: the server buffers at most
  ``max_pending`` bytes for a connection, whatever the number of streams on it.

Downloads (``s3.getobject``, chunk reads): the requester publishes the request with a
reply inbox and header ``Ec-Credit: <window>``; the server answers on that inbox with the
reply Struct (header ``Ec-Stream: <credit subject>``), the frames, and ``End``; the
requester sends ``Credit`` (or ``Error`` to cancel) to the credit subject.

Uploads (``s3.putobject``, ``s3.multipart.upload``): the requester publishes the request
with a reply inbox; the server answers ``Credit(frames=window, subject=<data subject>)``
(or ``Error``); the requester sends frames and then ``End`` (or ``Error`` to abort) to the
data subject; the server keeps granting ``Credit`` on the inbox and finally answers the
result Struct (or ``Error``) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog
from nats.errors import NoRespondersError as NatsNoResponders
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError as NatsNoStreamResponse
from nats.js.errors import ServiceUnavailableError as NatsServiceUnavailable

from edgecache.common import errors, heartbeats, wire
from edgecache.common.backoff import Backoff
from edgecache.common.credit import HEADER_ROOM, CreditBudget, Share, frame_bytes
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = [
    "HDR_CREDIT",
    "HDR_FILE",
    "HDR_REQUEST_ID",
    "HEADER_ROOM",
    "HDR_SEQ",
    "HDR_STREAM",
    "DownloadSender",
    "Downstream",
    "ReadFile",
    "UploadReceiver",
    "download",
    "error_of",
    "frame_bytes",
    "is_frame",
    "open_request",
    "read_control",
    "send_error",
    "upload",
]

HDR_SEQ = "Ec-Seq"
HDR_FILE = "Ec-File"  # a file frame: its body is a wire.FileSpan, not the bytes
HDR_CREDIT = "Ec-Credit"
HDR_STREAM = "Ec-Stream"
HDR_REQUEST_ID = "Ec-Request-Id"  # optional: the caller's request id, for the node's log lines
_MAX_WINDOW = 64


# a node may be (re)starting: pauses of 0.03 .. 0.48 s, 0.93 s in all
NO_RESPONDER_RETRIES_S = Backoff(base_s=0.03, max_s=0.5).delays(5)


def _no_responders(msg: Msg) -> bool:
    return not msg.data and (msg.headers or {}).get("Status") == "503"


async def open_request(
    nc: NATS,
    sub: Subscription,
    subject: str,
    payload: bytes,
    *,
    reply: str,
    headers: dict[str, str] | None,
    timeout_s: float,
    liveness: Liveness | None = DEFAULT_LIVENESS,
) -> Msg:
    """Publish a request and return the first message of its answer.

    The request carries the caller's ``request_id`` (structlog context) as
    ``Ec-Request-Id``, so the serving node's log lines share it.

    NATS answers "no responders" at once when no node is subscribed (one may be starting
    or restarting): the request is sent again after short pauses (1 s in all) before that
    answer is returned as it is.

    With ``liveness``, the server is asked for idle heartbeats (:mod:`.heartbeats`), which
    are skipped here, and a server silent for ``liveness.timeout_s`` is taken for dead.

    Raises:
        ServiceUnavailable: nothing answered within ``timeout_s``, or the server that took
            the request went silent for ``liveness.timeout_s``.
        MaxMessageLengthExceeded: ``payload`` does not fit one frame of this connection
            (publishing it would make the server drop the whole connection).
    """
    if len(payload) > frame_bytes(nc):
        raise errors.MaxMessageLengthExceeded(
            f"The request does not fit one {nc.max_payload}-byte NATS message."
        )
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        headers = {**(headers or {}), HDR_REQUEST_ID: str(request_id)}
    if liveness is not None:
        headers = {**(headers or {}), **liveness.request_headers()}
    for pause in (*NO_RESPONDER_RETRIES_S, None):
        await nc.publish(subject, payload, reply=reply, headers=headers)
        try:
            msg = await heartbeats.next_message(sub, timeout_s, liveness)
        except NatsTimeoutError as exc:
            raise errors.ServiceUnavailable(f"no answer on {subject}", retry_after_s=1) from exc
        if pause is None or not _no_responders(msg):
            return msg
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def _unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - the connection is already closed: nothing to release
        pass


def is_frame(msg: Msg) -> bool:
    """Whether ``msg`` is a data frame (as opposed to a JSON control message)."""
    return bool(msg.headers) and HDR_SEQ in msg.headers


def read_control(msg: Msg) -> wire.Reply:
    """Decode a JSON control/reply message; raise the S3 error it carries, if any.

    Raises:
        S3Error: the message is a ``wire.Error`` (rebuilt with ``errors.from_code``).
        ServiceUnavailable: the server's "no responders" status: nobody serves the subject.
        InternalError: the message is not a valid reply.
    """
    if _no_responders(msg):
        raise errors.ServiceUnavailable(f"no responders on {msg.subject}", retry_after_s=1)
    try:
        reply = wire.REPLY_DECODER.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise errors.InternalError(f"undecodable reply: {exc}") from exc
    if isinstance(reply, wire.Error):
        raise errors.from_code(
            reply.code, reply.message, resource=reply.resource, retry_after_s=reply.retry_after_s
        )
    return reply


def error_of(exc: BaseException) -> wire.Error:
    """The wire form of an exception: an S3Error as it is; a NATS or JetStream timeout or
    unavailability (a stream electing a leader after a server was lost: no response, no
    responders) ``ServiceUnavailable`` with ``retry_after_s=1``, which S3 clients retry;
    anything else an InternalError."""
    unavailable = NatsTimeoutError | NatsServiceUnavailable | NatsNoResponders | NatsNoStreamResponse
    if isinstance(exc, unavailable):
        exc = errors.ServiceUnavailable(f"NATS: {type(exc).__name__}: {exc}", retry_after_s=1)
    if isinstance(exc, errors.S3Error):
        return wire.Error(
            code=exc.code, message=exc.message, resource=exc.resource, retry_after_s=exc.retry_after_s
        )
    return wire.Error(code="InternalError", message=f"{type(exc).__name__}: {exc}")


async def send_error(nc: NATS, subject: str, exc: BaseException) -> None:
    """Publish ``exc`` as a ``wire.Error`` to ``subject`` (best effort)."""
    try:
        await nc.publish(subject, wire.encode(error_of(exc)))
    except Exception:  # noqa: BLE001 - the peer is gone or the connection closed: nothing to tell
        pass


class _Checker:
    """Counts frames and bytes and runs the CRC-32 of a stream, then checks its ``End``."""

    def __init__(self) -> None:
        self.frames = 0
        self.size = 0
        self.crc = 0

    def add(self, msg: Msg) -> bytes:
        seq = int(msg.headers[HDR_SEQ])
        if seq != self.frames:
            raise errors.IncompleteBody(f"stream frame {seq} arrived, {self.frames} expected")
        self.frames += 1
        self.size += len(msg.data)
        self.crc = zlib.crc32(msg.data, self.crc)
        return msg.data

    def add_span(self, msg: Msg) -> wire.FileSpan:
        """A file frame: counted (its bytes are the span's, not in the CRC)."""
        seq = int(msg.headers[HDR_SEQ])
        if seq != self.frames:
            raise errors.IncompleteBody(f"stream frame {seq} arrived, {self.frames} expected")
        try:
            span = wire.decode(msg.data, wire.FileSpan)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise errors.InternalError(f"undecodable file frame: {exc}") from exc
        self.frames += 1
        self.size += span.length
        return span

    def check(self, end: wire.End) -> None:
        if (end.frames, end.size, end.crc32) != (self.frames, self.size, self.crc):
            raise errors.IncompleteBody(
                f"stream ended with {self.frames} frames/{self.size} bytes/crc {self.crc:08x}, "
                f"sender says {end.frames}/{end.size}/{end.crc32:08x}"
            )


class _Tally:
    """The sending side of a stream: cuts bytes into numbered frames of at most
    ``frame_bytes`` and counts frames, bytes and CRC-32 for the ``End``."""

    def __init__(self, frame_bytes: int) -> None:
        self._frame = frame_bytes
        self.frames = 0
        self.size = 0
        self.crc = 0

    def cut(self, data: bytes | memoryview) -> Iterator[tuple[bytes, dict[str, str]]]:
        """``(frame body, frame headers)`` for each frame of ``data``, counted as it goes."""
        view = memoryview(data)
        for start in range(0, len(view), self._frame):
            piece = bytes(view[start : start + self._frame])
            headers = {HDR_SEQ: str(self.frames)}
            self.frames += 1
            self.size += len(piece)
            self.crc = zlib.crc32(piece, self.crc)
            yield piece, headers

    def span(self, span: wire.FileSpan) -> tuple[bytes, dict[str, str]]:
        """``(frame body, frame headers)`` of a file frame, counted."""
        headers = {HDR_SEQ: str(self.frames), HDR_FILE: "1"}
        self.frames += 1
        self.size += span.length
        return wire.encode(span), headers

    def end(self, checksums: dict[str, str] | None = None) -> bytes:
        """The encoded ``End`` of everything cut so far."""
        return wire.encode(
            wire.End(frames=self.frames, size=self.size, crc32=self.crc, checksums=dict(checksums or {}))
        )


class Downstream(Protocol):
    """Where a relayed download goes next: a sender with credit of its own (a
    :class:`DownloadSender`)."""

    @property
    def credit(self) -> int:
        """Frames it may send now without waiting."""
        ...

    async def ready(self) -> None:
        """Wait until ``credit`` is at least 1."""
        ...


class DownloadSender:
    """Server side of a download: reply Struct, then frames under credit, then ``End``.

    Args:
        nc: the connection.
        reply: the requester's inbox (``msg.reply`` of the request).
        window: initial credit in frames (the request's ``Ec-Credit`` header).
        idle_timeout_s: how long to wait for credit before giving up (requester gone).
    """

    def __init__(self, nc: NATS, reply: str, *, window: int, idle_timeout_s: float) -> None:
        self._nc = nc
        self._reply = reply
        self._credit = max(0, min(window, _MAX_WINDOW))
        self._idle = idle_timeout_s
        self._sub: Subscription | None = None
        self._tally = _Tally(frame_bytes(nc))

    @staticmethod
    def window_of(msg: Msg) -> int:
        """The initial credit a request asks for (0 if it names none)."""
        try:
            return int((msg.headers or {}).get(HDR_CREDIT, "0"))
        except ValueError:
            return 0

    async def start(self, first: msgspec.Struct) -> None:
        """Send the reply Struct that opens the stream, naming the credit subject."""
        credit_subject = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(credit_subject)
        await self._nc.publish(
            self._reply, wire.encode(first), headers={HDR_STREAM: credit_subject}
        )

    @property
    def credit(self) -> int:
        """Frames it may send now without waiting."""
        return self._credit

    async def ready(self) -> None:
        """Wait until the reader has granted at least one frame of credit (before
        :meth:`start`, only the request's ``Ec-Credit`` counts).

        Raises:
            RequestTimeout: no credit for ``idle_timeout_s``; the reader is gone.
            S3Error: the reader cancelled the stream.
        """
        await self._wait_credit()

    async def _wait_credit(self) -> None:
        while self._credit <= 0:
            if self._sub is None:  # before start(): only the request's credit counts
                raise errors.InternalError("the request granted no credit")
            try:
                msg = await self._sub.next_msg(timeout=self._idle)
            except NatsTimeoutError as exc:
                raise errors.RequestTimeout("stream reader gave no credit") from exc
            control = read_control(msg)  # an Error: the reader cancelled
            if isinstance(control, wire.Credit):
                self._credit += control.frames

    async def send(self, data: bytes | memoryview) -> None:
        """Send ``data`` as one or more frames, waiting for credit as needed.

        Raises:
            RequestTimeout: no credit for ``idle_timeout_s``; the reader is gone.
            S3Error: the reader cancelled the stream.
        """
        for piece, headers in self._tally.cut(data):
            await self._wait_credit()
            self._credit -= 1
            await self._nc.publish(self._reply, piece, headers=headers)

    async def send_span(self, span: wire.FileSpan) -> None:
        """Send a file frame (one frame of credit): the reader, on this host, reads the
        span's bytes from the file itself.

        Raises:
            RequestTimeout, S3Error: as :meth:`send`.
        """
        body, headers = self._tally.span(span)
        await self._wait_credit()
        self._credit -= 1
        await self._nc.publish(self._reply, body, headers=headers)

    async def end(self) -> None:
        """Send ``End`` with the frame count, byte count and CRC-32 of everything sent."""
        await self._nc.publish(self._reply, self._tally.end())

    async def fail(self, exc: BaseException) -> None:
        """Cut the stream with an error (the reader raises it)."""
        await send_error(self._nc, self._reply, exc)

    async def close(self) -> None:
        """Release the credit subscription."""
        if self._sub is not None:
            await _unsubscribe(self._sub)
            self._sub = None


class _CreditedInbox:
    """The receiving end of a credited stream: the next message of ``sub``, granting the
    sender credit first from ``share`` (a part of the connection's budget) as it can spare
    it, and queueing for more when the stream is starved while still taking an ``End`` or
    ``Error`` that comes meanwhile.

    ``grant(frames)`` sends the sender a ``Credit``. ``downstream``, ``liveness``: see
    :func:`download`.
    ``stalled`` turns true once nothing came for ``timeout_s`` (nothing more will).
    """

    def __init__(
        self,
        sub: Subscription,
        share: Share,
        grant: Callable[[int], Awaitable[None]],
        *,
        timeout_s: float,
        downstream: Downstream | None = None,
        can_grant: bool = True,
        liveness: Liveness | None = None,
    ) -> None:
        self._sub = sub
        self._liveness = liveness
        self._share = share
        self._grant = grant
        self._timeout_s = timeout_s
        self._downstream = downstream
        self._can_grant = can_grant
        self.stalled = False

    async def next_msg(self) -> Msg:
        """The next message, granting the sender credit first as the budget allows.

        Raises:
            ServiceUnavailable: nothing came within ``timeout_s``, or no credit came free.
        """
        if not self._can_grant:  # nobody to grant credit to: the initial window is all
            return await self._receive(self._timeout_s)
        share, downstream = self._share, self._downstream
        if downstream is not None and share.starved and not self._sub.pending_msgs:
            await downstream.ready()  # ask for nothing the next hop cannot take at once
        if frames := share.regrant(_limit(downstream)):
            await self._grant(frames)
        if not share.starved or self._sub.pending_msgs:
            return await self._receive(self._timeout_s)
        # Nothing granted is unread and the budget is spent (other streams are queued):
        # queue for credit, but an End or Error may come meanwhile.
        want = share.request(_limit(downstream))
        got = asyncio.ensure_future(self._receive(None))
        try:
            await asyncio.wait((want, got), timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if want.done():
                await self._grant(share.accept())
            elif not got.done():
                raise errors.ServiceUnavailable("no stream credit came free", retry_after_s=1)
            try:
                return await asyncio.wait_for(got, self._timeout_s)
            except TimeoutError as exc:
                self.stalled = True
                raise errors.ServiceUnavailable("stream stalled", retry_after_s=1) from exc
        finally:
            share.withdraw()
            got.cancel()

    async def _receive(self, timeout_s: float | None) -> Msg:
        """The next message, heartbeats included (the reader skips them)."""
        try:
            return await heartbeats.wait_any(self._sub, timeout_s, self._liveness)
        except NatsTimeoutError as exc:
            self.stalled = True
            raise errors.ServiceUnavailable("stream stalled", retry_after_s=1) from exc
        except errors.ServiceUnavailable:
            self.stalled = True  # the sender is gone: nothing to drain
            raise


class UploadReceiver:
    """Server side of an upload: grants credit, yields the frames' bytes in order.

    Use: ``await rx.open()`` (sends the first ``Credit`` naming the data subject), then
    ``async for piece in rx`` (bytes of each frame, in order; credit is granted as pieces
    are consumed), then ``rx.end`` holds the sender's ``End`` (with trailing checksums),
    then reply with the result or an error on ``rx.reply``; ``await rx.close()`` always.

    Its credit is a :class:`~edgecache.common.credit.Share` of ``budget``, the receiving
    connection's upload budget (shared by every upload stream on it, as downloads share
    theirs), or of a budget of its own ``window`` when none is given.

    Raises (from iteration):
        IncompleteBody: a frame is missing or the ``End`` does not match what arrived.
        RequestTimeout: nothing arrived for ``idle_timeout_s``.
        S3Error: the sender aborted the upload with an error.
    """

    def __init__(
        self,
        nc: NATS,
        reply: str,
        data_subject: str,
        *,
        window: int,
        idle_timeout_s: float,
        budget: CreditBudget | None = None,
    ) -> None:
        self._nc = nc
        self.reply = reply
        self._subject = data_subject
        window = max(1, min(window, _MAX_WINDOW))
        if budget is None:
            budget = CreditBudget(nc, max_bytes=window * frame_bytes(nc))
        self._share = Share(budget, window)
        self._idle = idle_timeout_s
        self._sub: Subscription | None = None
        self.end: wire.End | None = None

    async def open(self) -> None:
        """Subscribe to the data subject and grant the first credit (waiting in turn for the
        budget).

        Raises:
            ServiceUnavailable: the budget had nothing free within ``idle_timeout_s``.
            SlowDown: too many streams wait for the budget already.
        """
        initial = await self._share.open(timeout_s=self._idle)
        self._sub = await self._nc.subscribe(self._subject)
        await self._nc.publish(self.reply, wire.encode(wire.Credit(frames=initial, subject=self._subject)))

    async def _grant(self, frames: int) -> None:
        await self._nc.publish(self.reply, wire.encode(wire.Credit(frames=frames)))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert self._sub is not None, "open() first"
        checker = _Checker()
        inbox = _CreditedInbox(self._sub, self._share, self._grant, timeout_s=self._idle)
        while True:
            try:
                msg = await inbox.next_msg()
            except errors.ServiceUnavailable as exc:
                if inbox.stalled:
                    raise errors.RequestTimeout() from exc
                raise
            if is_frame(msg):
                self._share.frame_read()
                yield checker.add(msg)
                continue
            control = read_control(msg)
            if isinstance(control, wire.End):
                checker.check(control)
                self.end = control
                return
            raise errors.InternalError(f"unexpected {type(control).__name__} in upload stream")

    async def finish(self, result: msgspec.Struct) -> None:
        """Send the final result Struct to the uploader."""
        await self._nc.publish(self.reply, wire.encode(result))

    async def fail(self, exc: BaseException) -> None:
        """Send the final error to the uploader."""
        await send_error(self._nc, self.reply, exc)

    async def close(self) -> None:
        """Release the data subscription and the credit held."""
        self._share.close()
        if self._sub is not None:
            await _unsubscribe(self._sub)
            self._sub = None


ReadFile = Callable[[wire.FileSpan], AsyncIterator[bytes]]
"""Reads a file frame's bytes on the requester's host, in pieces (raises OSError or
:class:`~edgecache.common.chunkfile.InvalidChunk` when it cannot). The stream takes every
piece before its next frame, and closes it (``aclose()``) if it stops early."""


async def download(
    nc: NATS,
    subject: str,
    request: msgspec.Struct,
    *,
    budget: CreditBudget,
    window: int,
    timeout_s: float,
    downstream: Downstream | None = None,
    read_file: ReadFile | None = None,
    liveness: Liveness | None = DEFAULT_LIVENESS,
) -> tuple[wire.Reply, AsyncIterator[bytes]]:
    """Requester side of a download.

    Args:
        nc: the connection.
        subject: where the request goes.
        request: the request Struct.
        budget: the download credit of ``nc``, shared by every download on it; the stream
            takes its credit from there (waiting in turn while it is spent).
        window: most credit the stream asks for at once, in frames.
        timeout_s: how long to wait for the first answer, for credit from ``budget``, or
            for the next frame, seconds.
        downstream: the sender the bytes are relayed to, if any: the stream then asks for
            no more than its credit (and waits for some before asking), so it never holds
            credit of ``budget`` while waiting downstream.
        read_file: how to read a file frame's bytes; a requester that asked for file
            frames (``GetObject.local_host``) must give it.
        liveness: idle heartbeats to ask the server for, and the silence after which it is
            taken for dead (:mod:`.heartbeats`); ``None``: wait ``timeout_s`` for anything.

    Returns:
        The reply Struct that opened the stream, and an async iterator of the bytes, in
        frames. Close the iterator (``aclose()``) if you stop early: that cancels the
        stream at the sender and returns its credit to ``budget``.

    Raises:
        S3Error: the server answered an error (before the stream, or mid-stream from the
            iterator); ServiceUnavailable when no server answered, or ``budget`` had no
            credit free, within ``timeout_s``, or it went silent for ``liveness.timeout_s``
            (before the stream or mid-stream); SlowDown when too many streams already wait
            for credit.
        ValueError: ``budget`` belongs to another connection.
    """
    if budget.nc is not nc:
        raise ValueError("the credit budget belongs to another connection")
    share = Share(budget, window)
    try:
        if downstream is not None:
            await downstream.ready()
        initial = await share.open(limit=_limit(downstream), timeout_s=timeout_s)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
    except BaseException:
        share.close()
        raise
    try:
        first = await open_request(
            nc, sub, subject, wire.encode(request), reply=inbox, headers={HDR_CREDIT: str(initial)}, timeout_s=timeout_s,
            liveness=liveness,
        )
        reply = read_control(first)
        credit_subject = (first.headers or {}).get(HDR_STREAM, "")
    except BaseException:
        await _unsubscribe(sub)
        share.close()
        raise
    return reply, _DownloadBody(
        nc,
        sub,
        credit_subject,
        share=share,
        timeout_s=timeout_s,
        downstream=downstream,
        read_file=read_file,
        liveness=liveness,
    )


def _limit(downstream: Downstream | None) -> int | None:
    return None if downstream is None else downstream.credit


class _DownloadBody:
    """The bytes of a download, frame by frame (an async iterator).

    Its credit is a :class:`~edgecache.common.credit.Share` of the connection's budget:
    frames read go back to the budget, credit is granted again as the budget can spare it,
    and everything held goes back when the stream ends or is closed.

    ``aclose()`` cancels the stream at the sender and releases the inbox, also when
    iteration never started (a bare async generator would skip its cleanup then). A stream
    that fails closes itself; one whose ``__anext__`` is cancelled is left to ``aclose()``
    (nothing can be awaited in a cancelled task under anyio's cancel scopes).
    """

    def __init__(
        self,
        nc: NATS,
        sub: Subscription,
        credit_subject: str,
        *,
        share: Share,
        timeout_s: float,
        downstream: Downstream | None,
        read_file: ReadFile | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self._nc = nc
        self._liveness = liveness
        self._last_news = asyncio.get_running_loop().time()  # when a frame or control last came
        self._sub = sub
        self._read_file = read_file
        self._file: AsyncIterator[bytes] | None = None  # the pieces of the file frame being read
        self._credit_subject = credit_subject
        self._timeout_s = timeout_s
        self._share = share
        self._downstream = downstream
        self._checker = _Checker()
        self._closed = False
        self._inbox = _CreditedInbox(
            sub,
            share,
            self._grant,
            timeout_s=timeout_s,
            downstream=downstream,
            can_grant=bool(credit_subject),
            liveness=liveness,
        )

    def __aiter__(self) -> _DownloadBody:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._file is not None:
                piece = await anext(self._file, None)
                if piece is not None:
                    return piece
                self._file = None
            msg = await self._next_msg()
            while heartbeats.is_heartbeat(msg):  # the sender is alive, but sends nothing yet
                if asyncio.get_running_loop().time() - self._last_news > self._timeout_s:
                    self._inbox.stalled = True
                    raise errors.ServiceUnavailable("stream stalled", retry_after_s=1)
                msg = await self._next_msg()
            self._last_news = asyncio.get_running_loop().time()
            if is_frame(msg):
                self._share.frame_read()
                if HDR_FILE not in msg.headers:
                    return self._checker.add(msg)
                span = self._checker.add_span(msg)
                if self._read_file is None:
                    raise errors.InternalError("a file frame in a stream that asked for none")
                self._file = self._read_file(span)
                return await self.__anext__()
            control = read_control(msg)
            if isinstance(control, wire.End):
                self._checker.check(control)
                await self._release(cancel=False)
                raise StopAsyncIteration
            raise errors.InternalError(f"unexpected {type(control).__name__} in download stream")
        except (StopAsyncIteration, asyncio.CancelledError):
            raise  # cancelled: nothing can be awaited here any more, the owner's aclose() cleans up
        except BaseException:
            await self._release(cancel=True)
            raise

    async def _next_msg(self) -> Msg:
        return await self._inbox.next_msg()

    async def _grant(self, frames: int) -> None:
        await self._nc.publish(self._credit_subject, wire.encode(wire.Credit(frames=frames)))

    async def _release(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(Exception):
                await file.aclose()  # type: ignore[attr-defined]
        try:
            if cancel and self._credit_subject:
                await send_error(self._nc, self._credit_subject, errors.RequestTimeout("reader went away"))
                if not self._inbox.stalled:
                    await self._drain()
        finally:
            try:
                await _unsubscribe(self._sub)  # drops the local subscription before it awaits
            finally:
                self._share.close()

    async def _drain(self) -> None:
        """After a cancel: take in the frames the sender was granted and may still send, up
        to the ``Error`` (or ``End``) with which it stops, so that their credit is lent again
        only once they are through; give up after ``timeout_s`` without a message.

        (Not ``nc.flush()``: nats-py 2.16 leaves the future of a flush that is cancelled or
        times out in its PONG queue, and the next PONG then kills the connection's reader.)
        """
        while self._share.held:
            try:
                msg = await heartbeats.next_message(self._sub, self._timeout_s, self._liveness)
            except Exception:  # noqa: BLE001 - timed out, the sender is gone, or the connection
                return
            if not is_frame(msg):
                return
            try:
                self._share.frame_read()
            except errors.S3Error:  # a frame beyond its credit: nothing more to wait for
                return

    async def aclose(self) -> None:
        """Stop early: tell the sender, release the inbox, return the credit. Idempotent."""
        await self._release(cancel=True)

    def __del__(self) -> None:
        # Dropped without aclose() (a bug of the caller's): at least the credit goes back,
        # or the connection's budget would shrink for good.
        if not self._closed:
            with contextlib.suppress(Exception):
                self._share.close()


async def upload(
    nc: NATS,
    subject: str,
    request: msgspec.Struct,
    body: AsyncIterator[bytes],
    *,
    timeout_s: float,
    trailers: dict[str, str] | None = None,
    liveness: Liveness | None = DEFAULT_LIVENESS,
) -> wire.Reply:
    """Requester side of an upload: stream ``body`` under credit, return the final reply.

    ``trailers`` is read after ``body`` is exhausted (so a decoder may fill it at the end)
    and sent in ``End.checksums``. If ``body`` raises, the upload is aborted at the server
    (nothing is stored) and the exception propagates. ``liveness`` as in :func:`download`.

    Raises:
        S3Error: the server's error, or the body's; ServiceUnavailable when no server
            answered within ``timeout_s``, or it went silent for ``liveness.timeout_s``.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    data_subject = ""
    try:
        credit = 0
        tally = _Tally(frame_bytes(nc))

        async def next_control() -> wire.Reply:
            try:
                msg = await heartbeats.next_message(sub, timeout_s, liveness)
            except NatsTimeoutError as exc:
                raise errors.ServiceUnavailable(f"no answer on {subject}", retry_after_s=1) from exc
            return read_control(msg)

        first = read_control(
            await open_request(nc, sub, subject, wire.encode(request), reply=inbox, headers=None, timeout_s=timeout_s, liveness=liveness)
        )
        if not isinstance(first, wire.Credit) or not first.subject:
            raise errors.InternalError(f"upload on {subject} opened with {type(first).__name__}")
        data_subject, credit = first.subject, first.frames
        async for piece in body:
            for data, headers in tally.cut(piece):
                while credit <= 0:
                    control = await next_control()
                    if isinstance(control, wire.Credit):
                        credit += control.frames
                credit -= 1
                await nc.publish(data_subject, data, headers=headers)
        await nc.publish(data_subject, tally.end(trailers))
        data_subject = ""  # ended: nothing to abort any more
        while True:
            reply = await next_control()
            if not isinstance(reply, wire.Credit):
                return reply
    except BaseException as exc:
        if data_subject:
            await send_error(nc, data_subject, exc)
        raise
    finally:
        await _unsubscribe(sub)
