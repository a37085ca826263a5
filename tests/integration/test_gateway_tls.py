"""The gateway's HTTPS listener (:mod:`edgecache.gateway.tls`) serves the very app of the
HTTP one: memory-tier hits (the fast path in front of Litestar) and short-circuit reads
work over TLS as over HTTP. In front of the in-process ``cachenode`` (same host, so its
chunk files are readable), as ``serve_worker`` builds it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import uvicorn

from edgecache.common.config import Config
from edgecache.common.runtime import connect_nats
from edgecache.gateway.app import create_app
from edgecache.gateway.fastpath import with_fast_hits
from edgecache.gateway.invalidations import InvalidationListener
from edgecache.gateway.memtier import MemoryTier
from edgecache.gateway.service import uvicorn_config
from edgecache.gateway.tls import TlsListener, tls_options
from edgecache.gateway.workers import listening_socket
from edgecache.launcher.natsserver import free_port
from edgecache.launcher.tlscert import ensure_self_signed
from tests.fixtures.http import serving

AK, SK = "AKIAGATEWAYTLS", "gateway-tls-secret"
MiB = 1024 * 1024


async def test_memory_tier_and_short_circuit_hits_over_https(
    cachenode: Any, make_config: Callable[..., Config], bucket_name: str, tmp_path: Path
) -> None:
    certs = ensure_self_signed(tmp_path, ["127.0.0.1"])
    config = make_config(
        gateway={
            "access_key": AK,
            "secret_key": SK,
            "tls_port": free_port(),
            "tls_cert_file": str(certs.cert_file),
            "tls_key_file": str(certs.key_file),
        }
    )
    gw = config.gateway
    tier = MemoryTier(capacity_bytes=8 * MiB, gate_bytes=MiB)
    listener = InvalidationListener(tier)
    nc = await connect_nats(config.nats, name="test-gateway-tls", watchers=[listener])
    inner = create_app(config, nc, memtier=tier, invalidations=listener)
    app = with_fast_hits(inner)
    try:
        async with serving(app):  # the HTTP server: it runs the app's lifespan
            server = uvicorn.Server(
                uvicorn_config(app, "127.0.0.1", gw.tls_port, **tls_options(gw))
            )
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            tls = TlsListener(server, listening_socket("127.0.0.1", gw.tls_port))
            await tls.start()
            try:
                await asyncio.to_thread(
                    _through_https,
                    f"https://127.0.0.1:{gw.tls_port}",
                    str(certs.ca_file),
                    bucket_name,
                    tier,
                    inner,
                )
            finally:
                await tls.stop()
    finally:
        await nc.drain()


def _through_https(endpoint: str, ca_file: str, bucket: str, tier: MemoryTier, app: Any) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        verify=ca_file,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
        ),
    )
    s3.create_bucket(Bucket=bucket)
    small, big = os.urandom(4096), os.urandom(3 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="big", Body=big)

    # A GET fills the tier unless an invalidation of the object arrives after it began (the
    # PUT's own event may still be on its way on a loaded box): read until one is a hit.
    first = tier.stats.hits
    for _ in range(10):
        assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == small
        if tier.stats.hits > first:
            break
    assert tier.stats.hits > first, "no memory-tier hit over HTTPS"
    hits = tier.stats.hits
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == small
    assert s3.head_object(Bucket=bucket, Key="small")["ContentLength"] == len(small)
    assert tier.stats.hits == hits + 2, "memory-tier hits over HTTPS"

    local = app.state.gateway.local
    assert local is not None
    plans = local.completed
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    got = s3.get_object(Bucket=bucket, Key="big", Range="bytes=1048570-2097160")["Body"].read()
    assert got == big[1048570:2097161]
    assert local.completed >= plans + 2, "short-circuit reads over HTTPS"
