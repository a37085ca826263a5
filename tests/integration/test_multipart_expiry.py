"""Abandoned multipart uploads are aborted after ``cachenode.multipart_max_age_s`` and their
chunks released; the clock is moved forward rather than waited for."""

from __future__ import annotations

import time

import pytest
from nats.js.errors import KeyNotFoundError

from edgecache.cachenode import multipart
from edgecache.common import errors, kvkeys, wire
from tests.fixtures.readthrough import one, readthrough_node

AGE_S = 60.0


async def test_abandoned_uploads_are_aborted_and_their_chunks_released(
    make_config, nc, bucket_name, monkeypatch
) -> None:
    async with readthrough_node(make_config, nc, "mpu", multipart_max_age_s=AGE_S) as (
        node,
        client,
    ):
        grace_s = node.config.nats.request_timeout_s
        await client.request(wire.CreateBucket(bucket=bucket_name))
        before = set(node.store.dirty_ids())
        old = await client.request(wire.CreateMultipartUpload(bucket=bucket_name, key="old"))
        part = wire.UploadPart(
            bucket=bucket_name, key="old", upload_id=old.upload_id, part_number=1, size=3
        )
        await client.put_object(part, one(b"abc"))
        old_chunks = set(node.store.dirty_ids()) - before
        assert old_chunks

        started = time.time()
        monkeypatch.setattr(multipart, "now", lambda: started + AGE_S + 1)
        # past its age: no more parts nor completion, though not aborted yet (grace)
        with pytest.raises(errors.NoSuchUpload):
            await client.put_object(part, one(b"abc"))
        await multipart.abort_abandoned(node)  # (other tests' uploads in the shared KV may go)
        assert await _recorded(node, old.upload_id)  # its grace is not over: kept
        listed = await client.request(wire.ListMultipartUploads(bucket=bucket_name))
        assert listed.uploads == []  # as S3 lists it: gone
        young = await client.request(wire.CreateMultipartUpload(bucket=bucket_name, key="young"))

        monkeypatch.setattr(multipart, "now", lambda: started + AGE_S + grace_s + 2)
        assert await multipart.abort_abandoned(node) >= 1
        assert not await _recorded(node, old.upload_id)
        assert not any(node.store.has(c) for c in old_chunks)  # deleted here, released elsewhere
        listed = await client.request(wire.ListMultipartUploads(bucket=bucket_name))
        assert [u.upload_id for u in listed.uploads] == [young.upload_id]
        with pytest.raises(errors.NoSuchUpload):
            await client.request(
                wire.AbortMultipartUpload(bucket=bucket_name, key="old", upload_id=old.upload_id)
            )
        assert await multipart.abort_abandoned(node) == 0


async def _recorded(node, upload_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether KV ``uploads`` still holds the upload's record."""
    try:
        await node.state.uploads.get(kvkeys.upload_key(upload_id))
    except KeyNotFoundError:
        return False
    return True
