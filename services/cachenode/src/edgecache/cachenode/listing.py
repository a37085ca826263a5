"""ListObjects (v1 and v2): the origin's listing merged with writes not yet persisted.

The overlay is every **dirty** manifest under the listed prefix (puts and tombstones),
which the catalog reads from its dirty index, not by scanning the bucket's manifests;
clean objects come from the origin, which is their source of truth. Keys are
merged in UTF-8 binary order; a dirty put replaces the origin's entry, a dirty tombstone
hides it. Delimiters roll keys up into common prefixes after the merge; with a delimiter
the origin is asked for one level (``Origin.iter_level``: its objects and common prefixes),
so a listing at the top of a large bucket does not read the whole bucket. An origin common
prefix under which the overlay holds only tombstones is checked key by key, and dropped if
they hide every key under it.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from edgecache.common import errors, wire
from edgecache.common.tokens import decode_token, encode_token
from edgecache.origin.base import common_prefix

if TYPE_CHECKING:
    from edgecache.cachenode.node import CacheNode

__all__ = ["list_objects"]


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


async def _overlay(node: CacheNode, bucket: str, prefix: str, after: str) -> list[wire.Manifest]:
    """Dirty manifests of ``bucket`` under ``prefix`` sorting after ``after``, in key order."""
    found: list[wire.Manifest] = []
    async for m in node.catalog.dirty(bucket, prefix):
        if _utf8(m.key) > _utf8(after):
            found.append(m)
    found.sort(key=lambda m: _utf8(m.key))
    return found


async def _merged(
    node: CacheNode,
    bucket: str,
    prefix: str,
    delimiter: str,
    after: str,
    overlay: list[wire.Manifest],
) -> AsyncIterator[wire.ObjectSummary | str]:
    """Every visible object under ``prefix`` after ``after``, in UTF-8 binary key order;
    with ``delimiter``, the origin's common prefixes (``str``) in their place too."""

    async def from_overlay() -> AsyncIterator[tuple[bytes, int, wire.ObjectSummary | str | None]]:
        for m in overlay:  # rank 0: wins over the origin's entry of the same key
            summary = (
                None
                if m.deleted
                else wire.ObjectSummary(
                    key=m.key, size=m.size, etag=m.etag, last_modified=m.last_modified
                )
            )
            yield _utf8(m.key), 0, summary

    async def from_origin() -> AsyncIterator[tuple[bytes, int, wire.ObjectSummary | str | None]]:
        try:
            async for o in node.origin.iter_level(
                bucket, prefix=prefix, delimiter=delimiter, start_after=after
            ):
                if isinstance(o, str):  # rank 2: a common prefix never replaces a key
                    yield _utf8(o), 2, o
                    continue
                summary = wire.ObjectSummary(
                    key=o.key, size=o.size, etag=o.etag, last_modified=o.last_modified
                )
                yield _utf8(o.key), 1, summary
        except errors.NoSuchBucket:
            return  # created here, not yet in the origin: the write-back will create it

    last: bytes | None = None
    async for sort_key, rank, value in _amerge(from_overlay(), from_origin()):
        if rank == 2:
            yield value
            continue
        if sort_key == last:
            continue
        last = sort_key
        if value is not None:  # None: a pending delete hides the key
            yield value


async def _prefix_visible(
    node: CacheNode, bucket: str, common: str, after: str, overlay: list[wire.Manifest]
) -> bool:
    """Whether the origin's common prefix ``common`` still holds a visible key after
    ``after``: the overlay's tombstones under it may hide every one of its keys."""
    under = [m for m in overlay if m.key.startswith(common)]
    if not under or any(not m.deleted for m in under):
        return True
    hidden = {m.key for m in under}
    async for o in node.origin.iter_objects(bucket, prefix=common, start_after=after):
        if o.key not in hidden:
            return True
    return False


async def _amerge(*iterators: AsyncIterator[tuple]) -> AsyncIterator[tuple]:  # type: ignore[type-arg]
    """Merge sorted async iterators of ``(sort_key, rank, value)``."""
    heads: list[tuple] = []  # type: ignore[type-arg]
    its = list(iterators)
    for i, it in enumerate(its):
        try:
            item = await anext(it)
            heapq.heappush(heads, (item[0], item[1], i, item))
        except StopAsyncIteration:
            pass
    while heads:
        _, _, i, item = heapq.heappop(heads)
        yield item
        try:
            nxt = await anext(its[i])
            heapq.heappush(heads, (nxt[0], nxt[1], i, nxt))
        except StopAsyncIteration:
            pass


async def list_objects(node: CacheNode, request: wire.ListObjects) -> wire.ListObjectsResult:
    """One page of the merged listing.

    Raises:
        NoSuchBucket: the bucket does not exist.
        InvalidArgument: a bad continuation token or a negative ``max_keys``.
    """
    await node.require_bucket(request.bucket)
    if request.max_keys < 0:
        raise errors.InvalidArgument("max-keys must be a non-negative integer")
    after = max(
        [request.start_after, request.marker]
        + ([decode_token(request.continuation_token)] if request.continuation_token else []),
        key=_utf8,
    )
    prefix, delimiter = request.prefix, request.delimiter
    contents: list[wire.ObjectSummary] = []
    prefixes: list[str] = []
    if request.max_keys == 0:
        return wire.ListObjectsResult(contents=[], is_truncated=False)
    last_marker = ""
    truncated = False
    # resuming after a common prefix: skip every key under it
    skip_under = (
        after if delimiter and after.endswith(delimiter) and after.startswith(prefix) else ""
    )
    overlay = await _overlay(node, request.bucket, prefix, after)
    async for item in _merged(node, request.bucket, prefix, delimiter, after, overlay):
        if isinstance(item, str):  # a common prefix of the origin
            key = common = item
            if skip_under and key.startswith(skip_under):
                continue
            if not await _prefix_visible(node, request.bucket, common, after, overlay):
                continue
        else:
            summary, key = item, item.key
            if skip_under and key.startswith(skip_under):
                continue
            common = common_prefix(key, prefix, delimiter)
        if common and prefixes and prefixes[-1] == common:
            continue
        if len(contents) + len(prefixes) >= request.max_keys:
            truncated = True
            break
        if common:
            prefixes.append(common)
            last_marker = common
            skip_under = common
        else:
            contents.append(summary)
            last_marker = key
    return wire.ListObjectsResult(
        contents=contents,
        common_prefixes=prefixes,
        is_truncated=truncated,
        next_token=encode_token(last_marker) if truncated else "",
        next_marker=last_marker if truncated else "",
    )
