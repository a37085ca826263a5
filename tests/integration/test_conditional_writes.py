"""Conditional writes are atomic across cache nodes: two catalogs (as two nodes have, each on
its own NATS connection) race ``commit_if`` on one key against a real nats-server's KV, and
exactly one wins and the loser changes nothing."""

from __future__ import annotations

import asyncio
import secrets
import time

import nats
import pytest

from edgecache.common import errors, wire
from edgecache.common.catalog import Catalog
from edgecache.common.jetstream import ensure_state


def _version(bucket: str, key: str, body: str) -> tuple[wire.Manifest, wire.ObjectWritten]:
    version = secrets.token_hex(8)
    manifest = wire.Manifest(
        bucket=bucket,
        key=key,
        version=version,
        size=len(body),
        etag=body,
        last_modified=time.time(),
    )
    intent = wire.ObjectWritten(
        id=version, at_ns=time.time_ns(), bucket=bucket, key=key, version=version
    )
    return manifest, intent


async def test_racing_conditional_writes_through_two_catalogs(nats_server) -> None:
    connections = [await nats.connect(nats_server.url) for _ in range(2)]
    try:
        catalogs = []
        for nc in connections:
            catalogs.append(Catalog(nc, await ensure_state(nc.jetstream())))
        bucket, key = f"cond-{secrets.token_hex(4)}", "lock"
        create = wire.WriteCondition(if_none_match=True)
        # both read "no entry", then both try to create: the KV revision decides
        seen = [await c.get(bucket, key) for c in catalogs]
        attempts = [
            c.commit_if(*_version(bucket, key, f"w{i}"), create, seen[i])
            for i, c in enumerate(catalogs)
        ]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == [
            "ConditionalRequestConflict",
            "NoneType",
        ]
        winner = outcomes.index(None)
        current = await catalogs[1 - winner].get(bucket, key)
        assert current is not None and current.manifest.etag == f"w{winner}"
        # a fresh read now fails the condition itself (412), and If-Match replaces by ETag
        with pytest.raises(errors.PreconditionFailed):
            await catalogs[0].commit_if(*_version(bucket, key, "late"), create, current)
        with pytest.raises(errors.PreconditionFailed):
            await catalogs[0].commit_if(
                *_version(bucket, key, "x"), wire.WriteCondition(if_match='"other"'), current
            )
        await catalogs[0].commit_if(
            *_version(bucket, key, "next"), wire.WriteCondition(if_match=f'"w{winner}"'), current
        )
        with pytest.raises(errors.ConditionalRequestConflict):  # current is stale by now
            await catalogs[1].commit_if(
                *_version(bucket, key, "stale"),
                wire.WriteCondition(if_match=f'"w{winner}"'),
                current,
            )
        with pytest.raises(errors.NoSuchKey):
            await catalogs[0].commit_if(
                *_version(bucket, "absent", "y"), wire.WriteCondition(if_match="*"), None
            )
        final = await catalogs[0].get(bucket, key)
        assert final is not None and final.manifest.etag == "next"
    finally:
        for nc in connections:
            await nc.close()
