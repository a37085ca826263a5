"""The admin API: a Litestar app the federator serves on ``admin.port`` (default 14000).

Every route but ``/health/*`` and the status page's HTML requires ``Authorization: Bearer
<token>`` (``admin.token``; ``edgecache up`` writes it to ``<data-dir>/admin-token``); the
status page's script sends the token it is given in the URL fragment (``/status#token=…``),
which browsers never send to the server. The OpenAPI schema is at ``/schema/openapi.json``
(token required). Errors are JSON ``{"code", "message"}`` with the S3 error's status.

Routes (JSON; sizes in bytes, times in seconds):

- ``GET /health/live``: 200 while the process runs.
- ``GET /api/cluster``: nodes, totals, write-back backlog (:class:`~.views.ClusterView`).
- ``GET /api/nodes``, ``GET /api/nodes/{node_id}``: the live cache nodes and their stats.
- ``GET /api/cache``: cache statistics per node and in total.
- ``GET /api/config``: the resolved config, secrets redacted.
- ``GET /api/writeback``: the write-back backlog and failing intents.
- ``GET /api/uploads[?bucket=&limit=]``, ``DELETE /api/uploads/{bucket}/{upload_id}?key=``:
  multipart uploads in progress; abort one.
- ``POST /api/purge``, ``POST /api/warm`` (body :class:`~.jobs.JobRequest`) → 202 and the
  :class:`~.jobs.Job`; ``GET /api/jobs``, ``GET /api/jobs/{job_id}``: their progress.
- ``GET /api/federator``: the federator itself.
- ``GET /api/sites``: every federated site's last heartbeat, from the hub
  (:class:`~edgecache.common.wire.SiteStatus`; no sites for a lone site or with the hub down).
- ``GET /status``: the status page (HTML polling ``/api/cluster``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import nats.errors
from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Redirect

from edgecache.common import errors, wire  # wire: handler annotations, resolved at runtime
from edgecache.common.backlog import Backlog, read_backlog
from edgecache.common.logging import get_logger
from edgecache.common.sitestatus import ask_sites
from edgecache.federator import views
from edgecache.federator.jobs import Job, JobRequest, Jobs

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.types import ASGIApp

    from edgecache.common.config import Config
    from edgecache.federator.cachenodes import CacheNodes
    from edgecache.federator.membership import Membership

__all__ = ["AdminState", "create_app"]

log = get_logger(__name__)

OPEN_PATHS = ["^/health/", "^/status$", "^/$"]  # no token: liveness and the page's HTML


@dataclass
class AdminState:
    """What the routes read, on ``app.state.admin``."""

    config: Config
    membership: Membership
    nodes: CacheNodes
    jobs: Jobs
    js: Any  # the federator's JetStreamContext (the backlog is read from it)
    started: float
    nc: Any = None  # the federator's NATS connection (the sites are asked of the hub)


class BearerToken(AbstractAuthenticationMiddleware):
    """401 unless ``Authorization: Bearer <token>`` carries the admin token."""

    def __init__(self, app: ASGIApp, token: str, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude)
        self._token = token.encode()

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, value = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            value.strip().encode(), self._token
        ):
            raise NotAuthorizedException(
                "send Authorization: Bearer <token>; `edgecache up` writes it to <data-dir>/admin-token"
            )
        return AuthenticationResult(user="admin", auth=None)


def _admin(state: State) -> AdminState:
    return state.admin  # type: ignore[no-any-return]


def _s3_error(_: Request[Any, Any, Any], exc: errors.S3Error) -> Response[dict[str, str]]:
    return Response({"code": exc.code, "message": str(exc)}, status_code=exc.status)


@get("/health/live", include_in_schema=False)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/", include_in_schema=False)
async def index() -> Redirect:
    return Redirect("/status")


@get("/status", media_type=MediaType.HTML, include_in_schema=False)
async def status_page() -> str:
    return resources.files("edgecache.federator").joinpath("static/status.html").read_text()


async def _backlog(admin: AdminState) -> Backlog:
    try:
        return await read_backlog(admin.js)
    except (nats.errors.Error, TimeoutError) as exc:  # NotFoundError is a nats.errors.Error
        raise errors.ServiceUnavailable(f"JetStream did not give the backlog: {exc!r}") from exc


@get("/api/cluster")
async def cluster(state: State) -> views.ClusterView:
    """Live nodes with their stats, the totals, the write-back backlog."""
    admin = _admin(state)
    try:
        backlog, error = await _backlog(admin), ""
    except errors.ServiceUnavailable as exc:
        backlog, error = None, str(exc)
    return views.cluster_view(admin.membership, backlog, error)


@get("/api/nodes")
async def nodes(state: State) -> list[views.NodeView]:
    """The live cache nodes (a heartbeat within ``federator.node_ttl_s``), by id."""
    return views.node_views(_admin(state).membership)


@get("/api/nodes/{node_id:str}")
async def node(state: State, node_id: str) -> views.NodeView:
    """One live node. 404: no live node has that id."""
    for view in views.node_views(_admin(state).membership):
        if view.node_id == node_id:
            return view
    raise NotFoundException(f"no live node {node_id!r}")


@get("/api/cache")
async def cache(state: State) -> views.CacheView:
    """Cache statistics per node and in total."""
    return views.cache_view(_admin(state).membership)


@get("/api/config")
async def config(state: State) -> dict[str, Any]:
    """The federator's resolved config (the same file every service of `edgecache up`
    reads, but for its NATS identity); secrets redacted."""
    return views.redacted_config(_admin(state).config)


@get("/api/writeback")
async def writeback(state: State) -> Backlog:
    """The write-back backlog: intents per partition, the oldest one's age, failing ones.
    503: JetStream did not answer."""
    return await _backlog(_admin(state))


@get("/api/uploads")
async def uploads(state: State, bucket: str = "", limit: int = 1000) -> wire.UploadList:
    """Multipart uploads in progress, oldest first."""
    return await _admin(state).nodes.uploads(bucket, limit)


@delete("/api/uploads/{bucket:str}/{upload_id:str}", status_code=204)
async def abort_upload(state: State, bucket: str, upload_id: str, key: str) -> None:
    """AbortMultipartUpload of ``upload_id`` (``key``: the upload's object key). 404:
    NoSuchUpload."""
    await _admin(state).nodes.abort_upload(bucket, key, upload_id)


@post("/api/purge", status_code=202)
async def purge(state: State, data: JobRequest) -> Job:
    """Start purging the clean cached copies of ``bucket/prefix*`` (or of ``key``): each
    object's next GET is a miss that fills from the origin. Dirty objects are skipped."""
    return _admin(state).jobs.start("purge", data)


@post("/api/warm", status_code=202)
async def warm(state: State, data: JobRequest) -> Job:
    """Start filling every object of ``bucket/prefix*`` (or ``key``) into the cache."""
    return _admin(state).jobs.start("warm", data)


@get("/api/jobs")
async def jobs(state: State) -> list[Job]:
    """The last purge and warm jobs, newest first."""
    return _admin(state).jobs.all()


@get("/api/jobs/{job_id:str}")
async def job(state: State, job_id: str) -> Job:
    """One job's progress. 404: no such job (or forgotten: only the last 100 are kept)."""
    found = _admin(state).jobs.get(job_id)
    if found is None:
        raise NotFoundException(f"no job {job_id!r}")
    return found


@get("/api/federator")
async def federator(state: State) -> views.FederatorView:
    """The federator serving this API."""
    admin = _admin(state)
    return views.FederatorView(
        started=admin.started,
        uptime_s=max(0.0, time.time() - admin.started),
        nats_url=admin.config.nats.url,
        members=len(admin.membership),
        node_ttl_s=admin.config.federator.node_ttl_s,
        jobs_running=sum(1 for j in admin.jobs.all() if j.state == "running"),
    )


@get("/api/sites")
async def sites(state: State) -> wire.SiteStatus:
    """Every federated site, its nodes and their stats, and its cross-site backlog."""
    admin = _admin(state)
    if admin.nc is None or not admin.config.federation.site:
        return wire.SiteStatus(sites=[])
    return await ask_sites(admin.nc)


ROUTES = [
    live,
    index,
    status_page,
    cluster,
    nodes,
    node,
    cache,
    config,
    writeback,
    uploads,
    abort_upload,
    purge,
    warm,
    jobs,
    job,
    federator,
    sites,
]


def create_app(admin: AdminState) -> Litestar:
    """The admin API's app, requiring ``admin.config.admin.token``.

    Raises:
        ValueError: the token is empty (the admin API never runs open).
    """
    token = admin.config.admin.token
    if not token:
        raise ValueError("admin.token is empty")
    return Litestar(
        route_handlers=ROUTES,
        state=State({"admin": admin}),
        middleware=[DefineMiddleware(BearerToken, token=token, exclude=OPEN_PATHS)],
        exception_handlers={errors.S3Error: _s3_error},
        openapi_config=OpenAPIConfig(
            title="edgecache admin API",
            version="1",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
