"""Zero-copy sends (edgecache.gateway.zerocopy): the gateway's HTTP protocol sends file spans
with os.sendfile for ``http.response.zerocopysend``, keeping uvicorn's state of the
exchange; a cold GET on the node's host sends its fill's landed spans that way and gives
the bytes the framed path gives."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
import pytest_asyncio

from edgecache.cachenode.service import start_node
from edgecache.common import wire
from edgecache.common.config import load_config
from edgecache.common.hostid import host_id
from edgecache.common.runtime import connect_nats
from edgecache.gateway.app import create_app
from edgecache.gateway.httpprotocol import protocol_class
from edgecache.gateway.service import asgi
from edgecache.gateway.shortcircuit import LocalReads
from edgecache.gateway.zerocopy import ZEROCOPY_SEND
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving
from tests.fixtures.nodes import wait_committed
from tests.fixtures.readthrough import origin_put

MiB = 1024 * 1024
AK, SK = "AKIAZEROCOPYTEST", "zero-copy-secret"
SPANS = [(0, 1000), (MiB - 5, MiB + 10), (3 * MiB, 4321)]  # (offset, count) of the file


# == the protocol, with an ASGI app of the test's own ===========================================
class FileApp:
    """Answers from one file: ``/whole`` (Content-Length, one zero-copy send of the rest of
    the file), ``/mixed`` (Content-Length, body pieces around zero-copy spans), ``/chunked``
    (no length: chunked framing), ``/big`` (a large sparse file, for a client that goes
    away). Records what each request saw."""

    def __init__(self, path: Path, big: Path) -> None:
        self.path, self.big = path, big
        self.extensions: list[dict[str, Any]] = []
        self.finished: asyncio.Queue[tuple[str, str]] = (
            asyncio.Queue()
        )  # (path, what receive() said)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.extensions.append(dict(scope.get("extensions") or {}))
        path = scope["path"]
        fd = os.open(self.big if path == "/big" else self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if path in ("/whole", "/big"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"%d" % size)],
                    }
                )
                await send({"type": ZEROCOPY_SEND, "file": fd, "more_body": False})
            elif path == "/mixed":
                length = 2 + sum(n for _, n in SPANS)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"%d" % length)],
                    }
                )
                await send({"type": "http.response.body", "body": b"<", "more_body": True})
                for offset, count in SPANS:
                    await send(
                        {
                            "type": ZEROCOPY_SEND,
                            "file": fd,
                            "offset": offset,
                            "count": count,
                            "more_body": True,
                        }
                    )
                await send({"type": "http.response.body", "body": b">", "more_body": False})
            else:  # /chunked
                await send({"type": "http.response.start", "status": 200, "headers": []})
                for i, (offset, count) in enumerate(SPANS):
                    last = i == len(SPANS) - 1
                    await send(
                        {
                            "type": ZEROCOPY_SEND,
                            "file": fd,
                            "offset": offset,
                            "count": count,
                            "more_body": not last,
                        }
                    )
        finally:
            os.close(fd)
        said = await asyncio.wait_for(receive(), 5)
        await self.finished.put((path, said["type"]))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    folder = tmp_path_factory.mktemp("zerocopy")
    data = os.urandom(4 * MiB)
    (folder / "data").write_bytes(data)
    with open(folder / "big", "wb") as f:
        f.truncate(512 * MiB)  # sparse: more than any socket buffer holds
    return folder / "data", folder / "big", data


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def file_app(files: tuple[Path, Path, bytes]) -> AsyncIterator[tuple[FileApp, int]]:
    app = FileApp(files[0], files[1])
    async with serving(app, http=protocol_class(), lifespan="off") as url:
        yield app, int(url.rsplit(":", 1)[1])


async def _exchange(port: int, request: bytes, answers: int) -> list[tuple[bytes, bytes]]:
    """Send ``request`` (one or more requests) on one connection; read ``answers`` answers
    by their Content-Length or chunked framing; HEAD answers have no body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    methods = [line.split(b" ")[0] for line in request.split(b"\r\n") if line.endswith(b"HTTP/1.1")]
    out = []
    try:
        writer.write(request)
        for method in methods[:answers]:
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            if method == b"HEAD":
                body = b""
            elif b"content-length" in fields:
                body = await reader.readexactly(int(fields[b"content-length"]))
            else:
                assert fields.get(b"transfer-encoding") == b"chunked"
                body = b""
                while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                    body += await reader.readexactly(size)
                    assert await reader.readexactly(2) == b"\r\n"
                assert await reader.readexactly(2) == b"\r\n"
            out.append((head, body))
    finally:
        writer.close()
    return out


def _expected_mixed(data: bytes) -> bytes:
    return b"".join(data[offset : offset + count] for offset, count in SPANS)


async def test_whole_mixed_and_chunked_answers_carry_the_files_bytes_on_one_connection(
    file_app: tuple[FileApp, int], files: tuple[Path, Path, bytes]
) -> None:
    app, port = file_app
    data = files[2]
    request = b"".join(
        b"GET /%s HTTP/1.1\r\nhost: x\r\n\r\n" % p for p in (b"whole", b"mixed", b"chunked")
    )
    (h1, whole), (h2, mixed), (h3, chunked) = await _exchange(port, request, 3)
    assert whole == data
    assert mixed == b"<" + _expected_mixed(data) + b">"
    assert chunked == _expected_mixed(data)
    assert b"transfer-encoding: chunked" in h3 and b"content-length" not in h3
    assert all(ZEROCOPY_SEND in e for e in app.extensions[-3:])  # offered on plain TCP
    for _ in range(3):  # each request completed: its receive() then says the exchange is over
        _, said = await asyncio.wait_for(app.finished.get(), 5)
        assert said == "http.disconnect"


async def test_a_head_sends_no_body_and_the_connection_carries_on(
    file_app: tuple[FileApp, int], files: tuple[Path, Path, bytes]
) -> None:
    app, port = file_app
    request = b"HEAD /whole HTTP/1.1\r\nhost: x\r\n\r\nGET /mixed HTTP/1.1\r\nhost: x\r\n\r\n"
    (head, body), (_, mixed) = await _exchange(port, request, 2)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % (4 * MiB) in head
    assert body == b""
    # had the HEAD sent the file's bytes, they would be read here as the next answer's head
    assert mixed == b"<" + _expected_mixed(files[2]) + b">"
    for _ in range(2):
        await asyncio.wait_for(app.finished.get(), 5)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_client_that_goes_away_mid_send_frees_everything(
    file_app: tuple[FileApp, int],
) -> None:
    app, port = file_app
    before = _open_fds()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
    got = 0
    while got < 2 * MiB:  # the answer is under way: the server waits for the socket now
        got += len(await asyncio.to_thread(sock.recv, 65536))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, with most of 512 MiB unsent
    path, said = await asyncio.wait_for(app.finished.get(), 10)  # the send returned
    assert (path, said) == ("/big", "http.disconnect")
    for _ in range(100):  # the socket's duplicate, the app's file and the connection: closed
        if _open_fds() <= before:
            break
        await asyncio.sleep(0.01)
    assert _open_fds() <= before


# == a cold GET through the gateway ===============================================================
class Gateway:
    def __init__(self, endpoint: str, app: Any) -> None:
        self.endpoint, self.app = endpoint, app

    @property
    def local(self) -> Any:
        return self.app.state.gateway.local

    def get(self, bucket: str, key: str, range_: str | None = None) -> bytes:
        s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )  # fmt: skip
        return s3.get_object(Bucket=bucket, Key=key, **({"Range": range_} if range_ else {}))[
            "Body"
        ].read()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Any, Gateway, Gateway]]:
    """(node, zero-copy gateway, framed gateway): one cache node with 1 MiB chunks and a
    file origin; a gateway on its host with the gateway's protocol, and one that streams."""
    data_dir: Path = tmp_path_factory.mktemp("zerocopy-stack")

    def config(**gateway: Any) -> Any:
        return load_config(
            env={},
            overrides={
                "data_dir": str(data_dir),
                "nats": {"url": nats_server.url, "request_timeout_s": 10.0},
                "cachenode": {"chunk_bytes": MiB, "node_id": f"zc-{secrets.token_hex(3)}"},
                "gateway": {"access_key": AK, "secret_key": SK, "memory_tier_bytes": 0, **gateway},
            },
        )

    async with AsyncExitStack() as stack:
        node = await start_node(config(), stack)
        gateways = []
        for gateway_config, options in (
            (config(), {"http": protocol_class()}),
            (config(short_circuit=False), {}),
        ):
            nc = await connect_nats(gateway_config.nats, name="test-zerocopy")
            stack.push_async_callback(nc.drain)
            app = create_app(gateway_config, nc)
            url = await stack.enter_async_context(serving(asgi(app), **options))
            gateways.append(Gateway(url, app))
        yield node, gateways[0], gateways[1]


RANGES = [
    None,
    "bytes=1000000-2500000",  # crosses two chunk boundaries
    f"bytes={MiB - 1}-{MiB}",  # the last byte of one chunk and the first of the next
    f"bytes={2 * MiB + 3}-",  # the tail, from inside a chunk
]


async def test_cold_gets_send_the_fills_files_and_match_the_framed_path(
    stack: tuple[Any, Gateway, Gateway], bucket_name: str
) -> None:
    node, files, framed = stack
    assert files.local is not None and framed.local is None
    data = os.urandom(3 * MiB + 12345)
    sent = files.local.file_bytes
    for i, range_ in enumerate(RANGES):  # each read cold: an object of its own, same bytes
        await origin_put(node, bucket_name, f"cold-{i}", data, content_type="x/y")
        await origin_put(node, bucket_name, f"framed-{i}", data, content_type="x/y")
        zero = await asyncio.to_thread(files.get, bucket_name, f"cold-{i}", range_)
        plain = await asyncio.to_thread(framed.get, bucket_name, f"framed-{i}", range_)
        assert zero == plain, range_
        if range_ is None:
            assert zero == data
    assert files.local.file_bytes > sent  # landed spans went out by sendfile
    assert files.local.fallbacks == 0 and files.local.resumed == 0


async def test_a_cold_reader_slower_than_its_fills_gets_their_bytes_not_a_verified_read(
    stack: tuple[Any, Gateway, Gateway], bucket_name: str
) -> None:
    node, files, _ = stack
    client = files.app.state.gateway.client
    data = os.urandom(12 * MiB + 99)
    await origin_put(node, bucket_name, "slow", data, content_type="x/y")
    local = LocalReads()
    seen: list[tuple[str, bool, bool]] = []  # (chunk id, committed, its fill running) per span
    spans: list[wire.FileSpan] = []

    def read_file(span: wire.FileSpan) -> AsyncIterator[bytes]:
        seen.append((span.chunk_id, span.committed, span.chunk_id in node.filler.active))
        spans.append(span)
        return local.read_span(span)

    request = wire.GetObject(bucket=bucket_name, key="slow", local_host=host_id())
    _, body = await client.get_object_or_plan(request, read_file=read_file)
    assert body is not None
    got = [await anext(body)]
    await wait_committed(node, bucket_name, "slow")  # every fill ended while the reader waited
    manifest = (await node.catalog.get(bucket_name, "slow")).manifest
    evicted = manifest.chunks[-2].id
    await node.store.delete([evicted])  # gone before the reader reached it
    fills = node.counters.fills
    got += [piece async for piece in body]
    assert b"".join(got) == data
    assert not any(committed for _, committed, _ in seen)  # every chunk came as its fill's bytes
    assert any(
        not running for chunk, _, running in seen if chunk != evicted
    )  # also after the fills ended
    assert node.counters.fills == fills + 1  # the evicted chunk was filled again, not followed
    await client.release_lease(spans[0])
    local.close()
    # a new read of the cached object verifies every chunk: a read plan
    reply, body = await client.get_object_or_plan(request, read_file=read_file)
    assert isinstance(reply, wire.ReadPlan) and body is None
    await client.release_lease(reply)
