"""The writeback service against a real nats-server, playing the cache node's part.

Each test gets its own nats-server (milliseconds to start) so that intents left in
``WRITEBACK`` by one test — or by another service's tests on the session server — never
block a partition of the next. The tests write chunks into a tiny in-test chunk server
(``edgecache.chunk.<node>.get``, served with ``stream.DownloadSender``), put manifests in
KV ``objects`` and publish intents, then run :class:`WritebackService` in-process and look
at the origin directory, KV and the ``ObjectClean`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.js.errors import KeyNotFoundError

from edgecache.common import errors, stream, subjects, wire
from edgecache.common.catalog import Catalog, Entry
from edgecache.common.config import WritebackConfig
from edgecache.common.jetstream import State, ensure_state
from edgecache.launcher.natsserver import NatsServer
from edgecache.launcher.render import render_status
from edgecache.launcher.status import read_status
from edgecache.origin import Origin
from edgecache.writeback.service import WritebackService

FAST = WritebackConfig(ack_wait_s=2.0, backoff_base_s=0.05, backoff_max_s=0.2)
_versions = itertools.count(1)


# == origins =================================================================================
class Wrapped(Origin):
    """Delegates to ``inner``; ``before_put`` / ``after_put`` / ``before_delete_bucket``
    hooks let a test make the origin fail, stall or record."""

    def __init__(self, inner: Origin) -> None:
        self.inner = inner
        self.puts: list[tuple[str, str, str]] = []  # (bucket, key, etag of the bytes)
        self.before_put: Callable[[], Awaitable[None]] | None = None
        self.after_put: Callable[[], Awaitable[None]] | None = None
        self.rejected: set[str] = set()  # keys whose every put and delete fails

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def list_buckets(self):  # type: ignore[no-untyped-def]
        return await self.inner.list_buckets()

    async def create_bucket(self, bucket):  # type: ignore[no-untyped-def]
        await self.inner.create_bucket(bucket)

    async def delete_bucket(self, bucket):  # type: ignore[no-untyped-def]
        await self.inner.delete_bucket(bucket)

    async def bucket_exists(self, bucket):  # type: ignore[no-untyped-def]
        return await self.inner.bucket_exists(bucket)

    async def head_object(self, bucket, key):  # type: ignore[no-untyped-def]
        return await self.inner.head_object(bucket, key)

    def get_range(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.get_range(*args, **kwargs)

    async def put_object(self, bucket, key, body, **kwargs):  # type: ignore[no-untyped-def]
        if key in self.rejected:
            raise errors.AccessDenied(f"the origin refuses {key}")
        if self.before_put is not None:
            await self.before_put()
        etag = await self.inner.put_object(bucket, key, body, **kwargs)
        self.puts.append((bucket, key, kwargs.get("etag", "")))
        if self.after_put is not None:
            await self.after_put()
        return etag

    async def delete_object(self, bucket, key):  # type: ignore[no-untyped-def]
        if key in self.rejected:
            raise errors.AccessDenied(f"the origin refuses {key}")
        await self.inner.delete_object(bucket, key)

    def iter_objects(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.iter_objects(*args, **kwargs)


async def origin_bytes(origin: Origin, bucket: str, key: str) -> bytes | None:
    try:
        info = await origin.head_object(bucket, key)
    except (errors.NoSuchKey, errors.NoSuchBucket):
        return None
    if info.size == 0:
        return b""
    return b"".join([p async for p in origin.get_range(bucket, key, 0, info.size - 1)])


# == the cache node's part ====================================================================
class ChunkServer:
    """Serves chunks from memory on ``edgecache.chunk.<node_id>.get`` like a cache node.

    ``break_after``: cut every stream with ServiceUnavailable after that many bytes.
    """

    def __init__(self, nc: nats.NATS, node_id: str) -> None:
        self.nc = nc
        self.node_id = node_id
        self.chunks: dict[str, bytes] = {}
        self.requests: list[wire.ChunkGet] = []
        self.break_after: int | None = None
        self._sub = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> ChunkServer:
        async def cb(msg) -> None:  # type: ignore[no-untyped-def]
            task = asyncio.create_task(self._serve(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._sub = await self.nc.subscribe(subjects.chunk_get(self.node_id), cb=cb)
        await self.nc.flush()
        return self

    async def down(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        await self.nc.flush()

    async def _serve(self, msg) -> None:  # type: ignore[no-untyped-def]
        request = wire.decode(msg.data, wire.ChunkGet)
        self.requests.append(request)
        data = self.chunks.get(request.chunk_id)
        if data is None:
            await stream.send_error(
                self.nc, msg.reply, errors.NoSuchKey(f"no chunk {request.chunk_id}")
            )
            return
        end = None if request.last is None else request.last + 1
        data = data[request.first : end]
        tx = stream.DownloadSender(
            self.nc, msg.reply, window=stream.DownloadSender.window_of(msg), idle_timeout_s=5
        )
        try:
            await tx.start(wire.Ok())
            for i in range(0, len(data), 200_000):
                if self.break_after is not None and i >= self.break_after:
                    await tx.fail(errors.ServiceUnavailable("disk went away"))
                    return
                await tx.send(data[i : i + 200_000])
            await tx.end()
        except errors.S3Error:
            pass
        finally:
            await tx.close()


class Cluster:
    """The cache nodes' side of the contract: chunks, manifests, intents."""

    def __init__(
        self, catalog: Catalog, state: State, servers: list[ChunkServer], chunk_bytes: int
    ) -> None:
        self.catalog = catalog
        self.state = state
        self.servers = servers
        self.chunk_bytes = chunk_bytes

    async def manifest(self, bucket: str, key: str) -> Entry | None:
        return await self.catalog.get(bucket, key)

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        on: list[ChunkServer] | None = None,
        nodes: list[str] | None = None,
        publish: bool = True,
        **fields,  # type: ignore[no-untyped-def]
    ) -> wire.Manifest:
        version = f"v{next(_versions):08d}"
        holders = self.servers[:1] if on is None else on
        chunks = []
        for i in range(0, max(len(data), 1), self.chunk_bytes):
            piece = data[i : i + self.chunk_bytes]
            if not piece:
                break
            chunk_id = f"{version}.{i // self.chunk_bytes}"
            for server in holders:
                server.chunks[chunk_id] = piece
            chunks.append(wire.ChunkRef(id=chunk_id, size=len(piece)))
        manifest = wire.Manifest(
            bucket=bucket,
            key=key,
            version=version,
            size=len(data),
            etag=hashlib.md5(data).hexdigest(),
            last_modified=time.time(),  # noqa: S324
            chunks=chunks,
            nodes=nodes if nodes is not None else [s.node_id for s in holders],
            **fields,
        )
        await self.catalog.put(manifest)
        if publish:
            await self.publish_put(manifest)
        return manifest

    async def publish_put(self, m: wire.Manifest) -> None:
        await self.catalog.publish_intent(
            wire.ObjectWritten(
                id=m.version, at_ns=time.time_ns(), bucket=m.bucket, key=m.key, version=m.version
            )
        )

    async def delete(self, bucket: str, key: str) -> wire.Manifest:
        version = f"v{next(_versions):08d}"
        tomb = wire.Manifest(
            bucket=bucket,
            key=key,
            version=version,
            size=0,
            etag="",
            last_modified=time.time(),
            deleted=True,
        )
        await self.catalog.commit(
            tomb,
            wire.ObjectDeleted(
                id=version, at_ns=time.time_ns(), bucket=bucket, key=key, version=version
            ),
        )
        return tomb

    async def create_bucket(self, bucket: str) -> None:
        """Like cachenode: a live record in KV ``buckets`` (over a tombstone), then the intent."""
        record = wire.BucketRecord(name=bucket, created=time.time())
        await self.state.buckets.put(bucket, wire.encode(record))
        await self.catalog.publish_intent(
            wire.BucketCreated(id=f"bc-{next(_versions)}", at_ns=0, bucket=bucket)
        )

    async def delete_bucket(self, bucket: str) -> None:
        """Like cachenode: a tombstone in KV ``buckets``, then the intent."""
        record = wire.BucketRecord(name=bucket, created=time.time(), deleted=True)
        await self.state.buckets.put(bucket, wire.encode(record))
        await self.catalog.publish_intent(
            wire.BucketDeleted(id=f"bd-{next(_versions)}", at_ns=0, bucket=bucket)
        )

    async def bucket_record(self, bucket: str) -> wire.BucketRecord | None:
        try:
            entry = await self.state.buckets.get(bucket)
        except KeyNotFoundError:
            return None
        return wire.decode(entry.value, wire.BucketRecord)


# == fixtures =================================================================================
@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = NatsServer(tmp_path / "nats")
    s.start()
    yield s
    s.stop()


@pytest_asyncio.fixture
async def conn(server: NatsServer) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(server.url)
    yield nc
    await nc.drain()


@pytest_asyncio.fixture
async def state(conn: nats.NATS) -> State:
    return await ensure_state(conn.jetstream(), ack_wait_s=FAST.ack_wait_s)


@pytest.fixture
def store(file_origin: Origin) -> Wrapped:
    """The file origin (started by tests/fixtures/origins.py), with hooks."""
    return Wrapped(file_origin)


@pytest_asyncio.fixture
async def cluster(conn: nats.NATS, state: State) -> Cluster:
    servers = [await ChunkServer(conn, "node-a").up(), await ChunkServer(conn, "node-b").up()]
    return Cluster(Catalog(conn, state), state, servers, chunk_bytes=700_000)


@pytest_asyncio.fixture
async def events(conn: nats.NATS) -> AsyncIterator[list[wire.ObjectClean]]:
    got: list[wire.ObjectClean] = []

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        got.append(wire.decode(msg.data, wire.ObjectClean))

    sub = await conn.subscribe(subjects.EVENTS_OBJECT_CLEAN, cb=cb)
    yield got
    await sub.unsubscribe()


@contextlib.asynccontextmanager
async def running(
    nc: nats.NATS, state: State, origin: Origin, config: WritebackConfig = FAST, **kwargs
) -> AsyncIterator[WritebackService]:  # type: ignore[no-untyped-def]
    kwargs.setdefault("fetch_timeout_s", 0.3)
    kwargs.setdefault("shutdown_grace_s", 1.0)
    kwargs.setdefault("chunk_timeout_s", 2.0)
    service = WritebackService(nc, state, origin, config, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def is_clean(cluster: Cluster, m: wire.Manifest) -> bool:
    found = await cluster.manifest(m.bucket, m.key)
    return found is not None and found[0].version == m.version and found[0].state == "clean"


# == tests ====================================================================================
async def test_put_lands_with_identical_bytes_and_metadata(
    conn, state, store, cluster, events
) -> None:
    data = os.urandom(2_000_000)  # 3 chunks, several frames each
    m = await cluster.put(
        "photos",
        "dir/a b.jpg",
        data,
        content_type="image/jpeg",
        metadata={"owner": "ann"},
        headers={"Cache-Control": "max-age=60"},
    )
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, m))
        await eventually(lambda: _async(len(events) == 1))
    assert await origin_bytes(store, "photos", "dir/a b.jpg") == data
    head = await store.head_object("photos", "dir/a b.jpg")
    assert (head.content_type, head.metadata) == ("image/jpeg", {"owner": "ann"})
    assert {k.lower(): v for k, v in head.headers.items()} == {"cache-control": "max-age=60"}
    clean, _ = await cluster.manifest("photos", "dir/a b.jpg")
    assert clean.origin_etag == head.etag and clean.validated_at > 0
    assert msgspec.structs.replace(clean, state="dirty", origin_etag="", validated_at=0.0) == m
    assert events[0].version == m.version and events[0].origin_etag == head.etag
    assert not events[0].deleted
    assert service.stats.done == 1 and service.stats.bytes_written == len(data)
    assert service.stats.failed == 0


async def test_empty_object(conn, state, store, cluster) -> None:
    m = await cluster.put("photos", "empty", b"")
    async with running(conn, state, store):
        await eventually(lambda: is_clean(cluster, m))
    assert await origin_bytes(store, "photos", "empty") == b""


async def test_put_then_delete_ends_deleted(conn, state, store, cluster, events) -> None:
    await store.put_object("photos", "k", _aiter(b"old"), size=3)
    async with running(conn, state, store):
        for round_ in range(4):
            await cluster.put("photos", "k", f"v{round_}".encode() * 1000)
            await asyncio.sleep(0.02 * round_)
            tomb = await cluster.delete("photos", "k")
        await eventually(lambda: _async_call(cluster.manifest("photos", "k"), lambda f: f is None))
    assert await origin_bytes(store, "photos", "k") is None
    assert events and events[-1].deleted and events[-1].version == tomb.version


async def test_delete_then_put_ends_with_the_put(conn, state, store, cluster) -> None:
    async with running(conn, state, store):
        first = await cluster.put("photos", "k", b"one" * 1000)
        await eventually(lambda: is_clean(cluster, first))
        await cluster.delete("photos", "k")
        last = await cluster.put("photos", "k", b"two" * 1000)
        await eventually(lambda: is_clean(cluster, last))
    assert await origin_bytes(store, "photos", "k") == b"two" * 1000


async def test_superseded_version_is_skipped(conn, state, store, cluster) -> None:
    old = await cluster.put("photos", "k", b"old" * 1000, publish=False)
    new = await cluster.put("photos", "k", b"new" * 1000, publish=False)
    await cluster.publish_put(old)  # arrives while the manifest already names ``new``
    await cluster.publish_put(new)
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, new))
        await eventually(lambda: _async(service.stats.done == 2))
    assert await origin_bytes(store, "photos", "k") == b"new" * 1000
    assert [p[2] for p in store.puts] == [new.etag]  # the old version never went up
    assert all(not r.chunk_id.startswith(old.version) for s in cluster.servers for r in s.requests)
    assert service.stats.skipped == 1


async def test_redelivered_clean_intent_is_acked_and_announced_again(
    conn, state, store, cluster, events
) -> None:
    m = await cluster.put("photos", "k", b"x" * 5000)
    async with running(conn, state, store):
        await eventually(lambda: is_clean(cluster, m))
        await cluster.catalog.publish_intent(  # a re-publish with a new id: a redelivery in effect
            wire.ObjectWritten(id="again", at_ns=0, bucket="photos", key="k", version=m.version)
        )
        await eventually(lambda: _async(len(events) == 2))
    assert len(store.puts) == 1
    assert events[0] == msgspec.structs.replace(events[1], id=events[0].id, at_ns=events[0].at_ns)


async def test_write_fenced_when_a_newer_version_lands_during_the_upload(
    conn, state, store, cluster
) -> None:
    """A newer version written while the old one is uploading: the old upload is abandoned
    before the origin commits it, so it can never land after (and over) the newer one."""
    old = await cluster.put("photos", "k", b"old" * 300_000)
    newer: list[wire.Manifest] = []

    async def overwrite() -> None:  # runs as the origin starts reading the old body
        if not newer:
            newer.append(await cluster.put("photos", "k", b"new" * 1000, publish=False))

    store.before_put = overwrite
    async with running(conn, state, store) as service:
        await eventually(lambda: _async(service.stats.done == 1))
        assert await origin_bytes(store, "photos", "k") is None  # nothing committed
        assert service.stats.skipped == 1 and not store.puts
        await cluster.publish_put(newer[0])
        await eventually(lambda: is_clean(cluster, newer[0]))
    assert await origin_bytes(store, "photos", "k") == b"new" * 1000
    assert old.version != newer[0].version


async def test_manifest_changed_in_place_is_marked_clean_without_a_second_upload(
    conn, state, store, cluster
) -> None:
    m = await cluster.put("photos", "k", b"x" * 10_000)

    async def move() -> None:  # same version, another holder list: the CAS must retry
        if len(store.puts) == 1:
            moved = msgspec.structs.replace(m, nodes=["node-b", *m.nodes])
            await cluster.catalog.put(moved)

    store.after_put = move
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, m))
    clean, _ = await cluster.manifest("photos", "k")
    assert clean.nodes == ["node-b", "node-a"] and len(store.puts) == 1
    assert service.stats.done == 1 and service.stats.failed == 0


async def test_crash_after_origin_write_redelivers_and_ends_with_one_object(
    server, state, store, cluster, events
) -> None:
    """Replica A dies (its connection cut, no nak) after the origin write, before the
    clean-marking and the ack: JetStream redelivers after ack_wait to replica B."""
    config = WritebackConfig(ack_wait_s=1.0, backoff_base_s=0.05, backoff_max_s=0.2)
    await ensure_state(state.js, ack_wait_s=config.ack_wait_s)
    data = os.urandom(1_500_000)
    m = await cluster.put("photos", "k", data)
    written = asyncio.Event()

    async def freeze() -> None:
        written.set()
        await asyncio.Event().wait()  # the process is gone

    store.after_put = freeze
    nc_a = await nats.connect(server.url)
    service_a = WritebackService(nc_a, state, store, config, fetch_timeout_s=0.3)
    task_a = asyncio.create_task(service_a.run(asyncio.Event()))
    await asyncio.wait_for(written.wait(), 5)
    await nc_a.close()  # kill -9: no ack, no nak, no in-progress any more
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    store.after_put = None
    assert not await is_clean(cluster, m)

    nc_b = await nats.connect(server.url)
    try:
        started = time.monotonic()
        async with running(nc_b, state, store, config) as service_b:
            await eventually(lambda: is_clean(cluster, m))
        assert time.monotonic() - started < 5
        assert service_b.stats.retried == 1 and service_b.stats.done == 1
    finally:
        await nc_b.drain()
    assert await origin_bytes(store, "photos", "k") == data
    assert len(store.puts) == 2  # once by A, once (identical) by B
    assert [e.version for e in events] == [m.version]


async def test_origin_outage_is_retried_with_backoff(conn, state, store, cluster) -> None:
    failures = 3
    attempts: list[float] = []

    async def outage() -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= failures:
            raise errors.ServiceUnavailable("origin down")

    store.before_put = outage
    m = await cluster.put("photos", "k", b"data" * 10_000)
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, m))
    assert len(attempts) == failures + 1
    assert service.stats.failed == failures and service.stats.retried == failures
    assert service.stats.done == 1
    assert await origin_bytes(store, "photos", "k") == b"data" * 10_000


async def test_chunk_node_down_is_retried_until_it_returns(conn, state, store, cluster) -> None:
    a = cluster.servers[0]
    m = await cluster.put("photos", "k", os.urandom(900_000))
    await a.down()
    async with running(conn, state, store) as service:
        await eventually(lambda: _async(service.stats.failed >= 2))
        assert not await is_clean(cluster, m)
        await a.up()
        await eventually(lambda: is_clean(cluster, m))
    assert store.puts and await origin_bytes(store, "photos", "k") is not None


async def test_chunk_read_fails_over_to_another_node(conn, state, store, cluster) -> None:
    a, b = cluster.servers
    data = os.urandom(2_000_000)
    # listed first: a node that is gone; then one that cuts every stream; then a good one
    m = await cluster.put("photos", "k", data, on=[a, b], nodes=["gone", "node-a", "node-b"])
    a.break_after = 400_000
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, m))
    assert service.stats.failed == 0  # within one attempt
    assert await origin_bytes(store, "photos", "k") == data
    assert any(r.first > 0 for r in b.requests)  # resumed mid-chunk on node-b


async def test_per_chunk_nodes_are_honoured(conn, state, store, cluster) -> None:
    a, b = cluster.servers
    first, second = os.urandom(700_000), os.urandom(300_000)
    a.chunks["c1"], b.chunks["c2"] = first, second
    m = wire.Manifest(
        bucket="photos",
        key="mp",
        version="v-mp",
        size=1_000_000,
        etag="0" * 32 + "-2",
        parts_count=2,
        last_modified=time.time(),
        chunks=[
            wire.ChunkRef(id="c1", size=700_000, nodes=["node-a"]),
            wire.ChunkRef(id="c2", size=300_000, nodes=["node-b"]),
        ],
        nodes=["node-a", "node-b"],
    )
    await cluster.catalog.put(m)
    await cluster.publish_put(m)
    async with running(conn, state, store):
        await eventually(lambda: is_clean(cluster, m))
    assert await origin_bytes(store, "photos", "mp") == first + second
    assert [r.chunk_id for r in a.requests] == ["c1"] and [r.chunk_id for r in b.requests] == ["c2"]


async def test_corrupt_chunk_never_reaches_the_origin(conn, state, store, cluster) -> None:
    m = await cluster.put("photos", "k", b"good" * 100_000)
    cluster.servers[0].chunks[m.chunks[0].id] = b"evil" * (m.chunks[0].size // 4)
    async with running(conn, state, store) as service:
        await eventually(lambda: _async(service.stats.failed >= 2))
        assert await origin_bytes(store, "photos", "k") is None
        cluster.servers[0].chunks[m.chunks[0].id] = (b"good" * 100_000)[: m.chunks[0].size]
        await eventually(lambda: is_clean(cluster, m))
    assert await origin_bytes(store, "photos", "k") == b"good" * 100_000


def keys_in_partition_of(bucket: str, key: str, n: int) -> list[str]:
    """``n`` keys other than ``key`` whose intents share its ``WRITEBACK`` partition."""
    partition = subjects.writeback_partition(bucket, key)
    found = (f"k{i}" for i in itertools.count())
    return list(
        itertools.islice((k for k in found if subjects.writeback_partition(bucket, k) == partition), n)
    )


async def test_delete_under_missing_folders_lands_and_the_partition_moves_on(
    conn, state, store, cluster
) -> None:
    """The production stall: DELETE of ``no-such-dir/no-such-key`` (answered 204) failed in
    the file origin forever, and every later write of its partition waited behind it."""
    await cluster.create_bucket("photos")
    tomb = await cluster.delete("photos", "no-such-dir/no-such-key")
    later = [
        await cluster.put("photos", k, k.encode() * 100)
        for k in keys_in_partition_of("photos", "no-such-dir/no-such-key", 3)
    ]
    async with running(conn, state, store) as service:
        for m in later:
            await eventually(lambda m=m: is_clean(cluster, m))
        await eventually(lambda: _async_none(cluster.manifest("photos", tomb.key)))
    assert service.stats.failed == 0
    for m in later:
        assert await origin_bytes(store, "photos", m.key) == m.key.encode() * 100


async def test_a_failing_intent_holds_back_only_its_own_key(conn, state, store, cluster) -> None:
    """An origin that refuses one key: that key's put and delete are retried on their own
    schedule, while every other key of the same partition reaches the origin; the failing
    ones are visible with their error and attempt count; once the origin accepts the key,
    its newest state lands."""
    store.rejected.add("poison")
    first = await cluster.put("photos", "poison", b"v1")
    others = keys_in_partition_of("photos", "poison", 4)
    written = [await cluster.put("photos", k, k.encode()) for k in others[:2]]
    gone = await cluster.put("photos", others[2], b"to be deleted", publish=False)
    await store.inner.put_object("photos", gone.key, _one(b"old"), size=3)
    await cluster.delete("photos", gone.key)
    written.append(await cluster.put("photos", others[3], b"last"))
    async with running(conn, state, store) as service:
        for m in written:
            await eventually(lambda m=m: is_clean(cluster, m), timeout_s=5)
        await eventually(lambda: _async_none(cluster.manifest("photos", gone.key)), timeout_s=5)
        assert await origin_bytes(store, "photos", gone.key) is None
        assert not await is_clean(cluster, first)
        await eventually(lambda: _async(service.stats.failing.get(("photos", "poison"), (0,))[0] >= 2))
        attempts, error = service.stats.failing[("photos", "poison")]
        assert "AccessDenied" in error and attempts >= 2
        # a newer version of the failing key supersedes the old one; both land as one
        second = await cluster.put("photos", "poison", b"v2")
        store.rejected.clear()
        await eventually(lambda: is_clean(cluster, second))
        await eventually(lambda: _async(("photos", "poison") not in service.stats.failing))
    assert await origin_bytes(store, "photos", "poison") == b"v2"
    assert [k for _, k, _ in store.puts].count("poison") == 1


async def test_every_retry_of_a_failing_intent_is_scheduled(conn, state, store, cluster) -> None:
    """An intent that fails again and again is scheduled back each time, never ``nak``-ed
    (which would hold its partition): a delivery of a fired schedule carries the server's
    ``Nats-Scheduler`` headers, which the next schedule must not copy (the server refused
    it, "invalid scheduler", from the second retry on)."""
    store.rejected.add("stubborn")
    await cluster.put("photos", "stubborn", b"v1")
    async with running(conn, state, store) as service:
        await eventually(
            lambda: _async(service.stats.failing.get(("photos", "stubborn"), (0,))[0] >= 4)
        )
    assert service.stats.unscheduled == 0


async def test_status_lists_failing_intents_with_their_error(
    server, conn, state, store, cluster
) -> None:
    async def slow_down() -> None:
        raise errors.SlowDown("origin throttles", retry_after_s=30)

    store.before_put = slow_down
    await cluster.put("photos", "throttled", b"x")
    # the origin's 30 s is kept: with FAST's 0.2-s cap, a loaded host saw attempt 2 (and
    # the intent in flight again, not failing) between the two status reads below
    patient = msgspec.structs.replace(FAST, backoff_max_s=60.0)
    async with running(conn, state, store, patient):
        await eventually(
            lambda: _async_call(read_status(server.url), lambda st: st.writeback.retrying == 1)
        )
        status = await read_status(server.url)
    [failing] = status.writeback.failing
    assert (failing.bucket, failing.key, failing.attempts) == ("photos", "throttled", 1)
    assert failing.error.startswith("SlowDown: origin throttles")
    assert "photos/throttled after 1 attempt(s): SlowDown" in render_status(status)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _async_none(aw: Awaitable[object]) -> bool:
    return await aw is None


async def test_two_replicas_apply_every_intent_once_and_in_key_order(
    server, conn, state, store, cluster
) -> None:
    nc_2 = await nats.connect(server.url)
    finals: dict[str, bytes | None] = {}
    order: dict[str, list[str]] = {}  # per key, the ETags in the order they were written
    try:
        async with running(conn, state, store) as one, running(nc_2, state, store) as two:
            for round_ in range(3):
                for i in range(12):
                    key = f"k{i}"
                    if (i + round_) % 4 == 3:
                        await cluster.delete("photos", key)
                        finals[key] = None
                    else:
                        data = f"{key} round {round_} ".encode() * (500 + 100 * i)
                        m = await cluster.put("photos", key, data)
                        finals[key] = data
                        order.setdefault(key, []).append(m.etag)
                await asyncio.sleep(0.05)

            async def settled() -> bool:
                for key in finals:
                    found = await cluster.manifest("photos", key)
                    if found is not None and found[0].state != "clean":
                        return False
                return True

            await eventually(settled, 15)
        assert one.stats.done + two.stats.done == 36  # every intent acked exactly once
        assert one.stats.done and two.stats.done  # both took part
        assert one.stats.failed == two.stats.failed == 0
    finally:
        await nc_2.drain()
    for key, data in finals.items():
        assert await origin_bytes(store, "photos", key) == data, key
    # per key, the origin saw each version at most once, in the order they were written
    seen: dict[str, list[str]] = {}
    for _, key, etag in store.puts:
        seen.setdefault(key, []).append(etag)
    for key, etags in seen.items():
        assert len(etags) == len(set(etags)), key
        positions = [order[key].index(e) for e in etags]
        assert positions == sorted(positions), key


async def test_in_progress_keeps_a_slow_upload_from_being_redelivered(
    server, conn, state, store, cluster
) -> None:
    config = WritebackConfig(ack_wait_s=0.6, backoff_base_s=0.05, backoff_max_s=0.2)
    await ensure_state(state.js, ack_wait_s=config.ack_wait_s)

    async def slow() -> None:
        await asyncio.sleep(2.0)  # more than three ack_waits

    store.before_put = slow
    m = await cluster.put("photos", "k", b"slow" * 1000)
    nc_2 = await nats.connect(server.url)
    try:
        async with (
            running(conn, state, store, config) as one,
            running(nc_2, state, store, config) as two,
        ):
            await eventually(lambda: is_clean(cluster, m))
            await asyncio.sleep(0.3)
        assert len(store.puts) == 1
        assert one.stats.retried + two.stats.retried == 0
    finally:
        await nc_2.drain()


async def test_stop_hands_in_flight_intents_back(server, conn, state, store, cluster) -> None:
    """On stop, an intent still stuck after the grace period is nak-ed at once, so another
    replica takes it long before ack_wait would have expired."""
    config = WritebackConfig(ack_wait_s=30.0, backoff_base_s=0.05, backoff_max_s=0.2)
    await ensure_state(state.js, ack_wait_s=config.ack_wait_s)
    stuck = asyncio.Event()

    async def hang() -> None:
        stuck.set()
        await asyncio.Event().wait()

    store.before_put = hang
    m = await cluster.put("photos", "k", b"x" * 1000)
    async with running(conn, state, store, config, shutdown_grace_s=0.2):
        await asyncio.wait_for(stuck.wait(), 5)
    store.before_put = None
    nc_2 = await nats.connect(server.url)
    try:
        started = time.monotonic()
        async with running(nc_2, state, store, config):
            await eventually(lambda: is_clean(cluster, m), 5)
        assert time.monotonic() - started < 5
    finally:
        await nc_2.drain()


async def test_buckets_created_and_deleted_after_their_objects(conn, state, store, cluster) -> None:
    async with running(conn, state, store) as service:
        await cluster.create_bucket("logs")
        await eventually(lambda: store.bucket_exists("logs"))
        m = await cluster.put("logs", "a", b"a" * 100)
        await eventually(lambda: is_clean(cluster, m))
        # the delete of the bucket arrives before the delete of its object is applied
        await cluster.delete_bucket("logs")
        await eventually(lambda: _async(service.stats.failed >= 2))
        assert await store.bucket_exists("logs")
        await cluster.delete("logs", "a")
        await eventually(lambda: _async_call(store.bucket_exists("logs"), lambda e: not e))
        # and then the tombstone in KV ``buckets`` goes
        await eventually(lambda: _async_call(cluster.bucket_record("logs"), lambda r: r is None))


async def test_bucket_recreated_before_its_delete_is_applied_is_kept(
    conn, state, store, cluster
) -> None:
    """Delete, re-create, put: the object may reach the origin before the bucket delete is
    applied, which would then fail forever with BucketNotEmpty; it is skipped instead."""
    await store.create_bucket("logs")
    await cluster.delete_bucket("logs")
    await cluster.create_bucket("logs")
    m = await cluster.put("logs", "new", b"n" * 100)
    async with running(
        conn, state, store, partitions=[subjects.writeback_partition("logs", "new")]
    ):
        await eventually(lambda: is_clean(cluster, m))  # the object first, on its own
    async with running(conn, state, store) as service:
        await eventually(lambda: _async(service.stats.done == 2))
    assert service.stats.failed == 0
    assert await origin_bytes(store, "logs", "new") == b"n" * 100
    record = await cluster.bucket_record("logs")
    assert record is not None and not record.deleted


async def test_undecodable_intent_is_dropped_and_the_partition_moves_on(
    conn, state, store, cluster
) -> None:
    m = await cluster.put("photos", "k", b"x" * 100, publish=False)
    subject = subjects.writeback_subject_for("photos", "k")
    await state.js.publish(subject, b"{not json")
    await state.js.publish(subject, b'{"type":"object.written.v1","id":"x"}')  # fields missing
    await cluster.publish_put(m)
    async with running(conn, state, store) as service:
        await eventually(lambda: is_clean(cluster, m))
    assert service.stats.dropped == 2 and service.stats.done == 1


async def test_intent_of_unknown_type_is_kept_for_a_newer_replica(
    conn, state, store, cluster
) -> None:
    subject = subjects.writeback_subject(0)
    await state.js.publish(subject, b'{"type":"object.written.v9","id":"x","at_ns":0}')
    async with running(conn, state, store) as service:
        await eventually(lambda: _async(service.stats.failed >= 1))
    assert service.stats.dropped == 0
    info = await state.js.stream_info(subjects.WRITEBACK_STREAM)
    assert info.state.messages == 1  # still there: pending, or scheduled for a retry


async def test_every_origin_kind_gets_puts_and_deletes(
    conn, state, cluster, origin, origin_bucket
) -> None:
    """The file, S3 (moto) and Azure (Azurite) origins, with an object above the multipart
    threshold (6 MiB in tests/fixtures/origins.py) so it goes up in parts or blocks."""
    big = os.urandom(7 * 1024 * 1024 + 3)
    small = b"tiny" * 100
    m_big = await cluster.put(
        origin_bucket, "big/one", big, content_type="video/mp4", metadata={"a": "1"}
    )
    m_small = await cluster.put(origin_bucket, "small", small)
    async with running(conn, state, origin) as service:
        await eventually(lambda: is_clean(cluster, m_big), 20)
        await eventually(lambda: is_clean(cluster, m_small), 20)
        assert await origin_bytes(origin, origin_bucket, "big/one") == big
        assert await origin_bytes(origin, origin_bucket, "small") == small
        head = await origin.head_object(origin_bucket, "big/one")
        assert (head.content_type, head.metadata) == ("video/mp4", {"a": "1"})
        clean, _ = await cluster.manifest(origin_bucket, "big/one")
        assert clean.origin_etag == head.etag
        await cluster.delete(origin_bucket, "small")
        await eventually(
            lambda: _async_call(cluster.manifest(origin_bucket, "small"), lambda f: f is None), 20
        )
    assert await origin_bytes(origin, origin_bucket, "small") is None
    assert service.stats.failed == 0 and service.stats.bytes_written == len(big) + len(small)


# == helpers ==================================================================================
async def _async(value: bool) -> bool:
    return value


async def _async_call(aw: Awaitable, pred: Callable) -> bool:  # type: ignore[type-arg]
    return bool(pred(await aw))


async def _aiter(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_uploads_at_once_are_bounded_by_max_uploads(conn, state, store, cluster) -> None:
    """Memory is bounded by configuration: however many partitions have work, at most
    ``max_uploads`` origin uploads (each buffering up to a part) run at once."""
    running_now, peak = 0, 0

    async def stall() -> None:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.2)

    async def done() -> None:
        nonlocal running_now
        running_now -= 1

    store.before_put, store.after_put = stall, done
    manifests = [await cluster.put("photos", f"k{i}", os.urandom(1000)) for i in range(8)]
    assert len({subjects.writeback_partition("photos", m.key) for m in manifests}) > 2
    config = msgspec.structs.replace(FAST, max_uploads=2)
    async with running(conn, state, store, config):
        for m in manifests:
            await eventually(lambda m=m: is_clean(cluster, m))
    assert peak == 2
