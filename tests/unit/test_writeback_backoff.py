"""Retry delays of the writeback service: exponential caps, full jitter, hints."""

from __future__ import annotations

import random

import pytest

from edgecache.writeback.backoff import retry_delay_s


@pytest.mark.parametrize(
    ("attempt", "cap"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (10_000, 30.0)],
)
def test_cap_doubles_per_attempt_up_to_the_maximum(attempt: int, cap: float) -> None:
    assert retry_delay_s(attempt, base_s=0.5, max_s=30.0, rng=lambda: 0.999999) == pytest.approx(
        cap, rel=1e-5
    )
    assert retry_delay_s(attempt, base_s=0.5, max_s=30.0, rng=lambda: 0.0) == 0.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = [retry_delay_s(4, base_s=1.0, max_s=60.0, rng=rng.random) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_retry_after_hint_is_a_floor_capped_by_the_maximum() -> None:
    assert retry_delay_s(1, base_s=0.5, max_s=30.0, retry_after_s=5, rng=lambda: 0.0) == 5.0
    assert retry_delay_s(1, base_s=0.5, max_s=30.0, retry_after_s=120, rng=lambda: 0.0) == 30.0
    assert retry_delay_s(
        8, base_s=0.5, max_s=30.0, retry_after_s=1, rng=lambda: 0.9
    ) == pytest.approx(27.0)
