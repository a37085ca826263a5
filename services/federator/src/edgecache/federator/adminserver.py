"""Serving the admin API (:mod:`.adminapi`) inside the federator's event loop, under
uvicorn, for as long as the federator runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import uvicorn

from edgecache.common.logging import get_logger
from edgecache.federator.adminapi import AdminState, create_app
from edgecache.federator.cachenodes import CacheNodes
from edgecache.federator.jobs import Jobs

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from edgecache.common.config import Config
    from edgecache.federator.membership import Membership

__all__ = ["serve_admin"]

log = get_logger(__name__)


async def serve_admin(
    config: Config, stack: AsyncExitStack, membership: Membership, nc: NATS
) -> None:
    """Serve the admin API (:mod:`.adminapi`) on ``admin.host:admin.port`` until ``stack``
    unwinds: running jobs are cancelled, then uvicorn finishes its requests.

    Raises:
        SystemExit: uvicorn could not bind the port (it logs why).
    """
    nodes = CacheNodes(nc, timeout_s=config.admin.request_timeout_s)
    jobs = Jobs(nodes)
    app = create_app(AdminState(config, membership, nodes, jobs, nc.jetstream(), time.time(), nc=nc))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.admin.host,
            port=config.admin.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign] # our stop decides
    task = asyncio.create_task(server.serve())

    async def stop() -> None:
        server.should_exit = True
        await task

    stack.push_async_callback(stop)
    stack.push_async_callback(jobs.close)  # unwinds first: no job outlives the server
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise RuntimeError("the admin API stopped at start")
        await asyncio.sleep(0.02)
    log.info("admin.started", url=f"http://{config.admin.host}:{config.admin.port}")
