"""JetStream state: the KV buckets and the ``WRITEBACK`` stream, created idempotently.

Every service calls :func:`ensure_state` at start, so any one of them can come up first.
``replicas`` is 1 on one machine; a NATS cluster runs with 3.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError, NotFoundError

from edgecache.common import subjects
from edgecache.common.config import WritebackConfig

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["GET_BATCH", "State", "current_entries", "current_keys", "current_values", "ensure_state"]


class State:
    """Handles on the JetStream state, as created by :func:`ensure_state`."""

    def __init__(
        self,
        js: JetStreamContext,
        buckets: KeyValue,
        objects: KeyValue,
        uploads: KeyValue,
        nodes: KeyValue,
        *,
        schedules: bool = False,
    ) -> None:
        self.js = js
        self.buckets = buckets
        self.objects = objects
        self.uploads = uploads
        self.nodes = nodes
        #: whether ``WRITEBACK`` takes message schedules (nats-server 2.12+): failed intents
        #: are then retried through a schedule instead of holding their partition
        self.schedules = schedules


async def _kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        # exists with another config (e.g. another TTL): use it as it is
        return await js.key_value(config.bucket)


async def ensure_state(
    js: JetStreamContext, *, node_ttl_s: float = 10.0, ack_wait_s: float | None = None, replicas: int = 1
) -> State:
    """Create (or open) KV ``buckets``, ``objects``, ``uploads``, ``nodes`` (entries expire
    after ``node_ttl_s`` seconds), the work-queue stream ``WRITEBACK`` and its per-partition
    durable consumers (``max_ack_pending=1`` keeps one intent per partition, hence per key,
    in flight; ``ack_wait_s`` before an unacknowledged intent is redelivered).

    The writeback service owns the consumers' ``ack_wait``: it passes ``ack_wait_s``, and
    consumers that exist with another value are updated to it (nats-server updates a durable
    consumer created again with an editable field changed), so a deployment made with the
    old 60 s takes the new value when the writeback service restarts. Others pass ``None``:
    missing consumers are created with the default, existing ones are left as they are.

    ``WRITEBACK`` also takes message schedules on :data:`subjects.WRITEBACK_RETRIES` (the
    retries of failed intents); :attr:`State.schedules` says whether the server honours them.
    """
    store = StorageType.FILE
    buckets = await _kv(js, KeyValueConfig(bucket=subjects.KV_BUCKETS, history=1, storage=store, replicas=replicas))
    objects = await _kv(js, KeyValueConfig(bucket=subjects.KV_OBJECTS, history=1, storage=store, replicas=replicas))
    uploads = await _kv(js, KeyValueConfig(bucket=subjects.KV_UPLOADS, history=1, storage=store, replicas=replicas))
    nodes = await _kv(
        js,
        KeyValueConfig(bucket=subjects.KV_NODES, history=1, ttl=node_ttl_s, storage=StorageType.MEMORY, replicas=replicas),
    )
    stream = StreamConfig(
        name=subjects.WRITEBACK_STREAM,
        subjects=[
            *(subjects.writeback_subject(p) for p in range(subjects.WRITEBACK_PARTITIONS)),
            subjects.WRITEBACK_RETRIES,
        ],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=store,
        num_replicas=replicas,
        duplicate_window=120.0,
        allow_msg_schedules=True,
    )
    try:
        info = await js.add_stream(stream)
    except BadRequestError:
        info = await js.update_stream(stream)
    owner = ack_wait_s is not None
    if ack_wait_s is None:
        ack_wait_s = WritebackConfig().ack_wait_s
    for p in range(subjects.WRITEBACK_PARTITIONS):
        if not owner and await _consumer_exists(js, subjects.writeback_consumer(p)):
            continue
        await js.add_consumer(
            subjects.WRITEBACK_STREAM,
            ConsumerConfig(
                durable_name=subjects.writeback_consumer(p),
                filter_subject=subjects.writeback_subject(p),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=1,
                ack_wait=ack_wait_s,
                max_deliver=-1,
            ),
        )
    # a server older than 2.12 ignores the flag (and would never fire a schedule)
    schedules = bool(info.config.allow_msg_schedules)
    return State(js, buckets, objects, uploads, nodes, schedules=schedules)


async def _consumer_exists(js: JetStreamContext, durable: str) -> bool:
    try:
        await js.consumer_info(subjects.WRITEBACK_STREAM, durable)
    except NotFoundError:
        return False
    return True


GET_BATCH = 64
"""KV reads in flight at once when reading many keys."""


async def current_keys(kv: KeyValue, key_filter: str) -> list[str]:
    """The keys of ``kv`` matching ``key_filter`` (NATS subject wildcards) that have a
    message in the bucket's stream now (a deleted or purged key's marker counts), sorted.

    One ``STREAM.INFO`` request with a subjects filter per 100,000 keys (the server pages
    them). Not a KV watcher's initial values: nats-py ends those with a marker that can
    overtake entries the server has already sent, and a listing then misses keys.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the stream cannot be read.
    """
    js = kv._js  # noqa: SLF001 - nats-py's KV keeps its context, stream and subject prefix
    prefix: str = kv._pre  # noqa: SLF001
    subject = f"{js._prefix}.STREAM.INFO.{kv._stream}"  # noqa: SLF001
    keys: list[str] = []
    offset = 0
    while True:
        request = json.dumps({"subjects_filter": prefix + key_filter, "offset": offset}).encode()
        reply = json.loads((await js._nc.request(subject, request, timeout=js._timeout)).data)  # noqa: SLF001
        if "error" in reply:
            raise APIError.from_error(reply["error"])
        found = (reply.get("state") or {}).get("subjects") or {}
        keys.extend(s[len(prefix) :] for s in found)
        offset += len(found)
        if not found or offset >= int(reply.get("total", 0)):
            return sorted(keys)


async def current_entries(kv: KeyValue, key_filter: str) -> AsyncIterator[tuple[str, bytes, int]]:
    """``(key, value, revision)`` of every current key of ``kv`` matching ``key_filter``,
    in key order: the keys first (:func:`current_keys`), then their values,
    :data:`GET_BATCH` at a time (a key deleted meanwhile, or holding a delete marker, is
    skipped)."""
    keys = await current_keys(kv, key_filter)
    for start in range(0, len(keys), GET_BATCH):
        batch = keys[start : start + GET_BATCH]
        for key, entry in zip(batch, await asyncio.gather(*(_get(kv, k) for k in batch)), strict=True):
            if entry is not None and entry.value:
                yield key, entry.value, entry.revision or 0


async def _get(kv: KeyValue, key: str) -> KeyValue.Entry | None:
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None


async def current_values(kv: KeyValue, key_filter: str) -> AsyncIterator[bytes]:
    """The current value of every key of ``kv`` matching ``key_filter`` (see
    :func:`current_entries`)."""
    async for _key, value, _revision in current_entries(kv, key_filter):
        yield value
