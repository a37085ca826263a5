"""S3-FIFO eviction policy, byte-sized over string keys: the cache node's chunk store and
the gateway's memory tier both use it.

S3-FIFO (Yang et al., SOSP 2023) keeps three FIFO queues:

- **small** (S): every new key enters here. When evicting from S, a key that was read at
  least once since it entered moves to M; one that was not is evicted and its key is
  remembered in G. A one-pass scan therefore only churns S and cannot flush M.
- **main** (M): a key leaving the head of M with ``freq > 0`` is re-queued at the tail with
  ``freq - 1``; with ``freq == 0`` it is evicted (and not remembered in G).
- **ghost** (G): keys only (no bytes), bounded in count; a new key found in G enters M
  directly, since it was evicted from S too early.

Reads bump ``freq`` up to 3. Sizes are in bytes: S is emptied first while it holds at least
``small_fraction`` (10 %) of the tracked bytes. The policy tracks only keys the caller may
evict (the chunk store adds clean chunks and removes chunks that turn dirty or are deleted;
the memory tier adds every object it holds);
keys that cannot be evicted right now (``can_evict`` false, e.g. a read in flight) are
treated as if they had been read, without spending their ``freq``.

Everything here is synchronous and in memory; it is not thread-safe (its users call it from
their event loop only).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["S3FifoPolicy"]

_MAX_FREQ = 3


class _Item:
    __slots__ = ("freq", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.freq = 0


class S3FifoPolicy:
    """Byte-sized S3-FIFO over string keys.

    Args:
        small_fraction: share of the tracked bytes the small queue may hold before eviction
            takes from it first (0 < x < 1).
        ghost_min_entries: the ghost queue remembers at least this many keys, and at most
            ``max(ghost_min_entries, tracked keys)``.
    """

    def __init__(self, *, small_fraction: float = 0.1, ghost_min_entries: int = 1024) -> None:
        if not 0.0 < small_fraction < 1.0:
            raise ValueError(f"small_fraction must be in (0, 1), got {small_fraction}")
        self._small_fraction = small_fraction
        self._ghost_min = ghost_min_entries
        self._small: OrderedDict[str, _Item] = OrderedDict()  # oldest first
        self._main: OrderedDict[str, _Item] = OrderedDict()  # oldest first
        self._ghost: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._small_bytes = 0
        self._main_bytes = 0

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main

    @property
    def tracked_bytes(self) -> int:
        """Bytes of all tracked (evictable) keys."""
        return self._small_bytes + self._main_bytes

    def queue_of(self, key: str) -> str | None:
        """``"small"``, ``"main"``, ``"ghost"`` or ``None``: where ``key`` is (for tests and stats)."""
        if key in self._small:
            return "small"
        if key in self._main:
            return "main"
        if key in self._ghost:
            return "ghost"
        return None

    def insert(self, key: str, size: int, *, main: bool = False) -> None:
        """Start tracking ``key`` of ``size`` bytes.

        A key already tracked keeps its place and ``freq`` and only takes the new size. A key
        remembered in the ghost queue, or any key with ``main=True`` (used when rebuilding
        from disk, oldest first), enters the main queue; others enter the small queue.
        """
        for queue, is_small in ((self._small, True), (self._main, False)):
            item = queue.get(key)
            if item is not None:
                self._add_bytes(is_small, size - item.size)
                item.size = size
                return
        item = _Item(size)
        if main or key in self._ghost:
            self._ghost.pop(key, None)
            self._main[key] = item
            self._main_bytes += size
        else:
            self._small[key] = item
            self._small_bytes += size

    def access(self, key: str) -> None:
        """Record a read of ``key`` (no-op if untracked)."""
        item = self._small.get(key) or self._main.get(key)
        if item is not None and item.freq < _MAX_FREQ:
            item.freq += 1

    def remove(self, key: str) -> None:
        """Stop tracking ``key`` without remembering it in the ghost queue (no-op if untracked)."""
        item = self._small.pop(key, None)
        if item is not None:
            self._small_bytes -= item.size
            return
        item = self._main.pop(key, None)
        if item is not None:
            self._main_bytes -= item.size

    def select_victims(
        self, need_bytes: int, can_evict: Callable[[str], bool]
    ) -> list[tuple[str, int]]:
        """Choose keys to evict until their sizes add up to at least ``need_bytes``.

        The victims are removed from the policy (those evicted from the small queue are
        remembered in the ghost queue). Stops early when every remaining key has been
        passed over (all recently read or not evictable now).

        Args:
            need_bytes: bytes to free; ``<= 0`` selects nothing.
            can_evict: called with a key at the head of a queue; false keeps the key (it is
                re-queued as if read, without spending its ``freq``).

        Returns:
            ``(key, size)`` pairs in eviction order.
        """
        victims: list[tuple[str, int]] = []
        freed = 0
        # every key moves S->M at most once and is re-queued in M at most _MAX_FREQ times
        # before it becomes a victim, unless can_evict keeps refusing it: bound the passes
        budget = (_MAX_FREQ + 1) * len(self) + 1
        while freed < need_bytes and budget > 0 and (self._small or self._main):
            take_small = bool(self._small) and (
                not self._main or self._small_bytes >= self._small_fraction * self.tracked_bytes
            )
            if take_small:
                key, item = self._small.popitem(last=False)
                self._small_bytes -= item.size
                if item.freq > 0 or not can_evict(key):
                    item.freq = 0
                    self._main[key] = item
                    self._main_bytes += item.size
                    budget -= 1
                    continue
                self._remember(key)
            else:
                key, item = self._main.popitem(last=False)
                evictable = can_evict(key)
                if item.freq > 0 or not evictable:
                    if evictable:
                        item.freq -= 1
                    self._main[key] = item
                    budget -= 1
                    continue
                self._main_bytes -= item.size
            victims.append((key, item.size))
            freed += item.size
        return victims

    def _add_bytes(self, small: bool, delta: int) -> None:
        if small:
            self._small_bytes += delta
        else:
            self._main_bytes += delta

    def _remember(self, key: str) -> None:
        self._ghost[key] = None
        self._ghost.move_to_end(key)
        limit = max(self._ghost_min, len(self))
        while len(self._ghost) > limit:
            self._ghost.popitem(last=False)
