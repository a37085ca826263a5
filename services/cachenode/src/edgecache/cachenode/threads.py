"""Worker threads that own what they touch until they return."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["run_to_completion"]

_T = TypeVar("_T")


async def run_to_completion(
    fn: Callable[..., _T],
    *args: Any,
    executor: Executor | None = None,
    on_cancel: Callable[[], None] | None = None,
    on_dropped: Callable[[_T], object] | None = None,
) -> _T:
    """``fn(*args)`` in ``executor`` (``None``: the event loop's default thread pool),
    awaited to its end even if the caller is cancelled. Whatever the thread uses (a file, a
    connection) is therefore never closed under it.

    When cancelled: ``on_cancel()`` is called (if given; it must be thread-safe, such as
    setting a ``threading.Event`` the thread checks), the thread is waited for, its result
    handed to ``on_dropped`` (if given and the thread returned one: something to close that
    nobody will take), and the cancellation re-raised.

    Raises:
        What ``fn`` raises; ``CancelledError`` when cancelled (``fn``'s own outcome is
        then dropped).
    """
    fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        await asyncio.wait([fut])
        # fut.exception() before on_dropped: the thread's error is retrieved either way
        if not fut.cancelled() and fut.exception() is None and on_dropped is not None:
            on_dropped(fut.result())
        raise
