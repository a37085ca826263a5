"""The one backoff scheme (edgecache.common.backoff): doubling caps, full jitter, pauses."""

from __future__ import annotations

import pytest

from edgecache.common.backoff import Backoff


def test_delay_doubles_from_the_first_failure_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.25, max_s=1.0)
    assert [backoff.delay(n) for n in (-1, 0, 1, 2, 3, 4, 10**6)] == [
        0.25, 0.25, 0.25, 0.5, 1.0, 1.0, 1.0
    ]


def test_full_jitter_stays_below_the_delay() -> None:
    backoff = Backoff(base_s=1.0, max_s=60.0)
    assert backoff.full_jitter(3, rng=lambda: 0.0) == 0.0
    assert backoff.full_jitter(3, rng=lambda: 0.5) == 2.0
    assert Backoff(base_s=-1.0, max_s=1.0).full_jitter(1, rng=lambda: 0.5) == 0.0


def test_delays_are_the_pauses_of_a_bounded_loop() -> None:
    assert Backoff(base_s=0.03, max_s=0.5).delays(5) == pytest.approx((0.03, 0.06, 0.12, 0.24, 0.48))
    assert Backoff(base_s=1.0, max_s=2.0).delays(0) == ()
