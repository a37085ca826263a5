"""How the writeback service answers JetStream for each outcome of an intent, with a fake
message and a fake applier (no NATS): ack, nak with backoff, term, in-progress.

The fake state has no message schedules (a nats-server older than 2.12), so failures are
``nak``-ed in place; the scheduled retries are tested against a real server in
tests/integration/test_writeback.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from edgecache.common import errors, wire
from edgecache.common.config import WritebackConfig
from edgecache.writeback.service import WritebackService
from edgecache.writeback.worker import Outcome, op_of

CONFIG = WritebackConfig(ack_wait_s=0.15, backoff_base_s=1.0, backoff_max_s=8.0)
PUT = wire.ObjectWritten(id="i1", at_ns=0, bucket="b", key="k", version="v1")


@dataclass
class FakeMsg:
    data: bytes
    num_delivered: int = 1
    calls: list[tuple[str, float | None]] = field(default_factory=list)
    subject: str = "edgecache.writeback.3"
    headers: dict[str, str] | None = None

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(
            num_delivered=self.num_delivered, sequence=SimpleNamespace(stream=42)
        )

    async def ack(self) -> None:
        self.calls.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))

    async def term(self) -> None:
        self.calls.append(("term", None))

    async def in_progress(self) -> None:
        self.calls.append(("wpi", None))


class FakeApplier:
    def __init__(self, result: Outcome | BaseException | None = None, delay_s: float = 0.0) -> None:
        self.result = result or Outcome("put", "written", 10)
        self.delay_s = delay_s
        self.seen: list[wire.Intent] = []

    async def apply(self, intent: wire.Intent) -> Outcome:
        self.seen.append(intent)
        await asyncio.sleep(self.delay_s)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def service_with(applier: FakeApplier) -> WritebackService:
    nc = SimpleNamespace(jetstream=lambda: None, is_closed=False, max_payload=1024 * 1024)
    state = SimpleNamespace(js=None, objects=None, buckets=None, schedules=False)
    service = WritebackService(nc, state, None, CONFIG)  # type: ignore[arg-type]
    service._applier = applier  # type: ignore[assignment]
    return service


async def test_success_is_acked_and_counted() -> None:
    applier = FakeApplier()
    service = service_with(applier)
    msg = FakeMsg(wire.encode(PUT))
    await service._process(msg)  # type: ignore[arg-type]
    assert msg.calls == [("ack", None)]
    assert applier.seen == [PUT]
    assert (service.stats.done, service.stats.bytes_written, service.stats.failed) == (1, 10, 0)


async def test_skips_are_acked_and_counted_as_skipped() -> None:
    service = service_with(FakeApplier(Outcome("put", "superseded")))
    msg = FakeMsg(wire.encode(PUT))
    await service._process(msg)  # type: ignore[arg-type]
    assert msg.calls == [("ack", None)]
    assert (service.stats.done, service.stats.skipped) == (1, 1)


@pytest.mark.parametrize(
    "error",
    [
        errors.ServiceUnavailable("origin down"),
        errors.BucketNotEmpty(),
        ConnectionError("reset"),
        KeyError("x"),
    ],
)
async def test_any_failure_is_nakked_with_a_backoff_delay_never_termed(
    error: BaseException,
) -> None:
    service = service_with(FakeApplier(error))
    msg = FakeMsg(wire.encode(PUT), num_delivered=3)  # third attempt: cap 4 s
    await service._process(msg)  # type: ignore[arg-type]
    [(kind, delay)] = msg.calls
    assert kind == "nak" and delay is not None and 0.0 <= delay <= 4.0
    assert (service.stats.failed, service.stats.retried, service.stats.done) == (1, 1, 0)


async def test_retry_after_hint_sets_the_least_delay() -> None:
    service = service_with(FakeApplier(errors.SlowDown(retry_after_s=6)))
    msg = FakeMsg(wire.encode(PUT))
    await service._process(msg)  # type: ignore[arg-type]
    assert msg.calls == [("nak", 6.0)]


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"[]", b'{"type":"object.written.v1","id":"x"}', b'{"id":"x","at_ns":0}'],
)
async def test_undecodable_intent_is_termed(data: bytes) -> None:
    applier = FakeApplier()
    service = service_with(applier)
    msg = FakeMsg(data)
    await service._process(msg)  # type: ignore[arg-type]
    assert msg.calls == [("term", None)]
    assert service.stats.dropped == 1 and not applier.seen


async def test_intent_of_a_newer_type_is_kept_not_termed() -> None:
    service = service_with(FakeApplier())
    msg = FakeMsg(b'{"type":"object.written.v2","id":"x","at_ns":0,"bucket":"b"}')
    await service._process(msg)  # type: ignore[arg-type]
    assert msg.calls == [("nak", CONFIG.backoff_max_s)]
    assert service.stats.dropped == 0


async def test_long_work_reports_progress_every_quarter_of_ack_wait() -> None:
    service = service_with(FakeApplier(delay_s=0.4))
    msg = FakeMsg(wire.encode(PUT))
    await service._process(msg)  # type: ignore[arg-type]
    kinds = [k for k, _ in msg.calls]
    # 0.4 s / 0.0375 s: about 10; a loaded machine delays timers (fewer), never more
    assert kinds[-1] == "ack" and 4 <= kinds.count("wpi") <= 11


class StallingApplier(FakeApplier):
    """Blocks the event loop (a stand-in for a CPU-bound step) for longer than ack_wait."""

    async def apply(self, intent: wire.Intent) -> Outcome:
        await asyncio.sleep(0.01)
        time.sleep(CONFIG.ack_wait_s * 1.5)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(1.0)  # the keepalive notices the late report and cancels us here
        return self.result


async def test_work_whose_progress_report_came_too_late_is_given_up() -> None:
    """JetStream may have handed the intent on after ack_wait without a report: the replica
    stops its own work and hands it back rather than run beside another replica."""
    service = service_with(StallingApplier())
    msg = FakeMsg(wire.encode(PUT))
    task = asyncio.create_task(service._process(msg))  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert [c for c in msg.calls if c[0] != "wpi"] == [("nak", None)]
    assert service.stats.done == 0 and service.stats.in_flight == 0


async def test_cancelled_work_is_handed_back_at_once() -> None:
    service = service_with(FakeApplier(delay_s=10))
    msg = FakeMsg(wire.encode(PUT))
    task = asyncio.create_task(service._process(msg))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert msg.calls == [("nak", None)]
    assert service.stats.in_flight == 0


async def test_stop_gives_in_flight_work_a_grace_period_then_hands_it_back() -> None:
    service = service_with(FakeApplier(delay_s=10))
    service._grace = 0.05
    service._stopping = asyncio.Event()
    msg = FakeMsg(wire.encode(PUT))
    handling = asyncio.create_task(service._handle(msg))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    service._stopping.set()
    await asyncio.wait_for(handling, 1)
    assert [c for c in msg.calls if c[0] != "wpi"] == [("nak", None)]


async def test_stop_lets_work_that_ends_within_the_grace_period_finish() -> None:
    service = service_with(FakeApplier(delay_s=0.1))
    service._grace = 2.0
    service._stopping = asyncio.Event()
    msg = FakeMsg(wire.encode(PUT))
    handling = asyncio.create_task(service._handle(msg))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    service._stopping.set()
    await asyncio.wait_for(handling, 1)
    assert [c for c in msg.calls if c[0] != "wpi"] == [("ack", None)]


def test_op_of_every_intent() -> None:
    assert [
        op_of(i)
        for i in (
            PUT,
            wire.ObjectDeleted(id="i", at_ns=0, bucket="b", key="k", version="v"),
            wire.BucketCreated(id="i", at_ns=0, bucket="b"),
            wire.BucketDeleted(id="i", at_ns=0, bucket="b"),
        )
    ] == ["put", "delete", "create_bucket", "delete_bucket"]
