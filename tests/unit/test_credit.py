"""The connection's download credit budget and one stream's share of it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from edgecache.common import errors
from edgecache.common.credit import HEADER_ROOM, CreditBudget, Share

FRAME = 1024 * 1024 - HEADER_ROOM


def budget(frames: int, **kw) -> CreditBudget:  # type: ignore[no-untyped-def]
    nc = SimpleNamespace(max_payload=1024 * 1024)
    return CreditBudget(nc, max_bytes=frames * FRAME, **kw)  # type: ignore[arg-type]


def test_size_in_frames_of_the_connection() -> None:
    nc = SimpleNamespace(max_payload=1024 * 1024)
    b = CreditBudget(nc)  # type: ignore[arg-type]
    assert (b.frame_bytes, b.frames) == (FRAME, 16)  # the 16 MiB default, in frames of 1 MiB - 256
    assert CreditBudget(nc, max_bytes=1).frames == 1  # never less than one frame  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CreditBudget(nc, max_bytes=0)  # type: ignore[arg-type]


async def test_waiters_are_served_in_order_and_nowait_yields_to_them() -> None:
    b = budget(4)
    assert await b.take(4, timeout_s=1) == 4
    first, second = b.request(3), b.request(1)
    assert b.take_nowait(1) == 0 and b.waiting == 2
    b.give(1)
    assert first.result() == 1 and not second.done()  # the head of the queue takes what there is
    b.give(2)
    assert second.result() == 1 and b.available == 1
    b.give(2)  # `first` and `second` are done
    b.give(1)  # and so is the last of the four taken at first
    assert b.available == 4
    with pytest.raises(ValueError):
        b.give(1)  # more than was ever taken


async def test_a_take_that_times_out_or_is_cancelled_leaves_nothing_behind() -> None:
    b = budget(1)
    held = await b.take(1, timeout_s=1)
    with pytest.raises(errors.ServiceUnavailable):
        await b.take(1, timeout_s=0.05)
    assert b.waiting == 0
    task = asyncio.ensure_future(b.take(1, timeout_s=5))
    await asyncio.sleep(0)
    assert b.waiting == 1
    b.give(held)  # granted to the waiting task ...
    task.cancel()  # ... which is cancelled before it runs: the frame comes back
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (b.available, b.waiting) == (1, 0)


async def test_too_many_waiting_is_slow_down() -> None:
    b = budget(1, max_waiting=2)
    await b.take(1, timeout_s=1)
    futures = [b.request(1), b.request(1)]
    with pytest.raises(errors.SlowDown):
        b.request(1)
    for f in futures:
        b.withdraw(f)
    assert b.waiting == 0


async def test_share_regrants_half_windows_and_shrinks_while_others_wait() -> None:
    b = budget(10)
    s = Share(b, window=8)
    assert await s.open(timeout_s=1) == 8 and b.available == 2
    s.frame_read()
    assert (s.held, b.available) == (7, 3)  # a frame read goes back at once
    assert s.regrant() == 0  # less than half the window read since the grant: nothing yet
    for _ in range(3):
        s.frame_read()
    assert s.regrant() == 4 and s.held == 8 and b.available == 2
    other = b.request(8)  # another stream queues: the 2 free frames go to it at once
    assert other.result() == 2
    queued = b.request(8)
    s.frame_read()  # the first frame read goes to the head of the queue: it can progress
    assert queued.result() == 1 and b.waiting == 0
    queued_too = b.request(8)
    for _ in range(7):
        s.frame_read()
    assert queued_too.result() == 1
    assert s.regrant() == 6 and not s.starved  # nobody waits: the rest is its own again
    for _ in range(6):
        s.frame_read()
    last = b.request(8)  # another stream takes all that is free ...
    assert s.regrant() == 0 and s.starved  # ... so this one holds nothing: it must queue
    with pytest.raises(errors.InternalError):
        s.frame_read()  # a frame beyond the credit granted
    for future in (other, queued, queued_too, last):
        b.withdraw(future)
    s.close()
    s.close()
    assert (b.available, b.waiting) == (10, 0)


async def test_share_limit_caps_what_it_holds() -> None:
    """A relay holds no more than the next hop's credit (and at least one frame)."""
    b = budget(10)
    s = Share(b, window=8)
    assert await s.open(limit=3, timeout_s=1) == 3
    for _ in range(3):
        s.frame_read()
    assert s.regrant(limit=0) == 1  # never nothing at all: the stream must progress
    assert s.regrant(limit=5) == 0  # not half a window read since the last grant
    s.frame_read()
    assert s.regrant(limit=5) == 5
    s.close()
    assert b.available == 10


async def test_share_request_accept_and_close() -> None:
    b = budget(1)
    s = Share(b, window=2)
    await s.open(timeout_s=1)
    hog = Share(b, window=2)
    pending = asyncio.ensure_future(hog.open(timeout_s=5))
    await asyncio.sleep(0)
    s.frame_read()
    assert await pending == 1  # the frame read went to the stream waiting for one
    assert s.regrant() == 0 and s.starved
    want = s.request()
    assert not want.done()
    hog.close()
    assert want.done() and s.accept() == 1 and s.held == 1
    s.withdraw()  # after accept: nothing to give back
    assert not s.request().done()  # a request nobody takes up ...
    s.close()  # ... is dropped with the rest
    assert (b.available, b.waiting) == (1, 0)
