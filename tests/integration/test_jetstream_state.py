"""ensure_state creates every KV bucket and the partitioned WRITEBACK stream, idempotently."""

from __future__ import annotations

from edgecache.common import subjects
from edgecache.common.jetstream import ensure_state


async def test_ensure_state_is_idempotent(nc) -> None:
    js = nc.jetstream()
    first = await ensure_state(js)
    second = await ensure_state(js)
    await first.buckets.put("probe", b"1")
    assert (await second.buckets.get("probe")).value == b"1"
    await second.buckets.delete("probe")
    info = await js.stream_info(subjects.WRITEBACK_STREAM)
    assert info.config.retention == "workqueue"
    consumer = await js.consumer_info(subjects.WRITEBACK_STREAM, subjects.writeback_consumer(3))
    assert consumer.config.max_ack_pending == 1
    assert consumer.config.filter_subject == subjects.writeback_subject(3)
