"""The hybrid logical clock (edgecache.common.hlc): monotonic whatever the wall clock does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgecache.common.hlc import HybridClock

# a step of the schedule: ("now", wall reading) or ("observe", remote timestamp)
_STEPS = st.lists(
    st.tuples(st.sampled_from(["now", "observe"]), st.integers(min_value=0, max_value=2**62)),
    min_size=1,
    max_size=60,
)


@given(_STEPS)
def test_timestamps_increase_and_pass_what_was_observed(steps: list[tuple[str, int]]) -> None:
    wall = [0]
    clock = HybridClock(lambda: wall[0])
    last_given = -1
    floor = -1  # every timestamp must exceed this: the largest given or observed so far
    for kind, value in steps:
        if kind == "observe":
            clock.observe(value)
            floor = max(floor, value)
            continue
        wall[0] = value  # the wall clock jumps anywhere, backwards included
        ts = clock.now()
        assert ts > last_given
        assert ts > floor
        assert ts >= value  # never behind the wall clock
        last_given = floor = ts


@given(st.integers(min_value=1, max_value=2**62), st.integers(min_value=1, max_value=10**12))
def test_a_clock_stepped_back_ticks_logically(start: int, step_back: int) -> None:
    wall = [start]
    clock = HybridClock(lambda: wall[0])
    first = clock.now()
    wall[0] = max(0, start - step_back)
    assert [clock.now() for _ in range(3)] == [first + 1, first + 2, first + 3]
    wall[0] = first + 100  # the wall clock catches up: timestamps follow it again
    assert clock.now() == first + 100


def test_follows_the_wall_clock() -> None:
    clock = HybridClock()
    a, b = clock.now(), clock.now()
    assert 0 < a < b
    clock.observe(b + 10**9)  # a remote clock a second ahead
    assert clock.now() == b + 10**9 + 1
    assert clock.last == b + 10**9 + 1
