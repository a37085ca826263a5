"""run_to_completion: a worker thread is waited for when its caller is cancelled, and what
it returns then is handed to ``on_dropped`` (something to close that nobody will take)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgecache.cachenode.threads import run_to_completion


async def test_a_cancelled_caller_waits_for_the_thread_and_drops_its_result() -> None:
    started, release, stopped = threading.Event(), threading.Event(), threading.Event()
    dropped: list[object] = []
    result = object()

    def work() -> object:
        started.set()
        release.wait(5)
        return result

    task = asyncio.ensure_future(
        run_to_completion(work, on_cancel=lambda: (stopped.set(), release.set()), on_dropped=dropped.append)
    )
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set() and dropped == [result]


async def test_a_thread_that_fails_after_its_caller_was_cancelled_drops_nothing() -> None:
    started, release = threading.Event(), threading.Event()
    dropped: list[object] = []

    def work() -> object:
        started.set()
        release.wait(5)
        raise OSError("the origin went away")

    task = asyncio.ensure_future(run_to_completion(work, on_cancel=release.set, on_dropped=dropped.append))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dropped == []


async def test_an_uncancelled_call_returns_what_the_thread_returned() -> None:
    dropped: list[object] = []
    assert await run_to_completion(lambda a, b: a + b, 2, 3, on_dropped=dropped.append) == 5
    assert dropped == []
