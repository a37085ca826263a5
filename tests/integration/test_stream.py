"""The framed, credit-based stream protocol against a real nats-server."""

from __future__ import annotations

import asyncio
import os

import pytest

from edgecache.common import errors, stream, wire
from edgecache.common.stream import DownloadSender, UploadReceiver


def _spawn(handler):
    async def cb(msg):
        asyncio.ensure_future(handler(msg))

    return cb


async def _serve_download(nc, subject: str, payload: bytes, *, fail_after: int | None = None):
    async def handler(msg):
        tx = DownloadSender(nc, msg.reply, window=DownloadSender.window_of(msg), idle_timeout_s=5)
        try:
            await tx.start(wire.Ok())
            for i in range(0, len(payload), 300_000):
                if fail_after is not None and i >= fail_after:
                    await tx.fail(errors.ServiceUnavailable("origin went away"))
                    return
                await tx.send(payload[i : i + 300_000])
            await tx.end()
        finally:
            await tx.close()

    return await nc.subscribe(subject, cb=_spawn(handler))


async def test_download_round_trip_many_frames(nc) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 17)
    sub = await _serve_download(nc, "test.dl.ok", payload)
    reply, body = await stream.download(nc, "test.dl.ok", wire.Ok(), window=4, timeout_s=5)
    assert isinstance(reply, wire.Ok)
    got = b"".join([p async for p in body])
    assert got == payload
    await sub.unsubscribe()


async def test_download_error_mid_stream_raises(nc) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.fail", payload, fail_after=600_000)
    _, body = await stream.download(nc, "test.dl.fail", wire.Ok(), window=4, timeout_s=5)
    received = 0
    with pytest.raises(errors.ServiceUnavailable):
        async for piece in body:
            received += len(piece)
    assert 0 < received < len(payload)
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
    _, body = await stream.download(nc, "test.dl.slow", wire.Ok(), window=2, timeout_s=5)
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
        await stream.download(nc, "test.nobody", wire.Ok(), window=2, timeout_s=0.3)


async def test_closing_a_download_before_reading_releases_it(nc, nats_server) -> None:
    import nats

    payload = os.urandom(3 * 1024 * 1024)
    sub = await _serve_download(nc, "test.dl.close", payload)
    reader = await nats.connect(nats_server.url)
    try:
        _, body = await stream.download(reader, "test.dl.close", wire.Ok(), window=2, timeout_s=5)
        assert len(reader._subs) == 1
        await body.aclose()  # never iterated
        assert len(reader._subs) == 0
        assert [p async for p in body] == []
    finally:
        await reader.drain()
        await sub.unsubscribe()
