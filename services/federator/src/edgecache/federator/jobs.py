"""Purge and warm jobs: one prefix (or one key) of a bucket, run in the background by the
admin API, with their progress (objects, bytes) readable while they run.

A job lists the prefix through the cache nodes (``s3.listobjects``: the origin's listing
merged with what is not yet written back), then asks the nodes to purge or warm each object,
:data:`CONCURRENCY` at a time. Only the last :data:`KEPT` jobs are kept (memory is bounded).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal

import msgspec

from edgecache.common import errors
from edgecache.common.ids import new_id
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from edgecache.federator.cachenodes import CacheNodes

__all__ = ["CONCURRENCY", "KEPT", "Job", "JobRequest", "Jobs"]

log = get_logger(__name__)

CONCURRENCY = 4  # objects purged or warmed at once per job
KEPT = 100  # finished and running jobs remembered
MAX_ERRORS_SHOWN = 20


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to purge or warm: every object of ``bucket`` under ``prefix`` (``""``: all), or
    exactly ``key`` when it is given (a purge of one object, without a listing)."""

    bucket: str
    prefix: str = ""
    key: str | None = None


class Job(msgspec.Struct, kw_only=True):
    """A purge or warm and its progress. Times in s since the Unix epoch; sizes in bytes.

    ``objects``: found so far (final once ``listed``); ``done``: handled (purged, warmed,
    skipped or failed); ``bytes``: of the objects purged or warmed; ``skipped``: dirty
    objects a purge kept (not yet written back); ``fetched``: chunks a warm filled or moved.
    """

    id: str
    kind: Literal["purge", "warm"]
    bucket: str
    prefix: str
    key: str | None = None
    state: Literal["running", "done", "failed"] = "running"
    started: float = 0.0
    finished: float | None = None
    listed: bool = False
    objects: int = 0
    done: int = 0
    bytes: int = 0
    purged: int = 0
    warmed: int = 0
    skipped: int = 0
    absent: int = 0
    fetched: int = 0
    failed: int = 0
    errors: list[str] = []


class Jobs:
    """Starts jobs and remembers the last :data:`KEPT`.

    Args:
        nodes: how jobs reach the cache nodes.
    """

    def __init__(self, nodes: CacheNodes) -> None:
        self._nodes = nodes
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def all(self) -> list[Job]:
        """Every remembered job, newest first."""
        return list(reversed(self._jobs.values()))

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def start(self, kind: Literal["purge", "warm"], request: JobRequest) -> Job:
        """Start a job in the background and return it (``state`` ``running``)."""
        job = Job(
            id=new_id(),
            kind=kind,
            bucket=request.bucket,
            prefix=request.prefix,
            key=request.key,
            started=time.time(),
        )
        self._jobs[job.id] = job
        while len(self._jobs) > KEPT:
            self._jobs.popitem(last=False)
        task = asyncio.ensure_future(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def close(self) -> None:
        """Cancel the running jobs."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _run(self, job: Job) -> None:
        log.info(
            "job.started",
            job=job.id,
            kind=job.kind,
            bucket=job.bucket,
            prefix=job.prefix,
            key=job.key,
        )
        slots = asyncio.Semaphore(CONCURRENCY)
        running: set[asyncio.Task[None]] = set()

        async def one(key: str) -> None:
            try:
                await self._one(job, key)
            finally:
                slots.release()

        try:
            if job.key is not None:
                job.objects, job.listed = 1, True
                await slots.acquire()
                await one(job.key)
            else:
                async for page in self._nodes.list_prefix(job.bucket, job.prefix):
                    job.objects += len(page)
                    for summary in page:
                        await slots.acquire()
                        task = asyncio.ensure_future(one(summary.key))
                        running.add(task)
                        task.add_done_callback(running.discard)
                job.listed = True
                if running:
                    await asyncio.wait(running)
            job.state = "done"
        except Exception as exc:  # the listing failed: the job cannot go on
            job.state = "failed"
            _note(job, f"{job.bucket}/{job.prefix}: {_describe(exc)}")
            for task in running:
                task.cancel()
        finally:
            job.finished = time.time()
            log.info(
                "job.finished",
                job=job.id,
                state=job.state,
                done=job.done,
                bytes=job.bytes,
                failed=job.failed,
            )

    async def _one(self, job: Job, key: str) -> None:
        try:
            if job.kind == "purge":
                result = await self._nodes.purge(job.bucket, key)
                if result.outcome == "purged":
                    job.purged += 1
                    job.bytes += result.size
                elif result.outcome == "dirty":
                    job.skipped += 1
                else:
                    job.absent += 1
            else:
                warmed = await self._nodes.warm(job.bucket, key)
                job.warmed += 1
                job.bytes += warmed.size
                job.fetched += warmed.fetched
        except Exception as exc:
            job.failed += 1
            _note(job, f"{job.bucket}/{key}: {_describe(exc)}")
        finally:
            job.done += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errors.S3Error):
        return f"{exc.code}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _note(job: Job, error: str) -> None:
    if len(job.errors) < MAX_ERRORS_SHOWN:
        job.errors.append(error)
