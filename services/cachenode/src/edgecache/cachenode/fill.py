"""Finding an object's current version and reading its bytes.

Cached objects are read from chunks; objects only in the origin are read through
(issue: read-through caching), filling chunks as they stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edgecache.cachenode import chunks
from edgecache.common import errors, wire

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode

__all__ = ["lookup", "read"]


async def lookup(node: CacheNode, bucket: str, key: str) -> wire.Manifest:
    """The current version of ``bucket/key``.

    Raises:
        NoSuchBucket: the bucket does not exist.
        NoSuchKey: no such object, or it was deleted.
    """
    found = await node.get_manifest(bucket, key)
    if found is not None and not found[0].deleted:
        return found[0]
    await node.require_bucket(bucket)
    raise errors.NoSuchKey(resource=f"{bucket}/{key}")


def read(node: CacheNode, manifest: wire.Manifest, first: int, last: int) -> AsyncIterator[bytes]:
    """Bytes ``first..last`` (inclusive) of ``manifest``'s version, in order.

    Raises:
        ChunkMissing: a chunk is on no reachable node.
    """
    return chunks.read_range(node, manifest, first, last)
