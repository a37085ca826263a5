"""Per-key mutual exclusion on one event loop (the chunk store locks chunk ids with it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """Per-key mutual exclusion: the chunk store holds a chunk id's lock to publish, mark clean,
    delete or evict it.

    ``try_acquire`` is synchronous, so eviction can choose and claim victims without
    yielding to the event loop in between. Use from one event loop; not thread-safe.
    """

    def __init__(self) -> None:
        self._held: dict[str, list[asyncio.Future[None]]] = {}

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held now."""
        return key in self._held

    def try_acquire(self, key: str) -> bool:
        """Take ``key`` if it is free, without waiting; ``False`` if it is held."""
        if key in self._held:
            return False
        self._held[key] = []
        return True

    async def acquire(self, key: str) -> None:
        """Wait until ``key`` is free, then take it."""
        while key in self._held:
            waiter = asyncio.get_running_loop().create_future()
            self._held[key].append(waiter)
            await waiter
        self._held[key] = []

    async def acquire_many(self, keys: Iterable[str]) -> list[str]:
        """Acquire every key (deduplicated, in sorted order so that callers never deadlock)."""
        got: list[str] = []
        try:
            for key in sorted(set(keys)):
                await self.acquire(key)
                got.append(key)
        except BaseException:
            for key in got:
                self.release(key)
            raise
        return got

    def release(self, key: str) -> None:
        """Free ``key`` and wake its waiters (the first to run takes it)."""
        for waiter in self._held.pop(key):
            if not waiter.done():
                waiter.set_result(None)
