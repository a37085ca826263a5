"""Leases: chunks pinned against eviction while a reader on this host reads their files.

A short-circuit read (:mod:`edgecache.cachenode.shortcircuit`) hands a gateway the paths
of an object's chunk files; the chunks stay pinned until the gateway releases the lease or
it expires (``cachenode.lease_s``, default 30 s), whichever comes first. A chunk under any
live lease is never chosen by :meth:`ChunkStore.evict
<edgecache.cachenode.chunkstore.ChunkStore.evict>`; an expired lease is dropped the next
time the leases are looked at (every grant and every eviction pass). A lease pins against
eviction only: a chunk may still be marked clean (its file moves ``dirty/ -> clean/``; a
plan lists both paths) or deleted as corrupt (the reader's own check fails too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["Leases"]


class Leases:
    """Live leases and the count of leases on each chunk. Use from one event loop.

    Args:
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, tuple[tuple[str, ...], float]] = {}  # id -> (chunks, deadline)
        self._pinned: dict[str, int] = {}  # chunk id -> live leases on it
        self.granted = 0
        self.released = 0
        self.expired = 0

    def grant(self, lease_id: str, chunk_ids: Iterable[str], ttl_s: float) -> None:
        """Pin ``chunk_ids`` under ``lease_id`` for ``ttl_s`` seconds (a new id)."""
        self.expire()
        chunks = tuple(dict.fromkeys(chunk_ids))
        if lease_id in self._leases:
            raise ValueError(f"lease {lease_id!r} exists")
        self._leases[lease_id] = (chunks, self._clock() + ttl_s)
        for chunk_id in chunks:
            self._pinned[chunk_id] = self._pinned.get(chunk_id, 0) + 1
        self.granted += 1

    def extend(self, lease_id: str, chunk_ids: Iterable[str], ttl_s: float) -> None:
        """Pin ``chunk_ids`` under ``lease_id`` too, and renew the whole lease for ``ttl_s``
        seconds from now (a new id is granted)."""
        found = self._leases.get(lease_id)
        if found is None:
            self.grant(lease_id, chunk_ids, ttl_s)
            return
        chunks, _ = found
        added = tuple(c for c in dict.fromkeys(chunk_ids) if c not in chunks)
        for chunk_id in added:
            self._pinned[chunk_id] = self._pinned.get(chunk_id, 0) + 1
        self._leases[lease_id] = (chunks + added, self._clock() + ttl_s)

    def release(self, lease_id: str) -> bool:
        """Unpin the chunks of ``lease_id``; ``False`` if it is unknown or already gone."""
        found = self._leases.pop(lease_id, None)
        if found is None:
            return False
        self._unpin(found[0])
        self.released += 1
        return True

    def expire(self) -> int:
        """Drop the leases whose deadline passed; return how many."""
        now = self._clock()
        gone = [lease_id for lease_id, (_, deadline) in self._leases.items() if deadline <= now]
        for lease_id in gone:
            chunks, _ = self._leases.pop(lease_id)
            self._unpin(chunks)
        self.expired += len(gone)
        return len(gone)

    def pinned(self, chunk_id: str) -> bool:
        """Whether a lease (maybe expired, not yet dropped: call :meth:`expire` first) pins
        ``chunk_id``."""
        return chunk_id in self._pinned

    def __len__(self) -> int:
        return len(self._leases)

    def _unpin(self, chunks: tuple[str, ...]) -> None:
        for chunk_id in chunks:
            n = self._pinned[chunk_id] - 1
            if n:
                self._pinned[chunk_id] = n
            else:
                del self._pinned[chunk_id]
