"""A whole small answer — status line, headers and body — written in one socket write.

An ASGI app answers with two messages (``http.response.start``, ``http.response.body``)
and uvicorn writes each as it comes: two ``send`` system calls per response, and a regex
check of every header name and value. For a 4 KiB memory-tier hit that was the largest
single cost of a gateway worker (socket writes 19-27 % of its samples). So the gateway's
HTTP protocol (:mod:`.httpprotocol`) offers each request, in ``scope["extensions"]``
under :data:`WHOLE_RESPONSE`, a :class:`WholeResponse`: the fast path
(:mod:`.fastpath`) hands it the status, the header lines it built (and checked) itself
and the body, and it writes them at once, keeping uvicorn's state of the exchange as
uvicorn's own ``send`` would (write back-pressure, keep-alive, ``Connection: close``, the
``Date`` header, HEAD without a body).

A layer that watches the messages the app sends must not let the app bypass it: such a
layer removes the extension from the scope it passes on (:mod:`.keepalive` does).

A :class:`WholeResponse` refers to uvicorn's exchange **weakly**: the exchange holds the
scope, which holds the :class:`WholeResponse`, so a strong reference made every request a
reference cycle that only the cyclic garbage collector could free. With tens of container
objects per request promoted through its generations, collections cost about a tenth of a
worker serving 4 KiB hits and paused it for up to 0.2 s (docs/benchmarks.md). The exchange
lives as long as its ASGI task runs, which is as long as anyone may call the answer.
"""

from __future__ import annotations

import re
import weakref
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["WHOLE_RESPONSE", "WholeResponse", "header_lines"]

WHOLE_RESPONSE = "edgecache.whole_response"

_CLOSE = b"connection: close\r\n"
# a control character other than the CR LF that end each line (uvicorn's own check, per value)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def header_lines(headers: dict[str, str]) -> bytes:
    """``{"etag": '"a"'}`` → ``b'etag: "a"\\r\\n'`` (latin-1).

    Raises:
        ValueError: a name or value is not latin-1, or holds a control character (CR and
            LF included), which would let it forge headers; uvicorn refuses those too.
    """
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode("latin-1")
    n = len(headers)
    if lines.count(b"\n") != n or lines.count(b"\r") != n or _CONTROL.search(lines):
        raise ValueError("a header holds a control character")
    return lines


class _Defaults:
    """uvicorn's default headers (``Date``, replaced by the server once a second), encoded
    once per list."""

    __slots__ = ("_encoded", "_source")

    def __init__(self) -> None:
        self._source: object = None
        self._encoded = b""

    def lines(self, defaults: list[tuple[bytes, bytes]]) -> bytes:
        if defaults is not self._source:
            self._encoded = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            self._source = defaults
        return self._encoded


_DEFAULTS = _Defaults()


class WholeResponse:
    """The one-write answer of one request (see the module docstring).

    Args:
        cycle: uvicorn's exchange of this request.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = weakref.ref(cycle)

    async def __call__(self, status: int, lines: bytes, body: bytes) -> None:
        """Send the whole answer.

        Args:
            status: the HTTP status.
            lines: every header line of the answer (``name: value\\r\\n`` each), with a
                ``content-length`` that is ``len(body)`` (for HEAD: what a GET would send);
                no ``connection`` nor ``transfer-encoding``.
            body: the whole body (not sent for HEAD).

        Raises:
            RuntimeError: an answer was already started for this request, or its exchange
                is over.
        """
        cycle = self._cycle()
        if cycle is None:
            raise RuntimeError("the exchange of this request is over")
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()  # the client is not reading: wait as uvicorn's send does
        if cycle.disconnected:
            return
        if cycle.response_started:
            raise RuntimeError("an answer was already started for this request")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        close = not cycle.keep_alive
        if cycle.scope["method"] == "HEAD":
            body = b""
        cycle.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    _DEFAULTS.lines(cycle.default_headers),
                    lines,
                    _CLOSE if close else b"",
                    b"\r\n",
                    body,
                )
            )
        )
        cycle.response_complete = True
        cycle.message_event.set()
        if close:
            cycle.transport.close()
        cycle.on_response()
