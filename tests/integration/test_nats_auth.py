"""NATS locked down as ``edgecache up`` runs it: no anonymous connections, one identity per
service with least-privilege permissions (edgecache.launcher.natsauth), and the services
still work together under them.

One nats-server for the module, with the users and permissions of ``up`` (two cache nodes
with their own nkeys, ``node-a`` and ``node-b``) and ``sync_interval: always``; the
JetStream state is created by ``admin`` first, as ``up`` does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import click
import httpx
import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from edgecache.common import errors, subjects, wire
from edgecache.common.client import EdgecacheClient
from edgecache.common.config import Config, NatsConfig, load_config
from edgecache.common.jetstream import ensure_state
from edgecache.common.runtime import connect_nats
from edgecache.launcher.natsauth import IDENTITIES, authorization_block, inbox_prefix
from edgecache.launcher.natsserver import NatsServer, free_port
from edgecache.launcher.nodekeys import load_or_create_node_keys, node_key_file
from edgecache.launcher.sitekey import SiteKey, load_or_create_user_key
from edgecache.launcher.status import read_status

MiB = 1024 * 1024
PASSWORDS = {name: secrets.token_hex(16) for name in IDENTITIES}
NODES = ("node-a", "node-b")  # cache nodes with their own nkeys


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-keys")


@pytest.fixture(scope="module")
def node_keys(keys_dir: Path) -> dict[str, SiteKey]:
    return load_or_create_node_keys(keys_dir, NODES)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, node_keys: dict[str, SiteKey]
) -> Iterator[NatsServer]:
    root = tmp_path_factory.mktemp("locked-nats")
    nkeys = {"cachenode": [k.public for k in node_keys.values()]}
    srv = NatsServer(
        root,
        authorization=authorization_block(PASSWORDS, nkeys=nkeys),
        sync_interval="always",
        monitor_port=free_port(),
    )
    srv.start(log_file=root / "nats-server.log")
    yield srv
    srv.stop()


def identity(server: NatsServer, name: str) -> NatsConfig:
    return NatsConfig(
        url=server.url, user=name, password=PASSWORDS[name], inbox_prefix=inbox_prefix(name)
    )


def node_identity(server: NatsServer, keys_dir: Path, node: str) -> NatsConfig:
    """Cache node ``node`` as ``edgecache up`` configures it: its own nkey, no password."""
    return NatsConfig(
        url=server.url,
        nkey_seed_file=str(node_key_file(keys_dir, node)),
        inbox_prefix=inbox_prefix("cachenode"),
    )


class Conn:
    """A connection as one identity that records the server's complaints."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def open(self, server: NatsServer, name: str, ident: NatsConfig | None = None) -> Conn:
        async def remember(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        ident = ident or identity(server, name)
        self.nc = await nats.connect(
            server.url,
            user=ident.user or None,
            password=ident.password or None,
            nkeys_seed=ident.nkey_seed_file or None,
            inbox_prefix=ident.inbox_prefix,
            error_cb=remember,
            allow_reconnect=False,
        )
        return self

    async def violations(self, at_least: int = 0) -> list[str]:
        """The permission violations so far: after a flush (the server says so before the
        PONG), and once nats-py has handed ``at_least`` of them to the error callback."""
        assert self.nc is not None
        await self.nc.flush()
        for _ in range(200):
            found = [e for e in self.errors if "permissions violation" in e]
            if len(found) >= at_least:
                return found
            await asyncio.sleep(0.01)
        return found


@pytest_asyncio.fixture(loop_scope="session")
async def as_identity(server: NatsServer) -> AsyncIterator:
    conns: list[Conn] = []

    async def open_as(name: str, ident: NatsConfig | None = None) -> Conn:
        conn = await Conn().open(server, name, ident)
        conns.append(conn)
        return conn

    # the state exists before any service starts, as `up` makes sure
    admin = await open_as("admin")
    await ensure_state(admin.nc.jetstream())
    yield open_as
    for conn in conns:
        await conn.nc.close()


async def test_anonymous_and_wrong_password_are_refused(server: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=1)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            server.url,
            user="gateway",
            password="guess",
            allow_reconnect=False,
            max_reconnect_attempts=1,
        )


async def test_status_says_what_to_do_when_refused(server: NatsServer, as_identity) -> None:
    with pytest.raises(
        click.ClickException, match="refused an anonymous client: pass the --data-dir"
    ):
        await read_status(server.url, timeout_s=2.0)
    admin = await read_status(identity(server, "admin"), timeout_s=5.0)  # the operator may
    assert admin.writeback.intents >= 0


# what each identity must not do: delete or read state it has no business with, forge
# another service's messages, read another identity's replies
DENIED_PUBLISH = {
    "gateway": [
        "$JS.API.STREAM.DELETE.WRITEBACK",
        "$KV.objects.x",
        "$JS.API.DIRECT.GET.KV_objects",
        "$JS.API.STREAM.INFO.KV_objects",
        "edgecache.writeback.0",
        "edgecache.events.object.clean",
        "edgecache.heartbeat.n1",
        "edgecache.chunk.n1.get",
    ],
    "platform": [
        "$JS.API.DIRECT.GET.KV_objects",
        "$JS.API.DIRECT.GET.KV_objects.$KV.objects.x",
        "$JS.API.STREAM.MSG.GET.KV_objects",
        "$JS.API.CONSUMER.CREATE.KV_objects",
        "$KV.buckets.x",
        "$JS.API.STREAM.PURGE.WRITEBACK",
        "edgecache.events.invalidate",
        "edgecache.chunk.n1.put",
    ],
    "cachenode": [
        "$JS.API.STREAM.DELETE.WRITEBACK",
        "$JS.API.STREAM.PURGE.KV_objects",
        "$JS.API.STREAM.UPDATE.KV_objects",
        "$JS.API.CONSUMER.DELETE.WRITEBACK.writeback-0",
        "$JS.ACK.WRITEBACK.writeback-0.1.1.1.1.1.1",
        "edgecache.writeback.retry.0.ab",
        "$KV.nodes.n1",
    ],
    "writeback": [
        "$JS.API.STREAM.DELETE.KV_objects",
        "$KV.uploads.x",
        "$KV.nodes.x",
        "s3.putobject",
        "edgecache.writeback.0",
        "edgecache.events.chunks.released",
        "_INBOX.gateway.x",
    ],
    "federator": [
        "$JS.API.STREAM.DELETE.KV_nodes",
        "$KV.objects.x",
        "s3.listbuckets",
        "edgecache.heartbeat.n1",
        "_INBOX.gateway.x",
    ],
}
DENIED_SUBSCRIBE = {
    "gateway": ["s3.>", "_INBOX.>", "_INBOX.platform.>", "edgecache.heartbeat.*", ">"],
    "platform": ["_INBOX.>", "_INBOX.gateway.>", "edgecache.events.invalidate", "$KV.objects.>"],
    "cachenode": ["_INBOX.gateway.>", "edgecache.heartbeat.*", "$JS.API.>"],
    "writeback": ["_INBOX.cachenode.>", "s3.>", "edgecache.writeback.>"],
    "federator": ["_INBOX.writeback.>", "s3.>", "$KV.nodes.>"],
}


@pytest.mark.parametrize("name", sorted(DENIED_PUBLISH))
async def test_each_identity_is_refused_outside_its_permissions(as_identity, name: str) -> None:
    conn = await as_identity(name)
    assert conn.nc is not None
    for subject in DENIED_PUBLISH[name]:
        await conn.nc.publish(subject, b"{}")
    for subject in DENIED_SUBSCRIBE[name]:
        await conn.nc.subscribe(subject)
    refused = await conn.violations(len(DENIED_PUBLISH[name]) + len(DENIED_SUBSCRIBE[name]))
    said = "\n".join(refused)
    for subject in DENIED_PUBLISH[name]:
        assert f'publish to "{subject.lower()}"' in said, (subject, refused)
    for subject in DENIED_SUBSCRIBE[name]:
        assert f'subscription to "{subject.lower()}"' in said, (subject, refused)
    # and its own inbox is its own
    await conn.nc.subscribe(f"{inbox_prefix(name)}.>")
    await asyncio.sleep(0.1)
    assert len(await conn.violations()) == len(refused)


async def test_a_node_nkey_has_the_cachenode_permissions_only(
    server: NatsServer, keys_dir: Path, as_identity
) -> None:
    conn = await as_identity("cachenode", node_identity(server, keys_dir, "node-a"))
    assert conn.nc is not None
    denied = DENIED_PUBLISH["cachenode"]
    for subject in denied:
        await conn.nc.publish(subject, b"{}")
    said = "\n".join(await conn.violations(len(denied)))
    for subject in denied:
        assert f'publish to "{subject.lower()}"' in said, subject


async def test_a_seed_the_server_does_not_list_is_refused(
    server: NatsServer, tmp_path: Path
) -> None:
    load_or_create_user_key(tmp_path / "stranger.nk")  # a well-formed key, just not listed
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            server.url,
            nkeys_seed=str(tmp_path / "stranger.nk"),
            allow_reconnect=False,
            max_reconnect_attempts=1,
        )


async def _raw_connect(server: NatsServer, public: str, signer: SiteKey) -> bytes:
    """What the server answers a CONNECT that claims nkey ``public`` and signs the server's
    nonce with ``signer``'s seed (then a PING): ``PONG`` if admitted, else ``-ERR``."""
    import nkeys

    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = json.loads((await reader.readline()).removeprefix(b"INFO "))
        pair = nkeys.from_seed(bytearray(signer.seed.encode()))
        sig = base64.urlsafe_b64encode(pair.sign(info["nonce"].encode())).rstrip(b"=")
        connect = {"verbose": False, "pedantic": False, "nkey": public, "sig": sig.decode()}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_one_node_key_cannot_log_in_as_another(
    server: NatsServer, node_keys: dict[str, SiteKey]
) -> None:
    a, b = node_keys["node-a"], node_keys["node-b"]
    assert a.public != b.public and a.seed != b.seed
    assert (await _raw_connect(server, b.public, b)).startswith(b"PONG")
    # node A's seed cannot sign for node B's public key
    assert b"Authorization Violation" in await _raw_connect(server, b.public, a)


async def test_the_platform_identity_cannot_read_kv(as_identity) -> None:
    conn = await as_identity("platform")
    js = conn.nc.jetstream(timeout=0.5)
    with pytest.raises(asyncio.TimeoutError):  # the server drops the request: no answer
        await js.key_value(subjects.KV_OBJECTS)
    assert any("$js.api.stream.info.kv_objects" in v for v in await conn.violations())


def service_config(server: NatsServer, name: str, root: Path, **sections: dict) -> Config:
    overrides: dict = {
        "data_dir": str(root),
        "nats": msgspec.to_builtins(identity(server, name)) | {"request_timeout_s": 20.0},
        "origin": {"kind": "file", "path": str(root.parent / "origin")},
        "federator": {"node_ttl_s": 10.0},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_config(env={}, overrides=overrides)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _get(client: EdgecacheClient, bucket: str, key: str) -> bytes:
    """GET as S3 clients do it: a 503 is tried again. (A read that meets the write-back
    moving its chunk from dirty to clean may get one; that race is not this test's.)"""
    for attempt in range(3):
        try:
            return (await client.get_object_bytes(bucket, key))[1]
        except errors.ServiceUnavailable:
            if attempt == 2:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def test_the_services_work_together_under_their_identities(
    server: NatsServer, as_identity, tmp_path: Path, keys_dir: Path, node_keys: dict
) -> None:
    """Federator, writeback and two cache nodes, each as its own identity (each node its
    own nkey, as ``edgecache up`` runs them), serve a platform client: chunks are replicated
    to the peer and read back from it, and the write-back reaches the origin, without a
    single permission violation."""
    from edgecache.cachenode.service import serve as cachenode
    from edgecache.federator.service import serve as federator
    from edgecache.writeback.service import serve as writeback

    stop = asyncio.Event()
    node = {"chunk_bytes": MiB, "heartbeat_s": 0.2, "replicas": 2}
    services = [
        federator(service_config(server, "federator", tmp_path / "fed"), stop),
        writeback(service_config(server, "writeback", tmp_path / "wb"), stop),
        *(
            cachenode(
                service_config(
                    server,
                    "cachenode",
                    tmp_path / n,
                    cachenode={**node, "node_id": n},
                    nats=msgspec.to_builtins(node_identity(server, keys_dir, n)),
                ),
                stop,
            )
            for n in NODES
        ),
    ]
    log = Path(server.store_dir) / "nats-server.log"
    log_before = log.stat().st_size  # the other tests' violations are on purpose
    tasks = [asyncio.create_task(s) for s in services]
    platform = await connect_nats(identity(server, "platform"), name="platform-test")
    try:
        client = EdgecacheClient(platform, timeout_s=20.0, window_frames=4)
        # both nodes know each other (the federator put their heartbeats in KV nodes)
        nodes_kv = await (await as_identity("admin")).nc.jetstream().key_value(subjects.KV_NODES)
        for _ in range(100):
            with contextlib.suppress(nats.js.errors.NoKeysError):
                if {"node-a", "node-b"} <= set(await nodes_kv.keys()):
                    break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # one membership refresh (heartbeat_s) on each node
        # two identities in the server: each node is logged in as its own nkey
        monitor = f"http://{server.host}:{server.monitor_port}/connz?auth=1&limit=1000"
        async with httpx.AsyncClient() as http:
            conns = (await http.get(monitor)).json()["connections"]
        by_name = {c.get("authorized_user") for c in conns if c.get("name") == "edgecache-cachenode"}
        assert by_name == {k.public for k in node_keys.values()}
        await client.request(wire.CreateBucket(bucket="locked"))
        data = os.urandom(3 * MiB + 5)
        info = await client.put_object(wire.PutObject(bucket="locked", key="k"), _one(data))
        assert info.size == len(data)
        for _ in range(4):  # the queue group spreads them over both nodes
            assert await _get(client, "locked", "k") == data
        listed = await client.request(wire.ListObjects(bucket="locked"))
        assert [o.key for o in listed.contents] == ["k"]
        in_origin = tmp_path / "origin" / "locked" / "k"
        for _ in range(200):
            if in_origin.is_file() and in_origin.read_bytes() == data:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the object never reached the origin")
    finally:
        stop.set()
        await platform.drain()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    for task in tasks:
        assert task.exception() is None
    new_lines = log.read_bytes()[log_before:].decode(errors="replace").splitlines()
    violations = [line for line in new_lines if "Violation" in line]
    assert not violations
