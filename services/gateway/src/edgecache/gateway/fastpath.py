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

The gateway's own protocol also asks :func:`hit_answerer` directly, before the ASGI layers
in front of this one (uvicorn's proxy-headers middleware, the health probes, the keep-alive
watch: none of them acts on a GET or HEAD without a body that is not a probe), so a hit
skips them too (:mod:`.httpprotocol`). A request it could not answer is marked
(:data:`HITS_TRIED` in ``scope["extensions"]``) and goes through the whole app, where
:func:`with_fast_hits` then lets it pass at once instead of trying again.
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

__all__ = ["HITS_TRIED", "Hits", "hit_answerer", "with_fast_hits"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Hits = Callable[[Scope, Send], Awaitable[bool]]

_ACTIONS = {"GetObject": False, "HeadObject": True}  # action -> answer without a body
HITS_TRIED = "edgecache.hits_tried"  # in scope["extensions"]: the fast path said no already


class _BodylessRequest:
    """What an :class:`Exchange` needs of a request that has no body to read."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def stream(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing


def hit_answerer(app: Litestar) -> Hits:
    """``hits(scope, send)``: answer an HTTP GET or HEAD ``scope`` from ``app``'s memory
    tier and return ``True``; or send nothing, mark the scope (:data:`HITS_TRIED`) and
    return ``False`` (not a plain hit: a miss, another operation, an error to render,
    the tier off or the app not started yet). Never raises for a request's own fault."""

    async def hits(scope: Scope, send: Send) -> bool:
        gateway: GatewayState | None = getattr(app.state, "gateway", None)
        tier_on = gateway is not None and gateway.memtier is not None
        if tier_on and await _answer_hit(scope, send, gateway):  # type: ignore[arg-type]
            return True
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {HITS_TRIED: True}
        else:
            extensions[HITS_TRIED] = True
        return False

    return hits


def with_fast_hits(app: Litestar) -> ASGIApp:
    """``app`` behind a fast path for memory-tier hits (see the module docstring)."""
    hits = hit_answerer(app)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            extensions = scope.get("extensions")
            if not (extensions and HITS_TRIED in extensions) and await hits(scope, send):
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
