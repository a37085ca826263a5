"""Memory-tier hits written whole by the gateway's own HTTP protocol
(:mod:`edgecache.gateway.wholeresponse`), offered to the fast path by the protocol before
the ASGI layers (:func:`edgecache.gateway.fastpath.hit_answerer`), and the connection
deadlines kept by one sweep (:mod:`edgecache.gateway.deadlines`): one gateway with its
memory tier in front of a real cache node (session nats-server, file origin), served by
uvicorn with the gateway's protocol as the service serves it. One stack for the module."""

from __future__ import annotations

import asyncio
import gc
import http.client
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
import pytest_asyncio

from edgecache.cachenode.service import start_node
from edgecache.common.config import load_config
from edgecache.common.runtime import connect_nats
from edgecache.gateway import deadlines
from edgecache.gateway.app import create_app
from edgecache.gateway.fastpath import HITS_TRIED, hit_answerer
from edgecache.gateway.httpprotocol import protocol_class
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.memtier import MemoryTier
from edgecache.gateway.service import asgi
from edgecache.gateway.wholeresponse import WholeResponse
from edgecache.launcher.natsserver import NatsServer
from tests.fixtures.http import serving

AK, SK = "AKIAWHOLEANSWERS", "whole-answers-secret"
KEEP_ALIVE_S = 1  # uvicorn's idle time between requests, whole seconds
# per response: ids, and the Date uvicorn adds (it may change between two answers)
_PER_RESPONSE = {"x-amz-request-id", "x-amz-id-2", "date"}


@dataclass
class Gateway:
    host: str
    port: int
    tier: MemoryTier
    # (method, path, whether the fast path had been tried) of each request that reached
    # the ASGI app in front of the S3 app; the protocol answers hits before it
    passed: list[tuple[str, str, bool]]

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.host}:{self.port}",
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
            ),
        )

    def target(self, bucket: str, key: str, **params: Any) -> str:
        """A presigned GetObject (or HeadObject) URL's path and query."""
        method = params.pop("method", "get_object")
        url = self.s3().generate_presigned_url(
            method, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=3600
        )
        return "/" + url.split("/", 3)[3]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gateway(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    data_dir: Path = tmp_path_factory.mktemp("whole")
    config = load_config(
        env={},
        overrides={
            "data_dir": str(data_dir),
            "nats": {"url": nats_server.url, "request_timeout_s": 10.0},
            "cachenode": {"chunk_bytes": 1024 * 1024, "node_id": f"whole-{secrets.token_hex(3)}"},
            "gateway": {"access_key": AK, "secret_key": SK},
        },
    )
    tier = MemoryTier(capacity_bytes=8 * 1024 * 1024, gate_bytes=1024 * 1024)
    listener = InvalidationListener(tier)
    async with AsyncExitStack() as stack:
        await start_node(config, stack)
        nc = await connect_nats(config.nats, name="test-whole", watchers=[listener])
        stack.push_async_callback(nc.drain)
        litestar = create_app(config, nc, memtier=tier, invalidations=listener)
        served = asgi(litestar)
        passed: list[tuple[str, str, bool]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                tried = HITS_TRIED in (scope.get("extensions") or {})
                passed.append((scope["method"], scope["path"], tried))
            await served(scope, receive, send)

        protocol = protocol_class(hits=hit_answerer(litestar))
        url = await stack.enter_async_context(
            serving(app, http=protocol, timeout_keep_alive=KEEP_ALIVE_S)
        )
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield Gateway(host, int(port), tier, passed)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stored(gateway: Gateway) -> tuple[str, str, bytes]:
    """``(bucket, key, body)`` of an object with stored headers and metadata (boto3 runs in
    a thread: the gateway serves on this event loop)."""
    bucket, key = f"whole-{secrets.token_hex(4)}", "dir/obj ü.bin"
    body = secrets.token_bytes(5000)

    def put() -> None:
        s3 = gateway.s3()
        s3.create_bucket(Bucket=bucket)
        s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="text/x-whole",
            Metadata={"colour": "blue"}, CacheControl="max-age=60", ChecksumAlgorithm="CRC32",
        )  # fmt: skip

    await asyncio.to_thread(put)
    return bucket, key, body


def _get(
    conn: http.client.HTTPConnection, target: str, headers: dict[str, str] | None = None,
    method: str = "GET", body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _stable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in _PER_RESPONSE}


def _read_answer(sock: socket.socket, pending: bytearray) -> tuple[bytes, bytes]:
    """One answer from ``sock`` (head, body) by its Content-Length; ``pending`` holds what
    was read past it."""
    while b"\r\n\r\n" not in pending:
        piece = sock.recv(65536)
        assert piece, "the connection closed before a whole answer"
        pending += piece
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = int(next(
        line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    ))  # fmt: skip
    pending[:] = rest
    while len(pending) < length:
        piece = sock.recv(65536)
        assert piece, "the connection closed in a body"
        pending += piece
    body = bytes(pending[:length])
    del pending[:length]
    return head, body


async def test_a_hit_answers_what_a_miss_answers(
    gateway: Gateway, stored: tuple[str, str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, key, body = stored
    written: list[int] = []  # answers written whole
    whole = WholeResponse.__call__

    async def counted(self: WholeResponse, status: int, lines: bytes, body: bytes) -> None:
        written.append(status)
        await whole(self, status, lines, body)

    monkeypatch.setattr(WholeResponse, "__call__", counted)

    def run() -> None:
        conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
        gateway.tier.invalidate(bucket, key)  # the next GET is a miss that fills the tier
        hits = gateway.tier.stats.hits
        target = gateway.target(bucket, key)  # presigned: the client sends no other header
        miss = _get(conn, target)
        assert gateway.tier.stats.hits == hits
        hit = _get(conn, target)  # the same connection: still usable after each
        assert gateway.tier.stats.hits == hits + 1
        assert miss[0] == hit[0] == 200 and miss[2] == hit[2] == body
        assert _stable(hit[1]) == _stable(miss[1])
        assert hit[1]["x-amz-request-id"] != miss[1]["x-amz-request-id"]
        assert "date" in hit[1] and "date" in miss[1]  # uvicorn's default header, both ways
        assert hit[1]["content-type"] == "text/x-whole" and hit[1]["x-amz-meta-colour"] == "blue"
        assert "x-amz-checksum-crc32" not in hit[1]
        assert written == [200]  # the hit, in one write; the miss through the framework
        conn.close()
        # boto3 signs x-amz-checksum-mode: the other header lines a version remembers
        s3 = gateway.s3()
        gateway.tier.invalidate(bucket, key)
        answers = [s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED") for _ in range(2)]
        assert gateway.tier.stats.hits == hits + 2 and written == [200, 200]
        miss_headers, hit_headers = (a["ResponseMetadata"]["HTTPHeaders"] for a in answers)
        assert _stable(hit_headers) == _stable(miss_headers)
        assert hit_headers["x-amz-checksum-crc32"] and answers[1]["Body"].read() == body

    await asyncio.to_thread(run)


async def test_heads_ranges_conditions_and_overrides_on_one_connection(
    gateway: Gateway, stored: tuple[str, str, bytes]
) -> None:
    bucket, key, body = stored

    def run() -> None:
        conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
        _get(conn, gateway.target(bucket, key))  # held from here on
        hits = gateway.tier.stats.hits
        status, headers, got = _get(
            conn, gateway.target(bucket, key, method="head_object"), method="HEAD"
        )
        assert (status, headers["content-length"], got) == (200, str(len(body)), b"")
        status, headers, got = _get(conn, gateway.target(bucket, key), {"Range": "bytes=10-19"})
        assert (status, got, headers["content-range"]) == (
            206,
            body[10:20],
            f"bytes 10-19/{len(body)}",
        )
        etag = headers["etag"]
        status, headers, got = _get(conn, gateway.target(bucket, key), {"If-None-Match": etag})
        assert (status, got, headers["etag"]) == (304, b"", etag)
        target = gateway.target(bucket, key, ResponseContentType="text/plain")
        status, headers, got = _get(conn, target)
        assert (status, headers["content-type"], got) == (200, "text/plain", body)
        status, headers, got = _get(conn, gateway.target(bucket, key))
        assert (status, headers["content-type"], got) == (200, "text/x-whole", body)
        assert gateway.tier.stats.hits - hits == 5
        conn.close()

    await asyncio.to_thread(run)


async def test_pipelined_hits_a_get_with_a_body_and_connection_close(
    gateway: Gateway, stored: tuple[str, str, bytes]
) -> None:
    bucket, key, body = stored

    def run() -> None:
        target = gateway.target(bucket, key).encode()
        host = f"Host: {gateway.host}:{gateway.port}\r\n".encode()
        get = b"GET " + target + b" HTTP/1.1\r\n" + host + b"\r\n"
        with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
            sock.sendall(get)
            pending = bytearray()
            _read_answer(sock, pending)  # held from here on
            hits = gateway.tier.stats.hits
            # three requests in one segment; the second carries a body (answered through
            # the keep-alive check, :mod:`edgecache.gateway.keepalive`)
            with_body = get.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
            sock.sendall(get + with_body + get)
            for _ in range(3):
                head, got = _read_answer(sock, pending)
                assert head.startswith(b"HTTP/1.1 200 ") and got == body
                assert b"connection: close" not in head.lower()
            assert gateway.tier.stats.hits - hits == 3
            sock.sendall(get.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            head, got = _read_answer(sock, pending)
            assert b"\r\nconnection: close" in head.lower() and got == body
            assert sock.recv(1) == b""  # and the gateway closed it

    await asyncio.to_thread(run)


async def test_an_idle_keep_alive_connection_is_closed_by_the_sweep(
    gateway: Gateway, stored: tuple[str, str, bytes]
) -> None:
    bucket, key, body = stored

    def run() -> float:
        get = (
            b"GET " + gateway.target(bucket, key).encode() + b" HTTP/1.1\r\n"
            + f"Host: {gateway.host}:{gateway.port}\r\n\r\n".encode()
        )  # fmt: skip
        with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
            sock.sendall(get)
            assert _read_answer(sock, bytearray())[1] == body
            answered = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server, not by the 10 s socket timeout
            return time.monotonic() - answered

    idle = await asyncio.to_thread(run)
    assert KEEP_ALIVE_S - 0.05 <= idle < KEEP_ALIVE_S + 2


async def test_many_connections_share_one_sweep(gateway: Gateway) -> None:
    """Deadlines are numbers, not timers: 200 open connections add no timer of their own
    (the loop's scheduled timers do not grow with them)."""
    loop = asyncio.get_running_loop()
    assert hasattr(loop, "_scheduled"), "the test loop must be asyncio's: its _scheduled heap counts timers"
    before = len(loop._scheduled)  # noqa: SLF001

    def hold() -> list[socket.socket]:
        return [
            socket.create_connection((gateway.host, gateway.port), timeout=10) for _ in range(200)
        ]

    sweeper = deadlines.sweeper(loop, 1.0)
    socks = await asyncio.to_thread(hold)
    try:
        deadline = time.monotonic() + 10
        while len(sweeper._members) < 200 and time.monotonic() < deadline:  # noqa: SLF001
            await asyncio.sleep(0.01)  # the server accepts them
        assert len(sweeper._members) >= 200  # noqa: SLF001
        assert len(loop._scheduled) - before < 10  # noqa: SLF001
    finally:
        for sock in socks:
            sock.close()


async def test_the_protocol_answers_hits_before_the_asgi_layers(
    gateway: Gateway, stored: tuple[str, str, bytes]
) -> None:
    """A hit never reaches the ASGI app in front of the S3 app; a miss and a read with a
    body reach it once, the miss marked as tried (so the fast path there does not try
    again), the read with a body not offered to the fast path at all."""
    bucket, key, body = stored
    target = gateway.target(bucket, key)
    head_target = gateway.target(bucket, key, method="head_object")
    other = f"other-{secrets.token_hex(3)}"
    await asyncio.to_thread(gateway.s3().put_object, Bucket=bucket, Key=other, Body=b"x" * 10)
    other_target = gateway.target(bucket, other)

    def run() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
        try:
            _get(conn, target)  # fills the tier if an earlier test did not
            gateway.passed.clear()
            answers = [_get(conn, target), _get(conn, head_target, method="HEAD")]
            answers.append(_get(conn, other_target))  # a miss: fills the tier
            answers.append(_get(conn, other_target))  # now a hit
            answers.append(_get(conn, target, body=b"abc"))  # a GET with a body
            return [(status, data) for status, _, data in answers]
        finally:
            conn.close()

    answers = await asyncio.to_thread(run)
    assert answers[0] == (200, body) and answers[1] == (200, b"")
    assert answers[2] == (200, b"x" * 10) and answers[3] == (200, b"x" * 10)
    assert answers[4] == (200, body)
    assert [p for p in gateway.passed if p[1].startswith(f"/{bucket}/")] == [
        ("GET", f"/{bucket}/{other}", True),
        ("GET", f"/{bucket}/{key}", False),
    ]


async def test_hits_leave_no_reference_cycles(gateway: Gateway, stored: tuple[str, str, bytes]) -> None:
    """A hit's objects are freed by reference counting alone: with the cyclic collector off,
    200 hits leave (next to) nothing for it. When each request was a cycle (scope ->
    WholeResponse -> uvicorn's exchange -> scope), collections cost about a tenth of a
    worker and paused it for up to 0.2 s."""
    bucket, key, body = stored
    target = gateway.target(bucket, key).encode()
    get = b"GET " + target + b" HTTP/1.1\r\nHost: " + f"{gateway.host}:{gateway.port}".encode() + b"\r\n\r\n"
    hits = 200

    def run(sock: socket.socket, n: int) -> None:
        pending = bytearray()
        for _ in range(n):
            sock.sendall(get)
            head, got = _read_answer(sock, pending)
            assert head.startswith(b"HTTP/1.1 200") and got == body

    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        await asyncio.to_thread(run, sock, 5)  # held, and every lazy start-up done
        before = gateway.tier.stats.hits
        gc.collect()
        gc.disable()
        try:
            await asyncio.to_thread(run, sock, hits)
            found = gc.collect()
        finally:
            gc.enable()
    assert gateway.tier.stats.hits - before == hits
    assert found < hits // 4, f"{found} objects in reference cycles after {hits} hits"
