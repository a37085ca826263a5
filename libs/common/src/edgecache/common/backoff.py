"""Exponential backoff: how long to wait after the n-th failure in a row.

One scheme for every retry in edgecache: the wait after failure ``n`` is capped at
``base_s * 2**(n - 1)`` seconds, and never more than ``max_s``. Callers either wait the
cap itself (:meth:`Backoff.delay`: the launcher's restarts, short fixed pauses) or a
uniform draw below it (:meth:`Backoff.full_jitter`, "Exponential Backoff And Jitter",
AWS Architecture Blog: many clients retrying one thing spread out instead of stampeding).

This computes delays only; the caller owns the loop and the clock, because edgecache's
retries are driven by a JetStream delivery count, a supervisor's poll loop or a request
loop rather than by a decorated function.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]

_MAX_EXPONENT = 62  # base_s * 2**62 is a finite float; the min() with max_s caps it anyway


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff capped at ``max_s``.

    Attributes:
        base_s: the delay after the first failure, in seconds.
        max_s: the largest delay, in seconds.
    """

    base_s: float
    max_s: float

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row (1 for the first; less counts as 1).

        Returns:
            ``min(max_s, base_s * 2**(failures - 1))`` seconds.
        """
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.max_s, self.base_s * float(2**exponent))

    def full_jitter(self, failures: int, *, rng: Callable[[], float] = random.random) -> float:
        """A delay drawn uniformly below :meth:`delay` ("full jitter").

        Args:
            failures: failures in a row, 1 for the first.
            rng: a source of floats in ``[0, 1)``.

        Returns:
            Seconds, uniform in ``[0, delay(failures)]`` (0 if that is negative).
        """
        return rng() * max(self.delay(failures), 0.0)

    def delays(self, count: int) -> tuple[float, ...]:
        """The first ``count`` delays, ``delay(1) .. delay(count)``: the pauses of a loop that
        tries ``count + 1`` times (e.g. ``Backoff(0.03, 0.5).delays(5)`` is
        ``(0.03, 0.06, 0.12, 0.24, 0.48)``, 0.93 s in all)."""
        return tuple(self.delay(n) for n in range(1, count + 1))
