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
) -> _T:
    """``fn(*args)`` in ``executor`` (``None``: the event loop's default thread pool),
    awaited to its end even if the caller is
    cancelled: then ``on_cancel()`` (if given; it must be thread-safe, such as setting a
    ``threading.Event`` the thread checks) is called, the thread is waited for, and the
    cancellation is re-raised. Whatever the thread uses (a file, a connection) is therefore
    never closed under it.

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
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller gets
        raise
