"""The gateway's memory tier (L0): whole small objects held in the gateway process.

A GET or HEAD of an object held here is answered without a NATS round trip, Range and
conditional requests included. What it holds:

* only **whole objects** of at most ``gate_bytes`` (default 1 MiB), with the
  :class:`~edgecache.common.wire.ObjectInfo` the cache node answered for them;
* at most ``capacity_bytes`` of bodies in all (default 128 MiB), chosen by **S3-FIFO**
  (:class:`~edgecache.common.s3fifo.S3FifoPolicy`): a new object enters a small probation
  queue, so a one-pass scan churns that queue and cannot flush the objects that are read
  again and again.

**Coherence.** Every change of an object publishes an invalidation event before the change
is acknowledged (:mod:`edgecache.gateway.invalidations` feeds them to :meth:`invalidate`,
:meth:`invalidate_bucket` and :meth:`clear`). One race is left to close here: a GET that
read version 1 from a node may finish *after* the event of version 2 arrived. So a fill
takes a :class:`Fill` ticket when it starts (the event epoch at that moment) and
:meth:`admit` refuses the body if any invalidation of that key, of its bucket, or of
everything, came after the ticket. Invalidated keys are remembered up to ``forget_after``
entries; a ticket older than the oldest forgotten one is refused too. Everything here is
synchronous and runs on the event loop: no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecache.common.s3fifo import S3FifoPolicy

if TYPE_CHECKING:
    from edgecache.common import wire

__all__ = ["CachedObject", "Fill", "MemoryTier", "MemoryTierStats"]


@dataclass(frozen=True, slots=True)
class CachedObject:
    """A whole object in the memory tier: what the node answered, and every byte.

    ``heads`` remembers the header lines of its unconditional, whole answer by
    ``checksum_mode`` (:func:`edgecache.gateway.memory.render_whole`): built once per cached
    version, since an object that changes is a new ``CachedObject``.
    """

    info: wire.ObjectInfo
    data: bytes
    heads: dict[bool, bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Fill:
    """A ticket for admitting one object: taken when its GET starts."""

    bucket: str
    key: str
    epoch: int


@dataclass(slots=True)
class MemoryTierStats:
    """Counters since the gateway started (bytes are body bytes)."""

    hits: int = 0
    misses: int = 0
    admitted: int = 0
    refused: int = 0  # fills refused: an invalidation came after they started
    evicted: int = 0
    invalidated: int = 0
    cleared: int = 0  # whole-tier drops (disconnect, a gap in the events)
    sent_bytes: int = 0  # body bytes of GETs answered from the tier
    used_bytes: int = 0
    objects: int = 0


def _name(bucket: str, key: str) -> str:
    return f"{bucket}\x00{key}"  # NUL cannot occur in a bucket name


class MemoryTier:
    """Whole small objects by ``(bucket, key)``, bounded in bytes (see the module docstring).

    Args:
        capacity_bytes: most body bytes held at once; 0 turns the tier off.
        gate_bytes: largest object admitted, in bytes.
        forget_after: how many invalidated keys are remembered for :meth:`admit`.
    """

    def __init__(
        self, *, capacity_bytes: int, gate_bytes: int, forget_after: int = 65_536
    ) -> None:
        self.capacity_bytes = max(0, capacity_bytes)
        self.gate_bytes = min(max(0, gate_bytes), self.capacity_bytes)
        self.stats = MemoryTierStats()
        self._objects: dict[str, CachedObject] = {}
        self._by_bucket: dict[str, set[str]] = {}
        self._policy = S3FifoPolicy()
        self._forget_after = max(1, forget_after)
        self._epoch = 0  # counts invalidations of any kind
        self._dropped: dict[str, int] = {}  # key name -> epoch of its last invalidation
        self._dropped_buckets: dict[str, int] = {}
        self._cleared_at = 0
        self._forgotten_at = 0  # the newest epoch no longer remembered in _dropped

    @property
    def enabled(self) -> bool:
        return self.gate_bytes > 0

    # -- reads ---------------------------------------------------------------------------------
    def lookup(self, bucket: str, key: str) -> CachedObject | None:
        """The object if it is held (a hit, counted and recorded for eviction)."""
        if not self.enabled:
            return None
        name = _name(bucket, key)
        found = self._objects.get(name)
        if found is None:  # not held, or invalidated since holds() said it was
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._policy.access(name)
        return found

    def holds(self, bucket: str, key: str, *, count_miss: bool = True) -> bool:
        """Whether ``bucket/key`` is held (a hit is counted by :meth:`lookup`; a miss here,
        unless ``count_miss`` is false)."""
        if self.enabled and _name(bucket, key) in self._objects:
            return True
        if count_miss:
            self.stats.misses += 1
        return False

    def start_fill(self, bucket: str, key: str) -> Fill | None:
        """A ticket for admitting ``bucket/key`` once its GET is complete; ``None`` when
        the tier is off."""
        if not self.enabled:
            return None
        return Fill(bucket, key, self._epoch)

    def admit(self, fill: Fill, info: wire.ObjectInfo, data: bytes) -> bool:
        """Hold ``data`` (the whole object ``info`` describes) unless it is over the gate or
        an invalidation came after ``fill`` was taken. Returns whether it is held now."""
        if len(data) > self.gate_bytes or len(data) != info.size:
            return False
        name = _name(fill.bucket, fill.key)
        newest = max(
            self._dropped.get(name, 0),
            self._dropped_buckets.get(fill.bucket, 0),
            self._cleared_at,
            self._forgotten_at,
        )
        if newest > fill.epoch:
            self.stats.refused += 1
            return False
        self._drop(name)
        need = self.stats.used_bytes + len(data) - self.capacity_bytes
        if need > 0:
            for victim, _ in self._policy.select_victims(need, lambda _: True):
                self._drop(victim)
                self.stats.evicted += 1
        self._objects[name] = CachedObject(info, data)
        self._by_bucket.setdefault(fill.bucket, set()).add(name)
        self._policy.insert(name, len(data))
        self.stats.used_bytes += len(data)
        self.stats.objects = len(self._objects)
        self.stats.admitted += 1
        return True

    # -- invalidation --------------------------------------------------------------------------
    def invalidate(self, bucket: str, key: str) -> None:
        """``bucket/key`` changed: drop it, and refuse fills that started before now."""
        self._epoch += 1
        name = _name(bucket, key)
        self._dropped.pop(name, None)
        self._dropped[name] = self._epoch
        while len(self._dropped) > self._forget_after:
            oldest = next(iter(self._dropped))
            self._forgotten_at = max(self._forgotten_at, self._dropped.pop(oldest))
        if self._drop(name):
            self.stats.invalidated += 1

    def invalidate_bucket(self, bucket: str) -> None:
        """Every object of ``bucket`` changed (the bucket was deleted)."""
        self._epoch += 1
        self._dropped_buckets[bucket] = self._epoch
        for name in list(self._by_bucket.get(bucket, ())):
            if self._drop(name):
                self.stats.invalidated += 1

    def clear(self) -> None:
        """Drop everything and refuse every fill in progress (out of sync with the events)."""
        self._epoch += 1
        self._cleared_at = self._epoch
        self._dropped.clear()
        self._dropped_buckets.clear()
        self._forgotten_at = 0
        for name in list(self._objects):
            self._drop(name)
        self.stats.cleared += 1

    def _drop(self, name: str) -> bool:
        found = self._objects.pop(name, None)
        if found is None:
            return False
        self._policy.remove(name)
        bucket = found.info.bucket
        names = self._by_bucket.get(bucket)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_bucket[bucket]
        self.stats.used_bytes -= len(found.data)
        self.stats.objects = len(self._objects)
        return True
