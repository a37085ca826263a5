"""JetStream state: the KV buckets and the ``WRITEBACK`` stream, created idempotently.

Every service calls :func:`ensure_state` at start, so any one of them can come up first.
``replicas`` is 1 on one machine; a NATS cluster runs with 3.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ExternalStream,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
    StreamSource,
)
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError, NotFoundError

from edgecache.common import subjects
from edgecache.common.config import WritebackConfig
from edgecache.common.logging import get_logger

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = [
    "CHANGES_MAX_AGE_S",
    "GET_BATCH",
    "RELINKED_STALLED_AFTER_S",
    "RELINK_WINDOW_S",
    "SOURCE_STALLED_AFTER_S",
    "State",
    "add_site_source",
    "changes_stream",
    "current_entries",
    "current_keys",
    "current_values",
    "ensure_hub_stream",
    "ensure_site_streams",
    "ensure_state",
    "hub_federation_stream",
    "restart_stalled_sources",
    "site_federation_stream",
    "source_activity",
    "stall_options",
    "sourced_sites",
]

log = get_logger(__name__)

# what ensure_state sets on WRITEBACK (the server fills in the rest)
_WRITEBACK_FIELDS = ("subjects", "retention", "storage", "num_replicas", "duplicate_window", "allow_msg_schedules")


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
        # exists with another config (e.g. another TTL): use it as it is, but with at least
        # the replicas asked for (a site moved from one server to a cluster); never fewer
        kv = await js.key_value(config.bucket)
        info = await js.stream_info(f"KV_{config.bucket}")
        if (info.config.num_replicas or 1) < config.replicas:
            info.config.num_replicas = config.replicas
            await js.update_stream(info.config)
            log.info("kv.replicas_raised", bucket=config.bucket, replicas=config.replicas)
        return kv


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
    except BadRequestError:  # exists with another config: take ours, but never fewer replicas
        info = await js.stream_info(stream.name)
        stream.num_replicas = max(info.config.num_replicas or 1, replicas)
        if any(getattr(info.config, f) != getattr(stream, f) for f in _WRITEBACK_FIELDS):
            # (not when only server-filled defaults differ: an update while the stream is
            # being scaled up times out, and every service opens the state at its start)
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


# --- federation: the change log and its replication (docs/operations.md, "Two sites and a
# hub"). One place for the three stream definitions; each is created idempotently.

CHANGES_MAX_AGE_S = 30 * 86400.0
"""How long a site's ``CHANGES`` and the ``FEDERATION`` streams keep a change: a site cut
off from the hub for longer misses the older ones (it must then be started afresh)."""

_CHANGES_DUPLICATE_WINDOW_S = 120.0  # Nats-Msg-Id (the event id) de-duplicates a re-append


def changes_stream(site: str, *, replicas: int = 1) -> StreamConfig:
    """``CHANGES`` at ``site`` (its own domain): ``wire.SiteChange`` appended by its catalog on
    ``edgecache.fed.changes.<site>``; limits retention, :data:`CHANGES_MAX_AGE_S`."""
    return StreamConfig(
        name=subjects.CHANGES_STREAM,
        subjects=[subjects.site_changes(site)],
        retention=RetentionPolicy.LIMITS,
        max_age=CHANGES_MAX_AGE_S,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=_CHANGES_DUPLICATE_WINDOW_S,
    )


def _site_source(site: str) -> StreamSource:
    return StreamSource(
        name=subjects.CHANGES_STREAM, external=ExternalStream(api=subjects.domain_api(site))
    )


def hub_federation_stream(sites: list[str], *, replicas: int = 1) -> StreamConfig:
    """``FEDERATION`` at the hub (domain ``hub``): sources each of ``sites``' ``CHANGES``
    across its leaf connection (``external.api`` ``$JS.<site>.API``), in the order given.
    It has no subjects of its own: nothing is published to it."""
    return StreamConfig(
        name=subjects.FEDERATION_STREAM,
        subjects=[],
        sources=[_site_source(site) for site in sites],
        retention=RetentionPolicy.LIMITS,
        max_age=CHANGES_MAX_AGE_S,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def site_federation_stream(*, replicas: int = 1) -> StreamConfig:
    """``FEDERATION`` at a site: sources the hub's (``external.api`` ``$JS.hub.API``), so it
    holds every site's changes (its own included) in the hub's order.

    A source rather than a mirror: after a broken link, the server's request for a new
    source or mirror consumer waits 30 s for an answer that cannot come, then backs off; a
    mirror cannot be changed, but a source can be restarted at once
    (:func:`restart_stalled_sources`) and resumes after the last message it copied."""
    return StreamConfig(
        name=subjects.FEDERATION_STREAM,
        subjects=[],
        sources=[
            StreamSource(
                name=subjects.FEDERATION_STREAM,
                external=ExternalStream(api=subjects.domain_api(subjects.HUB_DOMAIN)),
            )
        ],
        retention=RetentionPolicy.LIMITS,
        max_age=CHANGES_MAX_AGE_S,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


async def _add_or_keep(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or return the existing one's info (left as it is)."""
    try:
        return await js.add_stream(config)
    except BadRequestError:  # exists with another config
        return await js.stream_info(config.name)  # type: ignore[arg-type]


async def ensure_site_streams(js: JetStreamContext, site: str, *, replicas: int = 1) -> None:
    """Create (or keep) ``site``'s ``CHANGES`` and its ``FEDERATION`` mirror of the hub's.
    The mirror is made even while the hub is unreachable: it catches up when the link is up.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the site's JetStream did not answer.
    """
    await _add_or_keep(js, changes_stream(site, replicas=replicas))
    await _add_or_keep(js, site_federation_stream(replicas=replicas))


async def ensure_hub_stream(js: JetStreamContext, *, replicas: int = 1) -> list[str]:
    """Create (or keep) the hub's ``FEDERATION``; the sites it sources now.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the hub's JetStream did not answer.
    """
    info = await _add_or_keep(js, hub_federation_stream([], replicas=replicas))
    return sourced_sites(info)


def sourced_sites(info: StreamInfo) -> list[str]:
    """The sites whose ``CHANGES`` the hub's ``FEDERATION`` (``info``) sources."""
    domains = (_domain_of(s.external.api or "") for s in info.config.sources or [] if s.external)
    return [d for d in domains if d]


async def add_site_source(js: JetStreamContext, site: str, *, replicas: int = 1) -> bool:
    """Make the hub's ``FEDERATION`` source ``site``'s ``CHANGES``; whether it was added
    (``False``: it already was). Called by the hub federator when a site joins; the stream
    then copies everything ``CHANGES`` holds, from its first message.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the hub's JetStream did not answer.
    """
    sites = await ensure_hub_stream(js, replicas=replicas)
    if site in sites:
        return False
    await js.update_stream(hub_federation_stream([*sites, site], replicas=replicas))
    return True


SOURCE_STALLED_AFTER_S = 3.0
"""A stream source that heard nothing from its consumer for this long is stalled (a healthy
one gets the consumer's heartbeat every second)."""

RELINKED_STALLED_AFTER_S = 0.5
"""Within :data:`RELINK_WINDOW_S` of a link's return a source is restarted again after this
long without a word (its first restart may have raced the other side's JetStream)."""

RELINK_WINDOW_S = 5.0


def stall_options(relinked_at: float | None, *, now: bool = False) -> dict[str, float]:
    """:func:`restart_stalled_sources`'s ``stalled_after_s`` across a link that came back at
    ``relinked_at`` (``time.monotonic()``; ``None``: it never broke): 0 (restart whatever
    the source says) with ``now``, the moment it is known to be back;
    :data:`RELINKED_STALLED_AFTER_S` within :data:`RELINK_WINDOW_S` of that; else the
    default (:data:`SOURCE_STALLED_AFTER_S`)."""
    if now:
        return {"stalled_after_s": 0.0}
    if relinked_at is not None and time.monotonic() - relinked_at < RELINK_WINDOW_S:
        return {"stalled_after_s": RELINKED_STALLED_AFTER_S}
    return {}


async def source_activity(js: JetStreamContext, stream: str) -> dict[str, tuple[float, int]]:
    """Each source of ``stream``, by the domain it comes from (``external.api``
    ``$JS.<domain>.API``): ``(seconds since its consumer was last heard, -1 if it has none
    now; messages it lags behind)``. Read from the raw ``STREAM.INFO`` reply: nats-py drops
    the sources' ``external``, and every source here has the same stream name.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the stream cannot be read.
    """
    subject = f"{js._prefix}.STREAM.INFO.{stream}"  # noqa: SLF001
    reply = json.loads((await js._nc.request(subject, b"", timeout=js._timeout)).data)  # noqa: SLF001
    if "error" in reply:
        raise APIError.from_error(reply["error"])
    out = {}
    for source in reply.get("sources") or []:
        api = (source.get("external") or {}).get("api", "")
        active_ns = int(source.get("active", -1))
        out[_domain_of(api)] = (active_ns / 1e9 if active_ns >= 0 else -1.0, int(source.get("lag", 0)))
    return out


def _domain_of(api: str) -> str:
    prefix, suffix = "$JS.", ".API"
    return api[len(prefix) : -len(suffix)] if api.startswith(prefix) and api.endswith(suffix) else ""


async def restart_stalled_sources(
    js: JetStreamContext,
    stream: str,
    domains: set[str],
    *,
    stalled_after_s: float = SOURCE_STALLED_AFTER_S,
    restarted: dict[str, float] | None = None,
) -> list[str]:
    """Restart the sources of ``stream`` from ``domains`` that are stalled (no consumer, or
    none heard for ``stalled_after_s``): remove them from the stream's config and add them
    back, which makes the server ask for a new consumer now, starting after the last
    message each copied. Call it when the link to ``domains`` is known to be up (an answer
    came across it); the domains restarted.

    ``restarted`` (domain → ``time.monotonic()`` of its last restart, updated here) keeps a
    source from being restarted again within ``stalled_after_s``, while its new consumer is
    being set up.

    Raises:
        nats.errors.TimeoutError, JetStream API errors: the stream cannot be read or updated.
    """
    now = time.monotonic()
    recent = restarted if restarted is not None else {}
    activity = await source_activity(js, stream)
    stalled = [
        d
        for d in sorted(domains)
        if d in activity
        and not 0 <= activity[d][0] < stalled_after_s
        and now - recent.get(d, -math.inf) >= stalled_after_s
    ]
    if not stalled:
        return []
    config = (await js.stream_info(stream)).config
    sources = list(config.sources or [])
    kept = [s for s in sources if not (s.external and _domain_of(s.external.api or "") in stalled)]
    await js.update_stream(replace(config, sources=kept))
    await js.update_stream(replace(config, sources=sources))
    recent.update(dict.fromkeys(stalled, now))
    return stalled
