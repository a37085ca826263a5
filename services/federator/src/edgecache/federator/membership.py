"""The live set of cache nodes, as the federator sees it from their heartbeats.

Pure bookkeeping (no I/O, an injectable clock) so that placement and invalidation can be
built on it later and tested without NATS: every change comes back as a
:class:`Change` for the caller to log or act on.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgecache.common import wire

__all__ = ["Change", "ChangeKind", "Member", "Membership"]


class ChangeKind(enum.Enum):
    JOINED = "joined"
    RESTARTED = "restarted"  # same node id, new ``started``: its process was restarted
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    heartbeat: wire.Heartbeat  # the newest one (for LEFT: the last one seen)


@dataclass(slots=True)
class Member:
    heartbeat: wire.Heartbeat
    seen: float  # clock() when the last heartbeat arrived, s


class Membership:
    """Live cache nodes keyed by node id; a node leaves ``ttl_s`` after its last heartbeat.

    Args:
        ttl_s: seconds without a heartbeat after which a node is gone (the same figure as
            the TTL of KV ``nodes``, so this view and the KV agree).
        clock: monotonic seconds; ``time.monotonic`` unless a test injects one.
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._members: dict[str, Member] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    def node_ids(self) -> list[str]:
        """Ids of the live nodes, sorted."""
        return sorted(self._members)

    def get(self, node_id: str) -> wire.Heartbeat | None:
        """The last heartbeat of a live node, else ``None``."""
        member = self._members.get(node_id)
        return member.heartbeat if member else None

    def observe(self, beat: wire.Heartbeat) -> Change | None:
        """Record a heartbeat; a JOINED or RESTARTED change, or ``None`` for a routine beat."""
        member = self._members.get(beat.node_id)
        self._members[beat.node_id] = Member(beat, self._clock())
        if member is None:
            return Change(ChangeKind.JOINED, beat)
        if member.heartbeat.started != beat.started:
            return Change(ChangeKind.RESTARTED, beat)
        return None

    def expire(self) -> list[Change]:
        """Drop the nodes silent for more than ``ttl_s``; a LEFT change for each."""
        deadline = self._clock() - self.ttl_s
        gone = [node_id for node_id, m in self._members.items() if m.seen < deadline]
        return [Change(ChangeKind.LEFT, self._members.pop(node_id).heartbeat) for node_id in gone]
