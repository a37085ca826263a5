"""Memory-tier hits answered in front of the web framework.

A GetObject or HeadObject of an object the memory tier holds needs nothing of Litestar:
no body, no handler dispatch, one ``bytes`` answer. Profiled at 4 KiB, Litestar's routing,
middleware and response objects were about half of the gateway's CPU per hit. So the app
is wrapped (:func:`with_fast_hits`): such a request is routed, authenticated and answered
here with the very same code the handlers use (:class:`~edgecache.gateway.exchange.Exchange`,
:func:`edgecache.gateway.memory.render`), written as two ASGI messages, and logged with
the same request line. Everything else — a miss, another operation, any error to render
(a bad signature, 304 is not an error but 412 and 416 are) — goes to Litestar unchanged,
which then does the whole request itself.

Where the HTTP server offers it (the gateway's own protocol, :mod:`.wholeresponse`), the
answer is written in one socket write with header lines built once per cached version;
elsewhere (another ASGI server, a test transport) it goes as the two ASGI messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from edgecache.common import errors
from edgecache.gateway import memory
from edgecache.gateway.exchange import Exchange
from edgecache.gateway.wholeresponse import WHOLE_RESPONSE

if TYPE_CHECKING:
    from litestar import Litestar

    from edgecache.gateway.state import GatewayState

__all__ = ["with_fast_hits"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ACTIONS = {"GetObject": False, "HeadObject": True}  # action -> answer without a body


class _BodylessRequest:
    """What an :class:`Exchange` needs of a request that has no body to read."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def stream(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing


def with_fast_hits(app: Litestar) -> ASGIApp:
    """``app`` behind a fast path for memory-tier hits (see the module docstring)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            gateway: GatewayState | None = getattr(app.state, "gateway", None)
            hit = gateway is not None and gateway.memtier is not None
            if hit and await _answer_hit(scope, send, gateway):  # type: ignore[arg-type]
                return
        await app(scope, receive, send)

    return asgi


async def _answer_hit(scope: Scope, send: Send, gateway: GatewayState) -> bool:
    """Answer ``scope`` from the memory tier if it is a plain hit; ``False`` otherwise
    (nothing was sent)."""
    x = Exchange(_BodylessRequest(scope), gateway, bind=False)  # type: ignore[arg-type]
    extensions = scope.get("extensions")
    whole = extensions.get(WHOLE_RESPONSE) if extensions else None
    try:
        op = x.route()
        head = _ACTIONS.get(op.name)
        if head is None or not op.key:
            return False
        tier = gateway.memtier
        if tier is None or not tier.holds(op.bucket, op.key, count_miss=False):
            return False  # a miss: the handler counts it and asks a node
        x.authenticate()
        cached = await memory.held(x, op)
        if cached is None:
            return False
        if whole is not None:
            status, lines, body = memory.render_whole(x, op, cached, head=head)
            await whole(status, lines, body)
            x.finish(status)
            return True
        status, headers, body = memory.render(x, op, cached, head=head)
    except (errors.S3Error, ValueError):
        return False  # the framework renders the error
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})
    x.finish(status)
    return True
