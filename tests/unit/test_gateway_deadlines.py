"""The gateway's per-loop deadline sweep and the header lines of answers written whole."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.gateway import deadlines
from edgecache.gateway.wholeresponse import header_lines


class _Member:
    def __init__(self, due: float) -> None:
        self.due = due
        self.fired: list[float] = []

    def check_deadlines(self, now: float) -> None:
        if now >= self.due and not self.fired:
            self.fired.append(now)


def test_the_interval_is_a_quarter_of_the_shortest_timeout_within_bounds() -> None:
    assert deadlines.interval_for(10.0, 20.0) == 1.0
    assert deadlines.interval_for(1.0, 20.0) == 0.25
    assert deadlines.interval_for(0.001) == 0.01


async def test_a_deadline_fires_within_one_interval_and_the_sweep_stops_when_idle() -> None:
    loop = asyncio.get_running_loop()
    sweep = deadlines.Sweeper(loop, 0.02)
    soon, later = _Member(loop.time() + 0.05), _Member(loop.time() + 3600)
    sweep.add(soon, 0.02)
    sweep.add(later, 0.02)
    while not soon.fired:
        await asyncio.sleep(0.01)
    assert soon.due <= soon.fired[0] < soon.due + 0.02 + 0.1  # an interval, and some slack
    assert not later.fired
    sweep.discard(soon)
    sweep.discard(later)
    await asyncio.sleep(0.05)
    assert sweep._handle is None  # noqa: SLF001 - nothing registered: no timer left


async def test_one_failing_connection_does_not_stop_the_others() -> None:
    class Broken:
        def check_deadlines(self, now: float) -> None:
            raise RuntimeError("broken")

    loop = asyncio.get_running_loop()
    sweep = deadlines.Sweeper(loop, 0.01)
    member = _Member(loop.time())
    broken = Broken()
    sweep.add(broken, 0.01)
    sweep.add(member, 0.01)
    try:
        while not member.fired:
            await asyncio.sleep(0.01)
        assert member.fired
    finally:  # the loop outlives this test: leave no sweep behind
        sweep.discard(member)
        sweep.discard(broken)


def test_header_lines_refuse_what_could_forge_a_header() -> None:
    assert (
        header_lines({"etag": '"a"', "x-amz-meta-k": "v\tw"})
        == b'etag: "a"\r\nx-amz-meta-k: v\tw\r\n'
    )
    for bad in ("a\r\nx-evil: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb"):
        with pytest.raises(ValueError, match="control character"):
            header_lines({"etag": bad})
    with pytest.raises(ValueError):
        header_lines({"etag": "snowman \u2603"})  # not latin-1
