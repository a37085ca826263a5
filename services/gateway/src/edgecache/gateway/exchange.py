"""One HTTP request/response exchange: its ids, parsed target, verified body, counters and
its canonical log line.

Created at the top of the catch-all route; handlers read the request through it and
record what they send. The log line is written once, by :meth:`Exchange.finish`: when
the handler returns, or for a streamed body when the stream ends (so ``bytes_out`` and
``duration_ms`` cover the whole transfer).
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from litestar.exceptions import InternalServerException

from edgecache.common import errors
from edgecache.common.errors import MaxMessageLengthExceeded
from edgecache.common.logging import get_logger
from edgecache.gateway.headers import RequestHeaders
from edgecache.gateway.operations import Operation, host_bucket, route_read

if TYPE_CHECKING:
    from litestar import Request

    from edgecache.gateway.state import GatewayState

__all__ = ["MAX_HEADER_BYTES", "RANGE_HEADER_MAX", "Exchange", "LiveTrailers"]

log = get_logger("edgecache.gateway")

# request ids need to be unique, not secret: a generator seeded once per process spares two
# getrandom() system calls per request
_IDS = random.Random(os.urandom(32))  # noqa: S311
RANGE_HEADER_MAX = 256  # characters of a Range header worth parsing
MAX_HEADER_BYTES = 8 * 1024  # the request's header section, "name: value\r\n" each


class LiveTrailers(Mapping[str, str]):
    """A read-only view of ``body.trailers`` looked up at each access.

    ``EdgecacheClient.put_object`` reads its ``trailers`` argument once the body is
    exhausted; this view makes that work whether the verifier fills its dict in place or
    replaces it.
    """

    __slots__ = ("_body",)

    def __init__(self, body: Any) -> None:
        self._body = body

    def __getitem__(self, name: str) -> str:
        return self._body.trailers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body.trailers)

    def __len__(self) -> int:
        return len(self._body.trailers)


class Exchange:
    """The state of one request.

    Attributes:
        request: the Litestar request (its ASGI ``scope`` holds the raw target).
        gateway: shared resources.
        method: HTTP method, upper case.
        raw_path: the path as sent (percent-encoded bytes).
        query_string: the raw query (bytes, no ``?``).
        raw_headers: ASGI header pairs (names lower case).
        headers: the same, decoded (see :class:`RequestHeaders`).
        host_bucket: the bucket a virtual-hosted ``Host`` names (``<bucket>.<gateway.domain>``),
            else ``""`` (path-style).
        request_id: 16 upper-case hex digits, sent as ``x-amz-request-id``.
        op: the routed operation, once :meth:`route` ran.
        bytes_in: decoded body bytes read; bytes_out: body bytes sent.
        deferred: the handler streams its body; the stream calls :meth:`finish`.

    ``bind=False`` (the memory-tier fast path, :mod:`.fastpath`) leaves the log context
    alone: such a request logs nothing but its request line, which carries the same fields
    itself, and binding four context variables was ~3.5 % of a worker serving 4 KiB hits.
    """

    __slots__ = (
        "_bind",
        "_finished",
        "auth",
        "bytes_in",
        "bytes_out",
        "deferred",
        "gateway",
        "headers",
        "host_bucket",
        "method",
        "op",
        "query_string",
        "raw_headers",
        "raw_path",
        "request",
        "request_id",
        "started",
    )

    def __init__(
        self, request: Request[Any, Any, Any], gateway: GatewayState, *, bind: bool = True
    ) -> None:
        scope = request.scope
        self.request = request
        self.gateway = gateway
        self.method: str = scope["method"]
        raw_path = scope.get("raw_path")
        # ASGI's raw_path has no query, but some servers (and Litestar's test transport)
        # leave it on; a real path cannot contain "?", so cutting there is always safe.
        self.raw_path: bytes = (
            raw_path.partition(b"?")[0] if raw_path else quote(scope["path"]).encode("ascii")
        )
        self.query_string: bytes = scope.get("query_string", b"")
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.headers = RequestHeaders.from_asgi(self.raw_headers)
        self.host_bucket = host_bucket(self.headers.get("host", ""), gateway.config.domain)
        self.request_id = f"{_IDS.getrandbits(64):016X}"
        self.started = time.perf_counter()
        self.op: Operation | None = None
        self.auth: Any = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.deferred = False
        self._finished = False
        self._bind = bind
        if bind:
            structlog.contextvars.bind_contextvars(request_id=self.request_id)

    # -- the request ----------------------------------------------------------------------
    def authenticate(self) -> None:
        """Verify the signature (SigV4 or SigV2, header or presigned query).

        Raises:
            RequestHeaderSectionTooLarge: the headers pass ``MAX_HEADER_BYTES``.
            S3Error: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
                RequestTimeTooSkewed, … from :func:`edgecache.gateway.auth.verify`.
        """
        gw = self.gateway
        if sum(len(n) + len(v) + 4 for n, v in self.raw_headers) > MAX_HEADER_BYTES:
            # S3's limit; also what keeps stored headers and replies within a NATS message
            raise errors.RequestHeaderSectionTooLarge()
        if self.signed_in_form():
            return  # edgecache.gateway.postobject verifies the form before anything else
        self.auth = gw.verify(
            self.method,
            self.raw_path,
            self.query_string,
            self.raw_headers,
            credentials=gw.credentials,
            region=gw.config.region,
            now=time.time(),
            max_skew_s=gw.config.max_skew_s,
            host_bucket=self.host_bucket,
        )

    def signed_in_form(self) -> bool:
        """A browser POST upload (PostObject) without an ``Authorization`` header nor a
        presigned query: its signature is a field of its form."""
        op = self.op
        return (
            op is not None
            and op.name == "PostObject"
            and not self.headers.get("authorization")
            and b"Signature" not in self.query_string
        )

    def raw_body(self) -> AsyncIterator[bytes]:
        """The request body as sent, unverified (a POST form carries its own signature),
        counted into ``bytes_in``. Raises IncompleteBody if the client disconnects."""
        return self._received()

    def route(self) -> Operation:
        """Route the request (see :func:`edgecache.gateway.operations.route`) and bind the
        operation, bucket and key to the log context."""
        op = route_read(
            self.method,
            self.raw_path,
            self.query_string,
            copy_source="x-amz-copy-source" in self.headers,
            host_bucket=self.host_bucket,
        )
        self.op = op
        if self._bind:
            structlog.contextvars.bind_contextvars(operation=op.name, bucket=op.bucket, key=op.key)
        return op

    def range_header(self) -> str | None:
        """The ``Range`` header if S3 would honour it: one range, at most
        ``RANGE_HEADER_MAX`` characters (S3 serves the whole object for several ranges)."""
        value = self.headers.get("range")
        if value is None or len(value) > RANGE_HEADER_MAX or "," in value:
            return None
        return value

    def checksum_mode(self) -> bool:
        """Whether the client asked for checksums (``x-amz-checksum-mode: ENABLED``)."""
        return self.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"

    def body(self) -> Any:
        """The request body, verified as its signature requires, counted into ``bytes_in``.

        Returns:
            An async iterable of decoded body bytes with a ``trailers`` attribute (see
            :func:`edgecache.gateway.sigv4.wrap_body`). Iteration raises the S3 error of a
            failed check; a client that disconnects mid-body raises IncompleteBody.
        """
        verified = self.gateway.wrap_body(self._received(), self.auth, self.raw_headers)
        return verified

    async def _received(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self.request.stream():
                if piece:
                    self.bytes_in += len(piece)
                    yield piece
        except InternalServerException as exc:  # Litestar: "client disconnected prematurely"
            raise errors.IncompleteBody(
                "The client disconnected before sending the whole body."
            ) from exc

    async def read_body(self, limit: int) -> bytes:
        """The whole verified body, for small XML documents.

        Raises:
            MaxMessageLengthExceeded: more than ``limit`` bytes.
            S3Error: a failed body check (see :meth:`body`).
        """
        pieces: list[bytes] = []
        size = 0
        async for piece in self.body():
            size += len(piece)
            if size > limit:
                raise MaxMessageLengthExceeded()
            pieces.append(piece)
        return b"".join(pieces)

    # -- the response ---------------------------------------------------------------------
    def response_headers(self) -> dict[str, str]:
        """Headers every response carries: request ids and ``Server``."""
        return {
            "x-amz-request-id": self.request_id,
            "x-amz-id-2": base64.b64encode(_IDS.randbytes(24)).decode("ascii"),
            "server": "edgecache",
        }

    def response_lines(self) -> bytes:
        """:meth:`response_headers` as header lines (``name: value\r\n`` each, latin-1), for
        an answer written whole (:mod:`.wholeresponse`)."""
        return b"x-amz-request-id: %s\r\nx-amz-id-2: %s\r\nserver: edgecache\r\n" % (
            self.request_id.encode("ascii"),
            base64.b64encode(_IDS.randbytes(24)),
        )

    def finish(
        self, status: int, *, error: errors.S3Error | None = None, cut: bool = False
    ) -> None:
        """Write the canonical log line of this request and count it in the gateway's metrics
        (once; later calls do nothing).

        Args:
            status: the HTTP status sent.
            error: the S3 error answered (or that cut a stream), if any.
            cut: the connection was cut mid-body.
        """
        if self._finished:
            return
        self._finished = True
        op = self.op
        seconds = time.perf_counter() - self.started
        metrics = self.gateway.metrics
        if metrics is not None:
            metrics.observe(op.name if op else "", status, seconds, self.bytes_in, self.bytes_out)
        if op is not None and error is None and not cut and status < 500:
            # the common line, without building its fields twice (every hit writes one)
            log.info(
                "request",
                request_id=self.request_id,
                method=self.method,
                operation=op.name,
                bucket=op.bucket,
                key=op.key,
                status=status,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                duration_ms=round(seconds * 1000, 3),
            )
            return
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "operation": op.name if op else "",
            "bucket": op.bucket if op else "",
            "key": op.key if op else "",
            "status": status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round(seconds * 1000, 3),
        }
        if error is not None:
            fields["error"] = error.code
        if cut:
            fields["cut"] = True
        if status >= 500 or cut:
            log.warning("request", **fields)
        else:
            log.info("request", **fields)
