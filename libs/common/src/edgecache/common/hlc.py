"""A hybrid logical clock (HLC): timestamps that follow the wall clock and never go back.

A timestamp is one ``int`` in nanoseconds since the Unix epoch: the physical part is the
largest wall-clock reading (or remote timestamp) seen so far, and the logical counter
lives in its lowest digits — when the wall clock has not moved past the last timestamp
(a burst within one nanosecond of clock resolution, a clock stepped backwards, or a
remote clock ahead of ours), the next timestamp is the last one plus 1 ns. So timestamps
are strictly increasing in one process whatever the wall clock does, stay within
(events since the wall clock last led) ns of it, and fit the ``hlc: int`` fields of
``wire.Manifest`` and ``wire.SiteChange`` as they are.

Federation orders two versions of one key by ``(hlc, site)`` (docs/architecture.md,
Federation): a site's catalog stamps each new version with :meth:`HybridClock.now` after
:meth:`HybridClock.observe`-ing the version it replaces and every remote change it
applies, so a version written after another was seen always sorts after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["HybridClock"]


class HybridClock:
    """A hybrid logical clock.

    Args:
        wall_ns: the physical clock, ns since the Unix epoch (default ``time.time_ns``);
            it may step backwards.

    Thread-safe (a lock around two integer operations).
    """

    def __init__(self, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self._wall_ns = wall_ns
        self._last = 0
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        """The last timestamp given or observed (ns; ``0`` before any)."""
        return self._last

    def now(self) -> int:
        """A new timestamp (ns): the wall clock if it is past every timestamp given or
        observed, else the last one plus 1 ns (the logical tick). Strictly greater than
        every earlier :meth:`now` and every :meth:`observe`-d timestamp."""
        wall = self._wall_ns()
        with self._lock:
            self._last = max(wall, self._last + 1)
            return self._last

    def observe(self, remote: int) -> None:
        """Take in a timestamp seen elsewhere (a remote change, the version being replaced,
        ns): every later :meth:`now` is greater than ``remote``."""
        with self._lock:
            self._last = max(self._last, remote)
