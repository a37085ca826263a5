"""The catalog's share of federation on one nats-server: versions stamped ``(hlc, site)``,
each change appended to the site's change log before it is acknowledged, and the rule
that applies another site's change (the larger ``(hlc, site)`` wins)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
from nats.js.api import StreamConfig

from edgecache.common import errors, subjects, wire
from edgecache.common.catalog import Catalog
from edgecache.common.credit import CreditBudget
from edgecache.common.hlc import HybridClock
from edgecache.common.ids import new_id
from edgecache.common.jetstream import State, ensure_state
from edgecache.origin.file import FileOrigin
from edgecache.writeback.worker import IntentApplier

SITE = f"s{secrets.token_hex(3)}"  # this module's site (its change log's subject is its own)
OTHER = "zz-other"  # a remote site that sorts after SITE at an equal hlc
EARLIER = "00-other"  # one that sorts before it
CHUNK = 1000
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest_asyncio.fixture(loop_scope="session")
async def state(nc) -> State:
    return await ensure_state(nc.jetstream())


@pytest_asyncio.fixture(loop_scope="session")
async def changes(nc, state) -> str:  # noqa: ARG001 - the KV must exist too
    """This site's change log (the stream D1's ensure_state creates as ``CHANGES``; here
    under a name of the module's own, on the session's server; created once)."""
    name = f"CHANGES_{SITE}"
    await nc.jetstream().add_stream(
        StreamConfig(name=name, subjects=[subjects.site_changes(SITE)], duplicate_window=120.0)
    )
    return name


@pytest.fixture
def catalog(nc, state, changes) -> Catalog:  # noqa: ARG001 - the change log must exist
    return Catalog(nc, state, site=SITE)


async def logged(nc, stream: str, after: int) -> list[wire.SiteChange]:
    """The changes in ``stream`` after sequence ``after``."""
    js = nc.jetstream()
    last = (await js.stream_info(stream)).state.last_seq
    return [
        wire.decode((await js.get_msg(stream, seq)).data, wire.SiteChange)
        for seq in range(after + 1, last + 1)
    ]


async def last_seq(nc, stream: str) -> int:
    return (await nc.jetstream().stream_info(stream)).state.last_seq


def version(bucket: str, key: str, *, size: int = 2500, deleted: bool = False) -> wire.Manifest:
    v = new_id()
    return wire.Manifest(
        bucket=bucket,
        key=key,
        version=v,
        size=size,
        etag="e" * 32 if size else EMPTY_MD5,
        last_modified=time.time(),
        chunks=[wire.ChunkRef(id=f"{v}.0", size=size)] if size else [],
        nodes=["n1"],
        deleted=deleted,
        content_type="text/plain",
        metadata={"colour": "blue"},
    )


def intent(m: wire.Manifest) -> wire.ObjectWritten:
    return wire.ObjectWritten(
        id=m.version, at_ns=time.time_ns(), bucket=m.bucket, key=m.key, version=m.version
    )


def remote(
    bucket: str,
    key: str,
    *,
    hlc: int,
    site: str = OTHER,
    state: str = "dirty",
    deleted: bool = False,
    v: str | None = None,
) -> wire.SiteChange:
    v = v or new_id()
    m = (
        None
        if deleted
        else wire.Manifest(
            bucket=bucket,
            key=key,
            version=v,
            size=2500,
            etag="f" * 32,
            last_modified=time.time(),
            content_type="image/png",
            hlc=hlc,
            site=site,
            state=state,
            origin_etag="o1" if state == "clean" else "",
        )
    )
    return wire.SiteChange(
        id=new_id(),
        at_ns=time.time_ns(),
        site=site,
        bucket=bucket,
        key=key,
        version=v,
        hlc=hlc,
        state=state,
        deleted=deleted,
        size=0 if deleted else 2500,
        etag="" if deleted else "f" * 32,
        manifest=m,
    )


async def test_every_change_is_stamped_and_logged_before_it_returns(
    nc, catalog: Catalog, changes: str
) -> None:
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    start = await last_seq(nc, changes)
    first = version(bucket, key)
    await catalog.commit(first, intent(first))
    held = (await catalog.get(bucket, key)).manifest
    assert held.site == SITE and held.hlc > 0
    second = version(bucket, key)
    await catalog.commit(second, intent(second))
    entry = await catalog.get(bucket, key)
    assert entry.manifest.hlc > held.hlc
    clean = msgspec.structs.replace(entry.manifest, state="clean", origin_etag="o")
    assert await catalog.mark_clean(clean, entry.revision)
    tomb = version(bucket, key, size=0, deleted=True)
    await catalog.commit(
        tomb,
        wire.ObjectDeleted(id=tomb.version, at_ns=1, bucket=bucket, key=key, version=tomb.version),
    )
    entry = await catalog.get(bucket, key)
    assert await catalog.remove_tombstone(entry.manifest, entry.revision)
    await catalog.invalidate_bucket(bucket)

    log = await logged(nc, changes, start)
    assert [(c.version, c.state, c.deleted, c.key) for c in log] == [
        (first.version, "dirty", False, key),
        (second.version, "dirty", False, key),
        (second.version, "clean", False, key),
        (tomb.version, "dirty", True, key),
        (tomb.version, "clean", True, key),
        ("", "dirty", True, None),  # the bucket's deletion
    ]
    assert all(c.site == SITE for c in log)
    hlcs = [c.hlc for c in log]
    assert hlcs[0] < hlcs[1] == hlcs[2] < hlcs[3] == hlcs[4] < hlcs[5]
    # the version's metadata travels with it, not its chunks or nodes
    assert log[1].manifest is not None and log[1].manifest.metadata == {"colour": "blue"}
    assert log[1].manifest.chunks == [] and log[1].manifest.nodes == []
    assert log[2].manifest.origin_etag == "o" and log[3].manifest is None


async def test_no_change_log_no_acknowledgement(nc, state: State) -> None:
    catalog = Catalog(nc, state, site=f"nolog{secrets.token_hex(3)}")  # no CHANGES stream takes it
    m = version(f"b-{secrets.token_hex(3)}", "k")
    with pytest.raises(errors.ServiceUnavailable):
        await catalog.commit(m, intent(m))


async def test_a_lone_site_stamps_and_logs_nothing(nc, state: State, changes: str) -> None:
    start = await last_seq(nc, changes)
    catalog = Catalog(nc, state)
    m = version(f"b-{secrets.token_hex(3)}", "k")
    await catalog.commit(m, intent(m))
    held = (await catalog.get(m.bucket, m.key)).manifest
    assert (held.hlc, held.site) == (0, "")
    assert await last_seq(nc, changes) == start


async def test_a_newer_remote_version_replaces_ours_and_an_older_one_is_ignored(
    catalog: Catalog,
) -> None:
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    mine = version(bucket, key)
    await catalog.commit(mine, intent(mine))
    ours = (await catalog.get(bucket, key)).manifest

    older = remote(bucket, key, hlc=ours.hlc - 1)
    assert (await catalog.apply_remote(older, chunk_bytes=CHUNK)).outcome == "ignored"
    tie_loser = remote(bucket, key, hlc=ours.hlc, site=EARLIER)  # equal hlc: the site decides
    assert (await catalog.apply_remote(tie_loser, chunk_bytes=CHUNK)).outcome == "ignored"
    assert (await catalog.get(bucket, key)).manifest.version == ours.version

    newer = remote(bucket, key, hlc=ours.hlc, site=OTHER)  # equal hlc, larger site: wins
    applied = await catalog.apply_remote(newer, chunk_bytes=CHUNK)
    assert applied.outcome == "applied" and applied.replaced.version == ours.version
    record = (await catalog.get(bucket, key)).manifest
    assert (record.version, record.site, record.hlc, record.state) == (
        newer.version,
        OTHER,
        ours.hlc,
        "dirty",
    )
    assert record.chunks == [] and record.nodes == [] and record.content_type == "image/png"
    assert catalog.owner_of(record) == OTHER
    # applying again (at-least-once delivery) changes nothing
    assert (await catalog.apply_remote(newer, chunk_bytes=CHUNK)).outcome == "ignored"
    # its own dirty mark: listings at this site show the remote version
    assert [m.version async for m in catalog.dirty(bucket)] == [newer.version]
    # our next write comes after what we saw: it is stamped past the remote version
    again = version(bucket, key)
    await catalog.commit(again, intent(again))
    assert (await catalog.get(bucket, key)).manifest.hlc > ours.hlc


async def test_a_clean_remote_version_becomes_fillable_from_the_origin(catalog: Catalog) -> None:
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    dirty = remote(bucket, key, hlc=time.time_ns() + 10**9)
    assert (await catalog.apply_remote(dirty, chunk_bytes=CHUNK)).outcome == "applied"
    clean = msgspec.structs.replace(
        remote(bucket, key, hlc=dirty.hlc, state="clean", v=dirty.version), id=new_id()
    )
    assert (await catalog.apply_remote(clean, chunk_bytes=CHUNK)).outcome == "cleaned"
    record = (await catalog.get(bucket, key)).manifest
    assert record.state == "clean" and catalog.owner_of(record) is None
    assert [(c.id, c.size) for c in record.chunks] == [
        (f"{dirty.version}.0", 1000),
        (f"{dirty.version}.1", 1000),
        (f"{dirty.version}.2", 500),
    ]
    assert record.origin_etag == "o1"
    assert [m async for m in catalog.dirty(bucket)] == []  # unmarked
    assert (
        await catalog.apply_remote(dirty, chunk_bytes=CHUNK)
    ).outcome == "ignored"  # a late redelivery
    # the clock took in the remote timestamp: a local write after it wins
    assert catalog.clock.now() > dirty.hlc


async def test_a_remote_delete_and_a_bucket_deletion(catalog: Catalog) -> None:
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    mine = version(bucket, key)
    await catalog.commit(mine, intent(mine))
    gone = remote(bucket, key, hlc=catalog.clock.now() + 1, deleted=True)
    assert (await catalog.apply_remote(gone, chunk_bytes=CHUNK)).outcome == "applied"
    record = (await catalog.get(bucket, key)).manifest
    assert record.deleted and record.site == OTHER and catalog.owner_of(record) is None
    whole = wire.SiteChange(
        id=new_id(), at_ns=1, site=OTHER, bucket=bucket, key=None, hlc=1, deleted=True
    )
    assert (await catalog.apply_remote(whole, chunk_bytes=CHUNK)).outcome == "bucket"


async def test_recovery_republishes_no_intent_of_a_remote_version(catalog: Catalog) -> None:
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    await catalog.apply_remote(remote(bucket, key, hlc=time.time_ns()), chunk_bytes=CHUNK)
    published: list[wire.Intent] = []

    async def capture(i: wire.Intent) -> None:
        published.append(i)

    catalog.publish_intent = capture  # type: ignore[method-assign]
    await catalog.recover("any-node")
    assert [i for i in published if i.bucket == bucket] == []


async def test_a_write_back_never_replaces_a_newer_version_in_the_origin(
    nc, catalog: Catalog, state: State, tmp_path
) -> None:
    """The loser's write-back (its version still current here: the winner's change has not
    arrived) finds the winner in the origin and writes nothing; the winner's own wins."""
    origin = FileOrigin(tmp_path / "origin")
    await origin.start()
    applier = IntentApplier(nc, catalog, state.buckets, origin, credit=CreditBudget(nc))
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    loser = version(bucket, key, size=0)  # no chunks to stream: the origin's guard decides
    await catalog.commit(loser, intent(loser))
    stamped = (await catalog.get(bucket, key)).manifest

    async def winner() -> AsyncIterator[bytes]:
        yield b"winner"

    await origin.put_object(bucket, key, winner(), size=6, hlc=stamped.hlc + 5, site=OTHER)
    outcome = await applier.apply(intent(loser))
    assert (outcome.op, outcome.result) == ("put", "superseded")
    obj = await origin.head_object(bucket, key)
    assert (obj.size, obj.hlc, obj.site) == (6, stamped.hlc + 5, OTHER)
    assert (
        await catalog.get(bucket, key)
    ).manifest.state == "dirty"  # replaced when the winner's change comes

    newer = version(bucket, key, size=0)  # written here after the winner was seen
    catalog.clock.observe(stamped.hlc + 5)
    await catalog.commit(newer, intent(newer))
    assert (await applier.apply(intent(newer))).result == "written"
    assert (await origin.head_object(bucket, key)).size == 0
    await origin.close()


async def test_concurrent_writes_at_one_site_keep_the_hlc_order(
    nc, state: State, changes: str
) -> None:
    """Two nodes of one site, one clock a second ahead, write one key at once: the version
    left current here is the one with the largest stamp in the change log — the one every
    other site keeps."""
    ahead = HybridClock(lambda: time.time_ns() + 10**9)
    nodes = [Catalog(nc, state, site=SITE), Catalog(nc, state, site=SITE, clock=ahead)]
    bucket, key = f"b-{secrets.token_hex(3)}", "k"
    start = await last_seq(nc, changes)
    writes = [version(bucket, key) for _ in range(12)]
    await asyncio.gather(*(nodes[i % 2].commit(m, intent(m)) for i, m in enumerate(writes)))
    log = [c for c in await logged(nc, changes, start) if c.bucket == bucket]
    assert len(log) == len(writes) and len({c.hlc for c in log}) == len(log)
    held = (await nodes[0].get(bucket, key)).manifest
    assert held.version == max(log, key=lambda c: (c.hlc, c.site)).version
