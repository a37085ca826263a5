"""The live cache nodes, as this node sees them in KV ``nodes`` (kept by the federator)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = ["LiveNodes"]

log = get_logger(__name__)


class LiveNodes:
    """The ids of the live cache nodes, refreshed every ``refresh_s`` seconds; always
    includes this node itself (it is alive, whether or not its heartbeat has landed)."""

    def __init__(self, nodes: KeyValue, self_id: str, *, refresh_s: float = 2.0) -> None:
        self._kv = nodes
        self.self_id = self_id
        self._refresh_s = refresh_s
        self._ids: frozenset[str] = frozenset({self_id})

    def ids(self) -> frozenset[str]:
        """The live node ids as of the last refresh (this node always included)."""
        return self._ids

    async def refresh(self) -> None:
        """Re-read the keys of KV ``nodes``; a failure to read leaves this node alone in the set."""
        try:
            keys = await self._kv.keys()
        except Exception:  # noqa: BLE001 - NoKeysError on an empty bucket, or NATS trouble
            keys = []
        ids = frozenset(keys) | {self.self_id}
        if ids != self._ids:
            log.info("membership.changed", nodes=sorted(ids))
        self._ids = ids

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set."""
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._refresh_s)
