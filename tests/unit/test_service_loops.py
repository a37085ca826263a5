"""``edgecache.common.runtime.until_stopped``: a service's background loop that ends before
the service is stopped ends the service with an error naming the loop, instead of leaving
it running with a part of it dead (the federator's apply loop once died that way, silently,
and the site stopped applying other sites' changes)."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.common.runtime import LoopEnded, until_stopped

pytestmark = pytest.mark.asyncio


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_returns_when_stopped_and_leaves_the_loops_running() -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(_forever(), name="sweep")
    asyncio.get_running_loop().call_later(0.01, stop.set)
    await until_stopped(stop, [loop])
    assert not loop.done()
    loop.cancel()


async def test_a_loop_that_raises_ends_it_with_the_loop_named_and_its_error_chained() -> None:
    async def crash() -> None:
        await asyncio.sleep(0.01)
        raise TimeoutError

    stop = asyncio.Event()
    other = asyncio.create_task(_forever(), name="sweep")
    with pytest.raises(LoopEnded, match="federation-apply") as caught:
        await until_stopped(stop, [other, asyncio.create_task(crash(), name="federation-apply")])
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert not other.done()
    other.cancel()


@pytest.mark.parametrize("how", ["returns", "is cancelled"])
async def test_a_loop_that_returns_or_is_cancelled_ends_it_too(how: str) -> None:
    async def quits() -> None:
        await asyncio.sleep(0.01)
        if how == "is cancelled":
            raise asyncio.CancelledError

    with pytest.raises(LoopEnded, match="heartbeats"):
        await until_stopped(asyncio.Event(), [asyncio.create_task(quits(), name="heartbeats")])
