"""Sites over NATS leaf nodes (tests/fixtures/federation.py): what crosses a site's link to
the hub and what does not, with the servers ``edgecache hub`` and ``edgecache up --site``
run (the hub's leaf permissions, JetStream domains ``hub``, ``a``, ``b``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError, ServiceUnavailableError
from prometheus_client import CollectorRegistry, generate_latest

from edgecache.common import ids, subjects, wire
from edgecache.common.config import Config
from edgecache.common.jetstream import (
    add_site_source,
    ensure_hub_stream,
    ensure_site_streams,
    restart_stalled_sources,
    sourced_sites,
)
from edgecache.common.metrics import Snapshot
from edgecache.common.sitestatus import ask_sites
from edgecache.federator.applier import ChangeApplier
from edgecache.federator.hub import serve_hub
from edgecache.federator.membership import Membership
from edgecache.federator.sitelink import Site, site_samples, start_site
from edgecache.launcher.leafnodes import site_server_options
from edgecache.launcher.natsauth import inbox_prefix
from edgecache.launcher.natsserver import NatsServer
from edgecache.launcher.render import render_sites
from edgecache.launcher.sitekey import load_or_create_site_key
from tests.fixtures.federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

SITE_TTL_S = 1.5  # KV sites keeps the TTL of whoever creates it first: one for the module


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def conns(federation: Federation) -> AsyncIterator[dict[str, NATS]]:
    """A client at each site and at the hub (as the operator)."""
    out = {
        site: await nats.connect(federation.site_url(site), inbox_prefix=subjects.site_inboxes(site))
        for site in federation.sites
    }
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
    probe = await conns["b"].subscribe(f"{subjects.FED_PREFIX}.site.b.s3.probe", cb=node)
    try:
        assert (
            await _until_answered(conns["a"], f"{subjects.FED_PREFIX}.site.b.s3.probe")
        ).data == b"b answered"
        for operation in ("getobject", "putobject", "listbuckets"):
            with pytest.raises(NoRespondersError):
                await conns["a"].request(subjects.s3(operation), b"{}", timeout=1)
        assert (
            await conns["b"].request(subjects.s3("getobject"), b"{}", timeout=1)
        ).data == b"b answered"
        assert seen == [f"{subjects.FED_PREFIX}.site.b.s3.probe", subjects.s3("getobject")]
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


async def test_a_site_cannot_answer_reads_meant_for_another(conns: dict[str, NATS]) -> None:
    """A subscription at a to b's read subject never hears a read of b's versions (a's
    interest does not cross: its leaf may receive only ``edgecache.fed.site.a.s3.>``);
    the same subscription at a for its own subject does."""

    async def answer(msg: Msg) -> None:
        await msg.respond(b"a answered")

    subject_b = subjects.site_s3("b", "getobject")
    thief = await conns["a"].subscribe(subject_b, queue=subjects.CACHENODE_QUEUE, cb=answer)
    own = await conns["a"].subscribe(subjects.site_s3("a", "getobject"), queue=subjects.CACHENODE_QUEUE, cb=answer)
    try:
        # a's own subject crosses from b: interest has had time to reach the hub and b
        assert (await _until_answered(conns["b"], subjects.site_s3("a", "getobject"))).data == b"a answered"
        for asker in ("b", "hub"):
            with pytest.raises(NoRespondersError):
                await conns[asker].request(subject_b, b"{}", timeout=1)
    finally:
        await thief.unsubscribe()
        await own.unsubscribe()


async def test_a_site_cannot_read_replies_meant_for_another(conns: dict[str, NATS]) -> None:
    """A subscription at a to every inbox (``_INBOX.>``) hears no reply to b's requests:
    b's connections take their replies under ``_INBOX.site.b`` and a's leaf may receive
    only ``_INBOX.site.a.>``. The same request made at a is answered at a."""
    heard: list[str] = []

    async def snoop(msg: Msg) -> None:
        heard.append(msg.subject)

    async def answer(msg: Msg) -> None:
        await msg.respond(b"status for " + msg.reply.encode())

    thief = await conns["a"].subscribe("_INBOX.>", cb=snoop)
    hub = await conns["hub"].subscribe(subjects.FED_STATUS, cb=answer)
    try:
        answered = await _until_answered(conns["a"], subjects.FED_STATUS)  # the hub's interest is known
        assert answered.data.startswith(b"status for _INBOX.site.a.")
        heard.clear()
        for _ in range(5):
            reply = await conns["b"].request(subjects.FED_STATUS, b"{}", timeout=5)
            assert reply.data.startswith(b"status for _INBOX.site.b.")
        await conns["a"].flush()
        await asyncio.sleep(0.2)
        assert [s for s in heard if not s.startswith("_INBOX.site.a.")] == []
    finally:
        await thief.unsubscribe()
        await hub.unsubscribe()


_MARKER = f"{subjects.FED_PREFIX}.site.b.s3.marker"  # crosses a → b, as reads of b's versions do


async def test_other_internal_subjects_stay_at_their_site(conns: dict[str, NATS]) -> None:
    """Heartbeats, invalidations, the apply requests, the change log's subjects and any other
    ``edgecache.fed.`` subject do not cross; nor a heartbeat on another site's subject."""
    got: list[str] = []

    async def record(msg: Msg) -> None:
        got.append(msg.subject)

    sub = await conns["b"].subscribe("edgecache.>", cb=record)
    marker = await conns["b"].subscribe(_MARKER, cb=record)
    stay = [
        subjects.EVENTS_INVALIDATE,
        "edgecache.heartbeat.n1",
        subjects.FED_APPLY,
        subjects.site_changes("a"),
        subjects.site_heartbeat("b"),  # a cannot send b's heartbeat
        f"{subjects.FED_PREFIX}.other",
    ]
    try:
        await _until_answered_publish(conns["a"], got)
        for subject in stay:
            await conns["a"].publish(subject, b"x")
        await conns["a"].publish(_MARKER, b"last")
        await conns["a"].flush()
        deadline = asyncio.get_running_loop().time() + 5
        while got.count(_MARKER) < 2 * 2:  # two subscriptions, the first marker and the last
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert [s for s in got if s != _MARKER] == []
    finally:
        await sub.unsubscribe()
        await marker.unsubscribe()


async def _until_answered_publish(a: NATS, got: list[str]) -> None:
    """Publish the marker at ``a`` until ``b``'s subscriptions received it, then forget it."""
    deadline = asyncio.get_running_loop().time() + 5
    while got.count(_MARKER) < 2:
        assert asyncio.get_running_loop().time() < deadline, f"{_MARKER} never crossed"
        got.clear()
        await a.publish(_MARKER, b"first")
        await a.flush()
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


# --- the site federator's applier: FEDERATION → edgecache.fed.apply (a stand-in node here,
# until the cache node's handler exists) → ack


class StandInNode:
    """Answers ``edgecache.fed.apply`` in queue group ``cachenode`` as a cache node would:
    records each change and answers ``Ok`` (or ``Error`` while ``refuse`` is set)."""

    def __init__(self) -> None:
        self.changes: list[wire.SiteChange] = []
        self.refuse = False
        self.refused = 0

    async def answer(self, msg: Msg) -> None:
        if self.refuse:
            self.refused += 1
            await msg.respond(wire.encode(wire.Error(code="ServiceUnavailable")))
            return
        self.changes.append(wire.decode(msg.data, wire.SiteChange))
        await msg.respond(wire.encode(wire.Ok()))


async def _until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_applier_sends_other_sites_changes_to_a_node(
    federation: Federation, conns: dict[str, NATS]
) -> None:
    """b's applier sends a's changes (not b's own) to b's nodes, in order per key, and
    acks them once a node answers; with no node up it retries until one is."""
    await _streams(federation, conns)
    applier = ChangeApplier(conns["b"], "b", max_in_flight=4, timeout_s=0.5)
    task = asyncio.create_task(applier.run())
    node = StandInNode()
    try:
        # no node at b yet: a's change waits and is retried
        first = await _append(conns["a"], "a", "k-retried")
        await _until(lambda: applier.failures > 0)
        sub = await conns["b"].subscribe(
            subjects.FED_APPLY, queue=subjects.CACHENODE_QUEUE, cb=node.answer
        )
        await _until(lambda: first in node.changes)
        # a node that refuses (an error reply) is asked again
        node.refuse = True
        refused = await _append(conns["a"], "a", "k-refused")
        await _until(lambda: node.refused > 0)
        node.refuse = False
        own = await _append(conns["b"], "b", "k-own")
        made = [await _append(conns["a"], "a", f"k{i % 3}") for i in range(12)]
        await _until(lambda: all(c in node.changes for c in made) and refused in node.changes)
        assert own not in node.changes
        for key in ("k0", "k1", "k2"):
            seen = [c for c in node.changes if c.key == key and c in made]
            assert seen == [c for c in made if c.key == key]
        await _until(lambda: applier.skipped > 0)
        backlog = -1
        deadline = time.monotonic() + 5
        while backlog != 0 and time.monotonic() < deadline:
            backlog = await applier.backlog()
            await asyncio.sleep(0.02)
        assert backlog == 0
        await sub.unsubscribe()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_applier_keeps_consuming_after_fetches_outlast_a_stalled_event_loop(
    federation: Federation, conns: dict[str, NATS]
) -> None:
    """An event loop stalled for longer than a fetch's wait (a loaded host) makes nats-py's
    ``fetch`` raise a bare ``asyncio.TimeoutError``; the applier's loop once ended there and
    the site never applied another change. Now it idles through them and applies what comes."""
    await _streams(federation, conns)
    wait_s = 0.05
    applier = ChangeApplier(conns["b"], "b", max_in_flight=4, timeout_s=0.5, fetch_wait_s=wait_s)
    node = StandInNode()
    sub = await conns["b"].subscribe(subjects.FED_APPLY, queue=subjects.CACHENODE_QUEUE, cb=node.answer)
    task = asyncio.create_task(applier.run())
    stalls = 0

    async def stall_the_loop() -> None:  # blocks the loop past each fetch's deadline
        nonlocal stalls
        while True:
            await asyncio.sleep(0)
            time.sleep(wait_s * 1.2)  # noqa: ASYNC251 - the stall is the point
            stalls += 1

    staller = asyncio.create_task(stall_the_loop())
    try:
        await _until(lambda: stalls >= 20)
        staller.cancel()
        assert not task.done(), f"the applier's loop ended: {task.exception()!r}"
        change = await _append(conns["a"], "a", "k-after-stalls")
        await _until(lambda: change in node.changes)
        assert not task.done()
    finally:
        staller.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sub.unsubscribe()


# --- membership: site heartbeats → the hub federator (KV sites, TTL) → status


def _hub_config(federation: Federation, ttl_s: float) -> Config:
    """The hub federator's config, with its own identity on the hub (its permissions are
    under test too)."""
    nats_config = {
        "url": f"nats://{federation.hub.host}:{federation.hub.port}",
        "user": "federator",
        "password": federation.passwords["federator"],
        "inbox_prefix": inbox_prefix("federator"),
    }
    return msgspec.convert(
        {"nats": nats_config, "federator": {"role": "hub", "site_ttl_s": ttl_s}}, Config
    )


def _site_config(federation: Federation, site: str) -> Config:
    return msgspec.convert(
        {
            "nats": {"url": federation.site_url(site)},
            "federation": {"site": site, "hub_url": federation.leaf_url},
            "federator": {"site_heartbeat_s": 0.2},
        },
        Config,
    )


def _node(node_id: str) -> wire.Heartbeat:
    return wire.Heartbeat(
        id=ids.new_id(),
        at_ns=time.time_ns(),
        node_id=node_id,
        host="h",
        started=time.time(),
        stats=wire.NodeStats(hits=7),
    )


@contextlib.asynccontextmanager
async def _federators(
    federation: Federation, conns: dict[str, NATS], ttl_s: float
) -> AsyncIterator[dict[str, Site]]:
    """The hub federator (its own identity) and a federator's site side at a and b (each
    with one made-up cache node in its membership), as ``edgecache hub`` and ``up --site``
    run them; yields each site's side (cancel its tasks to silence a site)."""
    stop = asyncio.Event()
    hub = asyncio.create_task(serve_hub(_hub_config(federation, ttl_s), stop))
    sites: dict[str, Site] = {}
    try:
        for site in ("a", "b"):
            members = Membership(30.0)
            members.observe(_node(f"{site}-node-1"))
            sites[site] = await start_site(_site_config(federation, site), conns[site], members)
        yield sites
    finally:
        for running in sites.values():
            for task in running.tasks:
                task.cancel()
        stop.set()
        await hub


async def test_federators_restart_stalled_sources_when_the_hub_returns(
    federation: Federation, conns: dict[str, NATS]
) -> None:
    """With the hub stopped and started again, the federators (not the test) get the
    sources moving: each site has the other's changes made meanwhile within 2 s (measured
    0.25-0.45 s on one host; 2.2-2.6 s when sources were restarted only after 3 s of
    silence), not nats-server's 30 s and more."""
    async with _federators(federation, conns, SITE_TTL_S):
        await _until_linked(conns)
        before = len(await _mirrored(conns["b"], 0))
        federation.cut()
        try:
            for site in ("a", "b"):
                for i in range(3):
                    await _append(conns[site], site, f"down-{i}")
        finally:
            federation.restore()
        started = time.monotonic()
        for site in ("a", "b"):
            await _mirrored(conns[site], before + 6, timeout_s=15.0)
        took = time.monotonic() - started
        print(f"federators: caught up {1000 * took:.0f} ms after the hub returned")  # noqa: T201
        assert took < 2.0, f"caught up {took:.2f} s after the hub returned"


async def _until_linked(conns: dict[str, NATS]) -> None:
    """Until the hub federator lists both sites."""
    deadline = time.monotonic() + 10
    while {s.site for s in (await ask_sites(conns["a"], timeout_s=1.0)).sites} != {"a", "b"}:
        assert time.monotonic() < deadline, "the sites did not join"
        await asyncio.sleep(0.05)


async def test_sites_heartbeat_to_the_hub_and_status_lists_them(
    federation: Federation, conns: dict[str, NATS]
) -> None:
    """Each site federator's heartbeat puts the site, its nodes and its backlog in the hub's
    KV ``sites``; ``edgecache status`` at a site lists every site; a site that stops beating
    leaves after the TTL."""
    ttl_s = SITE_TTL_S
    async with _federators(federation, conns, ttl_s) as tasks:

        async def listed() -> dict[str, wire.SiteHeartbeat]:
            return {s.site: s for s in (await ask_sites(conns["a"], timeout_s=1.0)).sites}

        deadline = time.monotonic() + 10
        # both federators heard from the hub (KV sites may still hold an earlier test's entries)
        # and a's apply consumer exists (its backlog is -1 until the applier made it)
        while (
            set(sites := await listed()) != {"a", "b"}
            or not all(t.link.heartbeats for t in tasks.values())
            or sites["a"].backlog < 0
        ):
            assert time.monotonic() < deadline, f"sites listed: {sorted(sites)}"
            await asyncio.sleep(0.05)
        assert [n.node_id for n in sites["b"].nodes] == ["b-node-1"]
        # a heartbeat naming another site than its subject's is refused (a cannot even
        # send on b's subject: test_other_internal_subjects_stay_at_their_site)
        forged = msgspec.structs.replace(sites["b"], id=ids.new_id(), nodes=[])
        reply = await conns["a"].request(subjects.site_heartbeat("a"), wire.encode(forged), timeout=5)
        refused = wire.REPLY_DECODER.decode(reply.data)
        assert isinstance(refused, wire.Error) and refused.code == "InvalidRequest", refused
        assert [n.node_id for n in (await listed())["b"].nodes] == ["b-node-1"]
        assert sites["b"].nodes[0].stats.hits == 7
        assert sites["a"].backlog >= 0 and sites["a"].lag >= 0
        text = render_sites(list(sites.values()))
        assert "a: 1 cache node(s), cross-site backlog" in text[1] and "b-node-1" in "\n".join(text)
        # the site's metrics (a scrape of the federator's /metrics)
        registry = CollectorRegistry()
        registry.register(Snapshot("federator", lambda: site_samples(tasks["a"].link)))
        scraped = generate_latest(registry).decode()
        assert "edgecache_federator_site_hub_linked 1.0" in scraped
        assert (
            "edgecache_federator_site_backlog" in scraped
            and "edgecache_federator_site_lag" in scraped
        )
        # b stops beating: it leaves KV sites after the TTL
        for task in tasks["b"].tasks:
            task.cancel()
        deadline = time.monotonic() + 10 * ttl_s
        while set(sites := await listed()) != {"a"}:
            assert time.monotonic() < deadline, f"sites listed: {sorted(sites)}"
            await asyncio.sleep(0.1)


async def test_a_site_whose_key_the_hub_does_not_list_is_refused(
    federation: Federation, tmp_path: Path
) -> None:
    """A leaf connection with an nkey the hub's config does not list never links."""
    stranger, _ = load_or_create_site_key(tmp_path)
    server = NatsServer(
        tmp_path / "nats", **site_server_options("c", federation.leaf_url, stranger)
    )
    server.start(log_file=tmp_path / "c.log")
    try:
        deadline = time.monotonic() + 10
        while "Authorization Violation" not in (tmp_path / "c.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, "the hub did not refuse the stranger"
            await asyncio.sleep(0.05)
        assert federation.linked() == set(federation.sites)  # a and b only
    finally:
        server.stop()
