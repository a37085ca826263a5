"""The route cache: which other site holds the current (dirty) version of a key.

A GET or HEAD at this site whose manifest records another site's dirty version is relayed
to that site (:mod:`.sites`). The route cache remembers the owner site per key so that the
hot path does not read KV ``objects`` again for every request: an entry is trusted for
``federation.route_ttl_s`` seconds, and dropped at once when this site's catalog announces
a change of the key (its ``Invalidation``, which every change — a local write, a remote
change applied — publishes before it is acknowledged). The cache holds at most
``max_entries`` keys (least recently used go first): bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RouteCache"]


class RouteCache:
    """Owner site by ``(bucket, key)``, each entry for ``ttl_s`` seconds.

    Args:
        ttl_s: how long an entry is trusted (s); ``0``: nothing is cached.
        max_entries: most keys held (least recently used evicted first).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, ttl_s: float, *, max_entries: int = 65536, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, bucket: str, key: str) -> str | None:
        """The owner site of ``bucket/key`` if cached and fresh, else ``None``."""
        found = self._entries.get((bucket, key))
        if found is None:
            return None
        site, expires = found
        if self._clock() >= expires:
            del self._entries[(bucket, key)]
            return None
        self._entries.move_to_end((bucket, key))
        return site

    def put(self, bucket: str, key: str, site: str) -> None:
        """Remember that ``site`` holds the current version of ``bucket/key``."""
        if self._ttl_s <= 0:
            return
        self._entries[(bucket, key)] = (site, self._clock() + self._ttl_s)
        self._entries.move_to_end((bucket, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, bucket: str, key: str | None) -> None:
        """Forget ``bucket/key`` (``key`` ``None``: every key of ``bucket``)."""
        if key is not None:
            self._entries.pop((bucket, key), None)
            return
        for name in [k for k in self._entries if k[0] == bucket]:
            del self._entries[name]
