"""The framed, credit-based stream protocol against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from edgecache.common import errors, stream, wire
from edgecache.common.credit import CreditBudget
from edgecache.common.stream import DownloadSender, UploadReceiver


def _spawn(handler):
    async def cb(msg):
        asyncio.ensure_future(handler(msg))

    return cb


async def _serve_download(
    nc, subject: str, payload: bytes, *, fail_after: int | None = None, piece: int = 300_000
):
    async def handler(msg):
        tx = DownloadSender(nc, msg.reply, window=DownloadSender.window_of(msg), idle_timeout_s=5)
        try:
            await tx.start(wire.Ok())
            for i in range(0, len(payload), piece):
                if fail_after is not None and i >= fail_after:
                    await tx.fail(errors.ServiceUnavailable("origin went away"))
                    return
                await tx.send(payload[i : i + piece])
            await tx.end()
        finally:
            await tx.close()

    return await nc.subscribe(subject, cb=_spawn(handler))


async def test_download_round_trip_many_frames(nc) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 17)
    sub = await _serve_download(nc, "test.dl.ok", payload)
    budget = CreditBudget(nc)
    reply, body = await stream.download(nc, "test.dl.ok", wire.Ok(), budget=budget, window=4, timeout_s=5)
    assert isinstance(reply, wire.Ok)
    got = b"".join([p async for p in body])
    assert got == payload
    assert budget.available == budget.frames  # the end returned every frame of credit
    await sub.unsubscribe()


async def test_download_error_mid_stream_raises(nc) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.fail", payload, fail_after=600_000)
    budget = CreditBudget(nc)
    _, body = await stream.download(nc, "test.dl.fail", wire.Ok(), budget=budget, window=4, timeout_s=5)
    received = 0
    with pytest.raises(errors.ServiceUnavailable):
        async for piece in body:
            received += len(piece)
    assert 0 < received < len(payload)
    assert budget.available == budget.frames  # so did the sender's error
    await sub.unsubscribe()


async def test_slow_reader_bounds_sender(nc) -> None:
    """With a window of 2, the sender can be at most 2 frames ahead of the reader."""
    frame = stream.frame_bytes(nc)
    sent: list[int] = []

    async def handler(msg):
        tx = DownloadSender(nc, msg.reply, window=DownloadSender.window_of(msg), idle_timeout_s=5)
        await tx.start(wire.Ok())
        for i in range(10):
            await tx.send(b"x" * frame)
            sent.append(i)
        await tx.end()
        await tx.close()

    sub = await nc.subscribe("test.dl.slow", cb=_spawn(handler))
    _, body = await stream.download(nc, "test.dl.slow", wire.Ok(), budget=CreditBudget(nc), window=2, timeout_s=5)
    await asyncio.sleep(0.3)
    assert len(sent) == 2  # nothing more without credit
    n = 0
    async for _ in body:
        n += 1
    assert n == 10 and len(sent) == 10
    await sub.unsubscribe()


async def _serve_upload(nc, subject: str, received: list[bytes], outcome: list[object]):
    async def handler(msg):
        rx = UploadReceiver(nc, msg.reply, nc.new_inbox(), window=4, idle_timeout_s=2)
        await rx.open()
        try:
            async for piece in rx:
                received.append(piece)
            assert rx.end is not None
            outcome.append(rx.end)
            await rx.finish(wire.Ok())
        except errors.S3Error as exc:
            outcome.append(exc)
            await rx.fail(exc)
        finally:
            await rx.close()

    return await nc.subscribe(subject, cb=_spawn(handler))


async def _pieces(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_upload_round_trip_with_trailers(nc) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 5)
    received: list[bytes] = []
    outcome: list[object] = []
    sub = await _serve_upload(nc, "test.ul.ok", received, outcome)
    trailers: dict[str, str] = {}

    async def body():
        async for p in _pieces(payload, 700_000):
            yield p
        trailers["crc32"] = "AAAAAA=="

    reply = await stream.upload(nc, "test.ul.ok", wire.Ok(), body(), timeout_s=5, trailers=trailers)
    assert isinstance(reply, wire.Ok)
    assert b"".join(received) == payload
    assert isinstance(outcome[0], wire.End) and outcome[0].checksums == {"crc32": "AAAAAA=="}
    await sub.unsubscribe()


async def test_upload_body_error_aborts_at_server(nc) -> None:
    received: list[bytes] = []
    outcome: list[object] = []
    sub = await _serve_upload(nc, "test.ul.abort", received, outcome)

    async def body():
        yield b"a" * 1000
        raise errors.XAmzContentSHA256Mismatch()

    with pytest.raises(errors.XAmzContentSHA256Mismatch):
        await stream.upload(nc, "test.ul.abort", wire.Ok(), body(), timeout_s=5)
    for _ in range(50):
        if outcome:
            break
        await asyncio.sleep(0.02)
    assert isinstance(outcome[0], errors.XAmzContentSHA256Mismatch)
    await sub.unsubscribe()


async def test_no_responder_is_service_unavailable(nc) -> None:
    with pytest.raises(errors.ServiceUnavailable):
        await stream.download(nc, "test.nobody", wire.Ok(), budget=(budget := CreditBudget(nc)), window=2, timeout_s=0.3)
    assert budget.available == budget.frames


async def test_closing_a_download_before_reading_releases_it(nc, nats_server) -> None:
    import nats

    payload = os.urandom(3 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.close", payload)
    reader = await nats.connect(nats_server.url)
    try:
        budget = CreditBudget(reader)
        _, body = await stream.download(reader, "test.dl.close", wire.Ok(), budget=budget, window=2, timeout_s=5)
        assert len(reader._subs) == 1
        assert budget.available == budget.frames - 2
        await body.aclose()  # never iterated
        assert len(reader._subs) == 0
        assert budget.available == budget.frames
        assert [p async for p in body] == []
    finally:
        await reader.drain()
        await sub.unsubscribe()


async def test_streams_share_a_budget_of_one_frame(nc) -> None:
    """Three multi-frame downloads on a budget of a single frame: they take turns (each
    queues for credit when it has read what it held) and all complete, even the ones whose
    ``End`` arrives while they wait for credit."""
    payloads = {f"test.dl.share.{i}": os.urandom(3 * 1024 * 1024 + i) for i in range(3)}
    subs = [await _serve_download(nc, subject, data) for subject, data in payloads.items()]
    budget = CreditBudget(nc, max_bytes=1)
    assert budget.frames == 1

    async def fetch(subject: str) -> bytes:
        _, body = await stream.download(nc, subject, wire.Ok(), budget=budget, window=8, timeout_s=5)
        return b"".join([p async for p in body])

    got = await asyncio.gather(*(fetch(s) for s in payloads))
    assert got == list(payloads.values())
    assert (budget.available, budget.waiting) == (1, 0)
    for sub in subs:
        await sub.unsubscribe()


async def test_early_close_and_cancellation_return_the_credit(nc) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.early", payload)
    budget = CreditBudget(nc, max_bytes=4 * stream.frame_bytes(nc))
    _, first = await stream.download(nc, "test.dl.early", wire.Ok(), budget=budget, window=4, timeout_s=5)
    assert budget.available == 0
    # a second stream queues for credit; cancelling it leaves nothing behind
    waiting = asyncio.ensure_future(
        stream.download(nc, "test.dl.early", wire.Ok(), budget=budget, window=4, timeout_s=5)
    )
    await asyncio.sleep(0.05)
    assert budget.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.waiting == 0
    await anext(first)  # one frame read, three granted and maybe in flight
    await first.aclose()  # early close: all four come back
    assert (budget.available, budget.waiting) == (4, 0)
    await sub.unsubscribe()


async def test_budget_belongs_to_one_connection(nc, nats_server) -> None:
    import nats

    other = await nats.connect(nats_server.url)
    try:
        with pytest.raises(ValueError):
            await stream.download(nc, "test.nobody", wire.Ok(), budget=CreditBudget(other), window=2, timeout_s=1)
    finally:
        await other.drain()


async def test_end_arriving_while_waiting_for_credit_ends_the_stream(nc) -> None:
    """A stream that gave its credit back to a queued stream and holds none still sees its
    ``End``: it does not wait for credit it will never use."""
    frame = stream.frame_bytes(nc)
    big = await _serve_download(nc, "test.dl.stall", os.urandom(4 * frame))
    small_payload = os.urandom(frame)  # exactly one frame
    small = await _serve_download(nc, "test.dl.small", small_payload, piece=frame)
    budget = CreditBudget(nc, max_bytes=2 * frame)
    _, stalled = await stream.download(nc, "test.dl.stall", wire.Ok(), budget=budget, window=1, timeout_s=5)
    _, body = await stream.download(nc, "test.dl.small", wire.Ok(), budget=budget, window=1, timeout_s=5)
    queued = asyncio.ensure_future(
        stream.download(nc, "test.dl.stall", wire.Ok(), budget=budget, window=1, timeout_s=5)
    )
    await asyncio.sleep(0.05)
    assert budget.waiting == 1
    started = asyncio.get_running_loop().time()
    assert b"".join([p async for p in body]) == small_payload  # its frame went to `queued`
    assert asyncio.get_running_loop().time() - started < 1
    _, third = await queued
    for b in (stalled, third):
        await b.aclose()
    assert (budget.available, budget.waiting) == (2, 0)
    await big.unsubscribe()
    await small.unsubscribe()


async def test_a_close_cut_short_leaves_the_connection_reading(nc, nats_server) -> None:
    """The gateway gives a closing download 5 s, then cancels the close. Whatever it was
    waiting for then (frames still in flight, the sender's answer), the connection must go
    on reading: nats-py's flush(), cancelled, would leave a future in its PONG queue and the
    next PONG would kill the connection's reader, breaking every stream on it."""
    import nats

    payload = os.urandom(2 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.cutclose", payload)
    reader = await nats.connect(nats_server.url)
    budget = CreditBudget(reader)
    try:
        for ticks in range(1, 9):  # the close has started (a task cancelled before it runs never does)
            _, body = await stream.download(reader, "test.dl.cutclose", wire.Ok(), budget=budget, window=4, timeout_s=5)
            closing = asyncio.ensure_future(body.aclose())
            for _ in range(ticks):
                await asyncio.sleep(0)
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closing
            assert budget.available == budget.frames
        await reader.flush(timeout=2)  # a PONG comes back; the reader survives it
        _, body = await stream.download(reader, "test.dl.cutclose", wire.Ok(), budget=budget, window=4, timeout_s=5)
        assert b"".join([p async for p in body]) == payload
    finally:
        await reader.close()
        await sub.unsubscribe()
