"""The Litestar application: one catch-all route that authenticates, routes and dispatches
every request to its handler, and renders every failure as an S3 error.

Litestar 2.25 notes (see NOTES.md): the route lists both ``/`` and ``/{path:path}`` (the
latter misses ``/``); ``status_code`` is explicit (POST among the methods would make 201
the default); the object key comes from ``scope["raw_path"]``, never from the normalised
path; ``request_max_body_size=None`` so uploads stream without a cap.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, route
from litestar.exceptions import HTTPException

from edgecache.common import errors
from edgecache.common.client import EdgecacheClient
from edgecache.common.credit import CreditBudget
from edgecache.common.heartbeats import Liveness
from edgecache.common.logging import get_logger
from edgecache.gateway import auth, sigv4
from edgecache.gateway.exchange import Exchange
from edgecache.gateway.handlers import HANDLERS
from edgecache.gateway.operations import Operation
from edgecache.gateway.responses import StreamCutFilter, error_response
from edgecache.gateway.shortcircuit import LocalReads
from edgecache.gateway.state import GatewayState, RequestCounter
from edgecache.gateway.unsupported import refuse_unsupported

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.config import Config
    from edgecache.gateway.invalidations import InvalidationListener
    from edgecache.gateway.memtier import MemoryTier

__all__ = ["create_app", "dispatch"]

log = get_logger("edgecache.gateway")

_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]


async def dispatch(request: Request[Any, Any, Any], gateway: GatewayState) -> Response[Any]:
    """Serve one S3 request: authenticate, route, run the handler, map errors.

    Never raises for a request-level failure: an :class:`S3Error` becomes its XML
    response, anything else a 500 ``InternalError`` (logged with its traceback).
    """
    x = Exchange(request, gateway)
    status = 499  # the client went away before we answered
    error: errors.S3Error | None = None
    try:
        try:  # routed first so that even a refused request logs its bucket and key ...
            op: Operation | None = x.route()
            unroutable: errors.S3Error | None = None
        except errors.S3Error as exc:
            op, unroutable = None, exc
        x.authenticate()  # ... but nothing is answered before authentication
        if op is None:
            assert unroutable is not None
            raise unroutable
        refuse_unsupported(x.headers)  # 501 rather than a silently ignored ACL, SSE, …
        response = await HANDLERS[op.name](x)
        status = response.status_code
        return response
    except errors.S3Error as exc:
        error = exc
        status = exc.status
        return error_response(x, exc)
    except Exception:  # noqa: BLE001 - the client gets a 500, the log the traceback
        log.exception("request.failed", request_id=x.request_id)
        error = errors.InternalError()
        status = 500
        return error_response(x, error)
    finally:
        if not x.deferred or error is not None:
            x.finish(status, error=error)


@route(
    ["/", "/{path:path}"],
    http_method=_METHODS,
    status_code=200,
    include_in_schema=False,
)
async def s3_endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
    """The catch-all S3 route."""
    return await dispatch(request, request.app.state.gateway)


def _framework_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors Litestar raises before our route runs (unknown method, bad framing)."""
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        s3_error: errors.S3Error = errors.MethodNotAllowed()
    elif isinstance(exc, HTTPException) and exc.status_code < 500:
        s3_error = errors.InvalidRequest(str(exc.detail) if exc.detail else None)
    else:
        log.error("request.framework_error", error=repr(exc), exc_info=exc)
        s3_error = errors.InternalError()
    x = Exchange(request, request.app.state.gateway)
    x.finish(s3_error.status, error=s3_error)
    return error_response(x, s3_error)


def create_app(
    config: Config,
    nc: NATS | None,
    *,
    client: EdgecacheClient | None = None,
    credentials: Mapping[str, str] | None = None,
    verify: Callable[..., Any] = auth.verify,
    wrap_body: Callable[..., Any] = sigv4.wrap_body,
    memtier: MemoryTier | None = None,
    invalidations: InvalidationListener | None = None,
    metrics: RequestCounter | None = None,
) -> Litestar:
    """Build the gateway's ASGI app around a connected NATS client.

    Args:
        config: the whole config (``gateway`` for credentials, region and download window,
            ``nats`` for the request timeout and the connection's download credit).
        nc: a connected nats-py client; the caller owns (and drains) it.
        client: the ``s3.*`` client to use instead of one built on ``nc`` (``nc`` may then
            be ``None``).
        credentials: access key → secret key; default the single pair in ``config.gateway``.
        verify: the signature verifier (tests may pass another with the same signature).
        wrap_body: the body verifier that goes with ``verify``.
        memtier: the memory tier; used only with ``invalidations``, which the lifespan
            starts on ``nc`` (and which should watch ``nc``: see
            :func:`edgecache.common.runtime.connect_nats`).
        invalidations: what keeps ``memtier`` coherent.
        metrics: where each request is counted (``None``: nowhere).
    """
    gw = config.gateway
    if credentials is None:
        credentials = {gw.access_key: gw.secret_key} if gw.access_key else {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if client is None:
            if nc is None:
                raise ValueError("create_app needs a NATS connection or a client")
            s3_client = EdgecacheClient(
                nc,
                timeout_s=config.nats.request_timeout_s,
                liveness=Liveness.of(config.nats),
                window_frames=gw.window_frames,
                budget=CreditBudget(nc, max_bytes=config.nats.download_credit_bytes),
            )
        else:
            s3_client = client
        coherent = memtier is not None and invalidations is not None and nc is not None
        local = LocalReads(gw.short_circuit_buffers) if gw.short_circuit and client is None else None
        app.state.gateway = GatewayState(
            client=s3_client,
            config=gw,
            credentials=dict(credentials),
            verify=verify,
            wrap_body=wrap_body,
            memtier=memtier if coherent else None,
            invalidations=invalidations if coherent else None,
            local=local,
            metrics=metrics,
        )
        if coherent:
            assert invalidations is not None and nc is not None
            await invalidations.start(nc)
        # a cut stream is logged by the gateway; the server's traceback of it is noise
        server_log = logging.getLogger("uvicorn.error")
        cut_filter = StreamCutFilter()
        server_log.addFilter(cut_filter)
        try:
            yield
        finally:
            server_log.removeFilter(cut_filter)
            if local is not None:
                local.close()
            if coherent:
                assert invalidations is not None
                await invalidations.stop()

    return Litestar(
        route_handlers=[s3_endpoint],
        lifespan=[lifespan],
        request_max_body_size=None,
        openapi_config=None,
        exception_handlers={Exception: _framework_error},
        debug=False,
    )
