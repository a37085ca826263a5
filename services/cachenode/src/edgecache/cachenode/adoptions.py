"""The HEAD-less adoptions in flight on one cache node (:mod:`.adoption` explains them):
requests for the same key share one, and a lookup that does not read waits until its
manifest's create in the catalog was answered."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from edgecache.common import wire
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from edgecache.common.catalog import Catalog

__all__ = ["Adoptions"]

log = get_logger(__name__)


class Adoptions:
    """This node's HEAD-less adoptions in flight, by ``(bucket, key)``: the manifest (a
    future until the first ranged GET answered; ``None`` if the caller must adopt with a
    HEAD instead) and the task recording it in the catalog."""

    def __init__(self) -> None:
        self._manifests: dict[tuple[str, str], asyncio.Future[wire.Manifest | None]] = {}
        self._creates: dict[tuple[str, str], asyncio.Task[None]] = {}

    def pending(self, bucket: str, key: str) -> asyncio.Future[wire.Manifest | None] | None:
        """The adoption of ``bucket/key`` in flight here, if any."""
        return self._manifests.get((bucket, key))

    async def settle(self, bucket: str, key: str) -> bool:
        """Wait until an adoption of ``bucket/key`` in flight here has its manifest's create
        answered (whatever it was); ``True`` if there was one."""
        manifest = self._manifests.get((bucket, key))
        if manifest is None:
            return False
        with contextlib.suppress(Exception):
            await asyncio.shield(manifest)
        create = self._creates.get((bucket, key))
        if create is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(create)
        return True

    def begin(self, bucket: str, key: str) -> asyncio.Future[wire.Manifest | None]:
        """Register an adoption of ``bucket/key`` (none may be in flight)."""
        future: asyncio.Future[wire.Manifest | None] = asyncio.get_running_loop().create_future()
        self._manifests[(bucket, key)] = future
        return future

    def record(
        self,
        catalog: Catalog,
        future: asyncio.Future[wire.Manifest | None],
        manifest: wire.Manifest | None,
    ) -> None:
        """The adoption registered as ``future`` found ``manifest`` (``None``: none; an
        error is set on ``future`` by the caller): create it in the catalog in the
        background, and forget the adoption once the create is answered."""
        slot = (manifest.bucket, manifest.key) if manifest is not None else None
        future.set_result(manifest)
        if manifest is None or slot is None:
            self._forget(future)
            return
        task = asyncio.ensure_future(self._create(catalog, manifest))
        self._creates[slot] = task
        task.add_done_callback(lambda _: self._forget(future))

    def fail(self, future: asyncio.Future[wire.Manifest | None], error: BaseException) -> None:
        """The adoption registered as ``future`` failed with ``error`` (its sharers raise it)."""
        if not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when no one shares it
        self._forget(future)

    def _forget(self, future: asyncio.Future[wire.Manifest | None]) -> None:
        for slot, found in list(self._manifests.items()):
            if found is future:
                del self._manifests[slot]
                self._creates.pop(slot, None)

    @staticmethod
    async def _create(catalog: Catalog, manifest: wire.Manifest) -> None:
        try:
            if not await catalog.create(manifest):
                # another node adopted it, or a write or delete came first: this version
                # serves only the reads already on it
                log.info(
                    "adopt.lost", bucket=manifest.bucket, key=manifest.key, version=manifest.version
                )
        except Exception as exc:  # the reads on it go on: the origin is the truth
            log.warning(
                "adopt.unrecorded", bucket=manifest.bucket, key=manifest.key, error=repr(exc)
            )

    async def close(self) -> None:
        """Wait for the creates in flight (5 s at most)."""
        tasks = list(self._creates.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5)
