"""Whether a connection outlives an answer given before the request body was read.

The gateway rejects many uploads from their headers alone (no such bucket, a bad digest,
a bad signature, a node unreachable). HTTP/1.1 then leaves the connection in one of two
states (RFC 9110 §10.1.1, RFC 9112 §9.3):

- The client sent ``Expect: 100-continue`` and no ``100 Continue`` went out: it may send
  the body or not (boto3 and the AWS CLI do not; curl does after a second). Neither side
  knows where the next request starts, so the answer carries ``Connection: close``.
- Otherwise the body is on its way: uvicorn reads and discards what the app left unread
  before it parses the next request, which keeps the connection. Draining a large body
  costs more than a new connection, so past :data:`DRAIN_LIMIT_BYTES` (or a body of
  unknown length) the answer closes the connection instead, as S3 does.

:func:`with_keepalive` wraps the whole ASGI app (the fast path included), so every answer
obeys this, whichever layer gave it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edgecache.gateway.wholeresponse import WHOLE_RESPONSE

__all__ = ["DRAIN_LIMIT_BYTES", "may_have_body", "must_close", "with_keepalive"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_LIMIT_BYTES = 1024 * 1024  # unread body the server may still read and discard


def must_close(
    headers: list[tuple[bytes, bytes]], *, receive_called: bool, body_read: int, body_done: bool
) -> bool:
    """Whether an answer to this request must close the connection.

    Args:
        headers: the request's ASGI headers (names lower case).
        receive_called: the app asked for the body (so uvicorn sent ``100 Continue``).
        body_read: body bytes the app read, as framed on the wire.
        body_done: the app read the whole body.

    Returns:
        ``True`` if the unread rest of the body leaves the connection unusable or too
        dear to drain (see the module docstring).
    """
    if body_done:
        return False
    length: int | None = 0
    chunked = expect = False
    for name, value in headers:
        if name == b"content-length":
            digits = value.strip()
            length = int(digits) if digits.isdigit() and len(digits) <= 19 else None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if chunked:
        length = None
    if length == 0:
        return False  # no body: nothing left unread
    if expect and not receive_called:
        return True
    return length is None or length - body_read > DRAIN_LIMIT_BYTES


def with_keepalive(app: ASGIApp) -> ASGIApp:
    """``app`` whose early answers say ``Connection: close`` when the connection cannot
    carry another request (see :func:`must_close`)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not may_have_body(scope["headers"]):
            await app(scope, receive, send)  # most GETs and HEADs: nothing to watch
            return
        state = {"called": False, "read": 0, "done": False}
        extensions = scope.get("extensions")
        if extensions and WHOLE_RESPONSE in extensions:  # every answer must pass checked_send
            scope["extensions"] = {k: v for k, v in extensions.items() if k != WHOLE_RESPONSE}

        async def tracked_receive() -> MutableMapping[str, Any]:
            state["called"] = True
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
            return message

        async def checked_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and must_close(
                scope["headers"],
                receive_called=bool(state["called"]),
                body_read=int(state["read"]),
                body_done=bool(state["done"]),
            ):
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, tracked_receive, checked_send)

    return asgi


def may_have_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these ASGI headers may carry a body: a ``Content-Length``
    other than 0, or a ``Transfer-Encoding``."""
    for name, value in headers:  # a plain loop: this runs for every request
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return True
    return False
