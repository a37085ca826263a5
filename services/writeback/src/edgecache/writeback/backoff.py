"""Retry delays: exponential backoff with full jitter (AWS Architecture Blog, "Exponential
Backoff And Jitter"), driven by JetStream's delivery count.

The scheme is :class:`edgecache.common.backoff.Backoff`; this module adds the writeback
policy on top of it: a failing side's ``retry_after_s`` hint is a floor.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from edgecache.common.backoff import Backoff

__all__ = ["retry_delay_s"]


def retry_delay_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """How long to wait before delivering an intent again.

    Args:
        attempt: the delivery that just failed, 1 for the first (``num_delivered``).
        base_s: the cap after the first failure, in seconds.
        max_s: the largest cap, in seconds.
        retry_after_s: a hint from the failing side (``S3Error.retry_after_s``): the delay is
            at least this, but never more than ``max_s``.
        rng: a source of floats in ``[0, 1)``.

    Returns:
        Seconds, uniform in ``[0, min(max_s, base_s * 2**(attempt - 1))]`` (full jitter),
        raised to ``min(retry_after_s, max_s)`` when a hint is given.
    """
    delay = Backoff(base_s=base_s, max_s=max_s).full_jitter(attempt, rng=rng)
    if retry_after_s:
        delay = max(delay, min(float(retry_after_s), max_s))
    return delay
