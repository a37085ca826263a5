"""Sites over NATS leaf nodes (tests/fixtures/federation.py): what crosses a site's link to
the hub and what does not, with the servers ``edgecache hub`` and ``edgecache up --site``
run (the hub's leaf permissions, JetStream domains ``hub``, ``a``, ``b``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError, ServiceUnavailableError

from edgecache.common import ids, subjects, wire
from edgecache.common.jetstream import (
    add_site_source,
    ensure_hub_stream,
    ensure_site_streams,
    restart_stalled_sources,
    sourced_sites,
)
from tests.fixtures.federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def conns(federation: Federation) -> AsyncIterator[dict[str, NATS]]:
    """A client at each site and at the hub (as the operator)."""
    out = {site: await nats.connect(federation.site_url(site)) for site in federation.sites}
    out["hub"] = await nats.connect(federation.hub_url())
    yield out
    for conn in out.values():
        await conn.close()


async def _until_answered(nc: NATS, subject: str, timeout_s: float = 5.0) -> Msg:
    """Request ``subject`` until someone answers (interest takes a moment to cross a leaf
    connection after a subscription is made)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await nc.request(subject, b"ping", timeout=0.5)
        except (NoRespondersError, nats.errors.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_s3_requests_never_cross_to_another_site(conns: dict[str, NATS]) -> None:
    """Site b's cache nodes (queue group ``cachenode`` on ``s3.>``) never see a request
    made at site a, even with no node at a; and the reverse."""
    seen: list[str] = []

    async def node(msg: Msg) -> None:
        seen.append(msg.subject)
        await msg.respond(b"b answered")

    sub = await conns["b"].subscribe("s3.>", queue=subjects.CACHENODE_QUEUE, cb=node)
    # the same subscription under edgecache.fed.> does cross: once it answers from a, b's
    # interest has reached a, so a no-responders below is the permissions' doing
    probe = await conns["b"].subscribe(f"{subjects.FED_PREFIX}.probe", cb=node)
    try:
        assert (
            await _until_answered(conns["a"], f"{subjects.FED_PREFIX}.probe")
        ).data == b"b answered"
        for operation in ("getobject", "putobject", "listbuckets"):
            with pytest.raises(NoRespondersError):
                await conns["a"].request(subjects.s3(operation), b"{}", timeout=1)
        assert (
            await conns["b"].request(subjects.s3("getobject"), b"{}", timeout=1)
        ).data == b"b answered"
        assert seen == [f"{subjects.FED_PREFIX}.probe", subjects.s3("getobject")]
    finally:
        await sub.unsubscribe()
        await probe.unsubscribe()


async def test_fed_subjects_cross_both_ways(conns: dict[str, NATS]) -> None:
    """Request/reply on ``edgecache.fed.>`` works a → b, b → a and site → hub."""

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    subs = [
        await conns[where].subscribe(
            subjects.site_s3(where, "getobject"), queue=subjects.CACHENODE_QUEUE, cb=echo
        )
        for where in ("a", "b")
    ]
    subs.append(await conns["hub"].subscribe(subjects.FED_STATUS, cb=echo))
    try:
        for src, dst in (("a", "b"), ("b", "a")):
            subject = subjects.site_s3(dst, "getobject")
            assert (await _until_answered(conns[src], subject)).data == subject.encode()
        for src in ("a", "b"):
            assert (
                await _until_answered(conns[src], subjects.FED_STATUS)
            ).data == subjects.FED_STATUS.encode()
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def test_other_internal_subjects_stay_at_their_site(conns: dict[str, NATS]) -> None:
    """Heartbeats, invalidations and the site's own JetStream API do not cross."""
    got: list[str] = []

    async def record(msg: Msg) -> None:
        got.append(msg.subject)

    sub = await conns["b"].subscribe("edgecache.>", cb=record)
    marker = await conns["b"].subscribe(f"{subjects.FED_PREFIX}.marker", cb=record)
    try:
        await _until_answered_publish(conns["a"], conns["b"], got)
        await conns["a"].publish(subjects.EVENTS_INVALIDATE, b"x")
        await conns["a"].publish("edgecache.heartbeat.n1", b"x")
        await conns["a"].publish(f"{subjects.FED_PREFIX}.marker", b"last")
        await conns["a"].flush()
        deadline = asyncio.get_running_loop().time() + 5
        while f"{subjects.FED_PREFIX}.marker" not in got[1:]:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert subjects.EVENTS_INVALIDATE not in got and "edgecache.heartbeat.n1" not in got
    finally:
        await sub.unsubscribe()
        await marker.unsubscribe()


async def _until_answered_publish(a: NATS, b: NATS, got: list[str]) -> None:
    """Publish the marker at ``a`` until ``b``'s subscription receives it once."""
    deadline = asyncio.get_running_loop().time() + 5
    while not got:
        assert asyncio.get_running_loop().time() < deadline, "edgecache.fed.marker never crossed"
        await a.publish(f"{subjects.FED_PREFIX}.marker", b"first")
        await asyncio.sleep(0.05)


async def test_jetstream_state_is_per_site(conns: dict[str, NATS]) -> None:
    """KV ``objects`` at a and at b are separate buckets in separate domains."""
    kv_a = await conns["a"].jetstream().create_key_value(bucket=subjects.KV_OBJECTS)
    kv_b = await conns["b"].jetstream().create_key_value(bucket=subjects.KV_OBJECTS)
    await kv_a.put("only-at-a", b"1")
    with pytest.raises(KeyNotFoundError):
        await kv_b.get("only-at-a")
    assert (await conns["a"].jetstream().account_info()).domain == "a"
    assert (await conns["b"].jetstream().account_info()).domain == "b"


async def test_a_site_cannot_reach_another_sites_jetstream(conns: dict[str, NATS]) -> None:
    """Site a may use the hub's JetStream API (its mirror does) but not site b's."""
    assert (
        await conns["a"].jetstream(domain=subjects.HUB_DOMAIN).account_info()
    ).domain == subjects.HUB_DOMAIN
    with pytest.raises(ServiceUnavailableError):  # no responders: the hub never forwards it
        await conns["a"].jetstream(domain="b", timeout=1).account_info()


# --- the change log: CHANGES at each site, FEDERATION at the hub (sources) and at each site
# (a mirror of the hub's)


async def _streams(federation: Federation, conns: dict[str, NATS]) -> None:
    """Create every site's streams and the hub's, sourcing every site (what the site
    federators and the hub federator do when a site joins), twice: it is idempotent."""
    for _ in range(2):
        for site in federation.sites:
            await ensure_site_streams(conns[site].jetstream(), site)
        hub = conns["hub"].jetstream()
        await ensure_hub_stream(hub)
        for site in federation.sites:
            await add_site_source(hub, site)
    assert sourced_sites(await hub.stream_info(subjects.FEDERATION_STREAM)) == list(
        federation.sites
    )


async def _append(nc: NATS, site: str, key: str) -> wire.SiteChange:
    """Append a change at ``site`` as its catalog does (a JetStream publish, acknowledged,
    ``Nats-Msg-Id`` the event id)."""
    change = wire.SiteChange(
        id=ids.new_id(), at_ns=time.time_ns(), site=site, bucket="bk", key=key, version="v1"
    )
    ack = await nc.jetstream().publish(
        subjects.site_changes(site), wire.encode(change), headers={"Nats-Msg-Id": change.id}
    )
    assert ack.stream == subjects.CHANGES_STREAM
    return change


async def _mirrored(
    nc: NATS,
    want: int,
    timeout_s: float = 10.0,
    *,
    nudge: Federation | None = None,
    conns: dict[str, NATS] | None = None,
) -> list[wire.SiteChange]:
    """The changes in a site's ``FEDERATION`` once it holds ``want`` of them. With
    ``nudge``, restart stalled sources meanwhile, as the federators do once they hear across
    the link."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    restarted: dict[str, dict[str, float]] = {}
    while (await js.stream_info(subjects.FEDERATION_STREAM)).state.messages < want:
        assert time.monotonic() < deadline, "the site's FEDERATION did not catch up"
        if nudge is not None and conns is not None:
            for where, domains in (
                ("hub", set(nudge.sites)),
                *((s, {subjects.HUB_DOMAIN}) for s in nudge.sites),
            ):
                await restart_stalled_sources(
                    conns[where].jetstream(),
                    subjects.FEDERATION_STREAM,
                    domains,
                    restarted=restarted.setdefault(where, {}),
                )
        await asyncio.sleep(0.01)
    last = (await js.stream_info(subjects.FEDERATION_STREAM)).state.last_seq
    msgs = [await js.get_msg(subjects.FEDERATION_STREAM, seq) for seq in range(1, last + 1)]
    return [wire.decode(m.data, wire.SiteChange) for m in msgs if m.data]


async def test_a_change_at_a_reaches_b(federation: Federation, conns: dict[str, NATS]) -> None:
    await _streams(federation, conns)
    before = len(await _mirrored(conns["b"], 0))
    started = time.monotonic()
    change = await _append(conns["a"], "a", "k-first")
    at_b = await _mirrored(conns["b"], before + 1)
    print(f"a → b mirror: {1000 * (time.monotonic() - started):.0f} ms")  # noqa: T201
    assert at_b[-1] == change
    # a's own change comes back to a too (its federator skips it)
    assert (await _mirrored(conns["a"], before + 1))[-1] == change


async def test_hub_down_changes_replayed_in_order(
    federation: Federation, conns: dict[str, NATS]
) -> None:
    """With the hub down, appends at a and at b are acknowledged locally; once it is back,
    each site's mirror has the other's changes, each site's in the order it made them."""
    await _streams(federation, conns)
    before = len(await _mirrored(conns["b"], 0))
    federation.cut()
    try:
        made = {
            site: [await _append(conns[site], site, f"k{i}") for i in range(5)]
            for site in ("a", "b")
        }
    finally:
        federation.restore()
    started = time.monotonic()
    for site in ("a", "b"):
        got = (await _mirrored(conns[site], before + 10, nudge=federation, conns=conns))[before:]
        for origin in ("a", "b"):
            assert [c for c in got if c.site == origin] == made[origin]
    print(f"caught up {1000 * (time.monotonic() - started):.0f} ms after the link returned")  # noqa: T201
