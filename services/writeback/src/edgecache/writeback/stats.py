"""The counters of one writeback replica, kept by the service and read by its metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["WritebackStats"]


@dataclass
class WritebackStats:
    """Counters of one replica since it started.

    Attributes:
        done: intents finished and acked (including skipped ones).
        skipped: of those, superseded or already clean (nothing new written).
        failed: attempts that failed and were scheduled (or ``nak``-ed) for a retry.
        retried: attempts that were retries (``Ec-Attempt`` or ``num_delivered`` > 1).
        unscheduled: failed attempts whose retry could not be scheduled and that were
            ``nak``-ed instead: their partition waits for them (head-of-line blocking).
        dropped: undecodable intents, ``term``-ed.
        bytes_written: object bytes written to the origin.
        in_flight: intents being worked on now.
        failing: the keys whose last attempt here failed, ``(bucket, key)`` (``key`` is
            ``""`` for bucket intents) → ``(attempts so far, last error)``; a key leaves
            it when an intent of it is applied.
    """

    done: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    unscheduled: int = 0
    dropped: int = 0
    bytes_written: int = 0
    in_flight: int = 0
    failing: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        """The counters (``failing`` as its size)."""
        counters = {k: v for k, v in asdict(self).items() if k != "failing"}
        return {**counters, "failing": len(self.failing)}
