"""PutObjectTagging, GetObjectTagging, DeleteObjectTagging on a cache node.

An object's tags live in its manifest (``wire.Manifest.tags``), changed only through the
catalog (:meth:`~edgecache.common.catalog.Catalog.retag`): a tag change is a change readers
see (``x-amz-tagging-count``), so it is invalidated like any other. The version and its
chunks stay as they are. A version not yet in the origin takes its tags with its bytes; a
version already there is marked ``tags_state="dirty"`` and an ``ObjectTagged`` intent takes
the tags to the origin (the writeback service), after which the manifest is clean again.

An object read through from the origin brings its tags along (the origin's
``head_object`` or ``get_tags``, when the manifest is adopted), so a manifest that expired
and was adopted again still has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from edgecache.cachenode import readthrough
from edgecache.common import errors, wire
from edgecache.common.names import validate_key

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode

__all__ = ["delete_object_tagging", "get_object_tagging", "put_object_tagging", "set_tags"]

MAX_ROUNDS = 8  # compare-and-set attempts against concurrent changes of the same key


async def get_object_tagging(node: CacheNode, request: wire.GetObjectTagging) -> wire.Tagging:
    """The tags of the current version (empty if it has none).

    Raises:
        NoSuchBucket, NoSuchKey, ServiceUnavailable (not cached and the origin is down).
    """
    validate_key(request.bucket, request.key)
    manifest = await readthrough.lookup(node, request.bucket, request.key)
    return wire.Tagging(tags=manifest.tags)


async def put_object_tagging(node: CacheNode, request: wire.PutObjectTagging) -> wire.Ok:
    """Replace the tags of the current version with ``request.tags`` (validated by the
    gateway). Raises: as :func:`set_tags`."""
    await set_tags(node, request.bucket, request.key, request.tags)
    return wire.Ok()


async def delete_object_tagging(node: CacheNode, request: wire.DeleteObjectTagging) -> wire.Ok:
    """Remove every tag of the current version. Raises: as :func:`set_tags`."""
    await set_tags(node, request.bucket, request.key, {})
    return wire.Ok()


async def set_tags(node: CacheNode, bucket: str, key: str, tags: dict[str, str]) -> wire.Manifest:
    """Make ``tags`` the tags of the current version of ``bucket/key`` (adopting it from the
    origin first if it has no manifest), by compare-and-set on its manifest; the change is
    invalidated before this returns, and its intent appended when the version is clean.

    Returns:
        The manifest written (federated: without its tag stamp).

    Raises:
        NoSuchBucket, NoSuchKey: no such object (or it was deleted).
        ServiceUnavailable: the key kept changing under the change (``MAX_ROUNDS``), or the
            object is not cached and the origin is unreachable.
    """
    validate_key(bucket, key)
    for _ in range(MAX_ROUNDS):
        await readthrough.lookup(node, bucket, key)  # NoSuchKey / NoSuchBucket; adopts
        found = await node.catalog.get(bucket, key)
        if found is None:
            continue  # a clean manifest expired or was purged in between: adopt again
        current, revision = found
        if current.deleted:
            raise errors.NoSuchKey(resource=f"{bucket}/{key}")
        # a version already in the origin needs its own intent; a dirty one takes its tags
        # along when it is written back; another site's version has its tags written by
        # that site (federation: the change reaches it through the change log)
        writes = node.catalog.writes_tags_of(current)
        tags_state = "dirty" if current.state == "clean" and writes else current.tags_state
        tagged = msgspec.structs.replace(current, tags=dict(tags), tags_state=tags_state)
        if await node.catalog.retag(tagged, revision):
            return tagged
    raise errors.ServiceUnavailable(f"{bucket}/{key} kept changing; try again", retry_after_s=1)
