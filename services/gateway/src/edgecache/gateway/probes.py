"""``/health/live`` and ``/health/ready`` on the S3 port, in front of everything else.

A load balancer probes the port it balances, without S3 credentials. Path-style S3 would
read ``/health/ready`` as the object ``ready`` of a bucket ``health``; but S3 refuses an
unsigned request (AccessDenied) whatever it names, so answering only *unsigned* GET and
HEAD requests of the two paths takes nothing from an S3 client: a signed request of them
(header or presigned query) goes on to the S3 app as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.common.monitor import HEALTH_PATHS, Receive, Scope, Send, answer_health

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from edgecache.common.health import Health

__all__ = ["with_health"]


_SIGNED_QUERY = (b"X-Amz-Signature=", b"Signature=", b"X-Amz-Credential=")


def _unsigned(scope: Scope) -> bool:
    """No ``Authorization`` header and no presigned-URL query parameters."""
    if any(name == b"authorization" for name, _ in scope["headers"]):
        return False
    query = scope.get("query_string", b"")
    return not any(marker in query for marker in _SIGNED_QUERY)


def with_health(
    app: Callable[[Scope, Receive, Send], Awaitable[None]], health: Health
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``app`` with unsigned ``GET``/``HEAD`` of :data:`HEALTH_PATHS` answered from
    ``health`` before it (one string comparison for every other request)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in HEALTH_PATHS
            and _unsigned(scope)
            and await answer_health(scope, send, health)
        ):
            return
        await app(scope, receive, send)

    return asgi
