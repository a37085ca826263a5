"""Start-up recovery of the chunk store: rebuild what is on disk after a restart or a crash.

:func:`scan` runs once, in a thread, when :meth:`ChunkStore.open
<edgecache.cachenode.chunkstore.ChunkStore.open>` is first awaited. It settles what a crash
may have left half-way (see :mod:`edgecache.cachenode.chunkformat` for the layout):

- temp files in ``tmp/`` were never published: deleted;
- the same id both in ``dirty/`` and ``clean/`` (a re-commit as dirty interrupted by a crash):
  the dirty copy is kept, the clean one deleted;
- a file too short to hold a trailer and a byte was never published by us: deleted;
- a name that is not a chunk id, or not in its shard, is not ours: logged and left alone.

Contents are not read or verified here (reads do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from edgecache.cachenode.chunkformat import (
    SHARDS,
    STATES,
    TRAILER,
    is_chunk_id,
    shard,
)
from edgecache.common.durable import fsync_dir

__all__ = ["Found", "scan"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Found:
    """A committed chunk found on disk."""

    chunk_id: str
    dirty: bool
    size: int  # payload bytes
    access_ns: int  # the later of its access and modification times, ns since the epoch


def scan(root: Path) -> tuple[list[Found], int]:
    """Create the layout, empty ``tmp/``, list chunks. Returns (chunks, temp files removed).

    Raises:
        OSError: a directory cannot be created, listed or fsynced.
    """
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for state in STATES:
        for shard_name in SHARDS:
            (root / state / shard_name).mkdir(parents=True, exist_ok=True)
    removed = 0
    with os.scandir(tmp) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    found: dict[str, Found] = {}
    for state in STATES:  # dirty first: it wins over a clean copy of the same id
        dirty = state == "dirty"
        for shard_name in SHARDS:
            shard_dir = root / state / shard_name
            with os.scandir(shard_dir) as it:
                for entry in it:
                    name = entry.name
                    if (
                        not entry.is_file(follow_symlinks=False)
                        or not is_chunk_id(name)
                        or shard(name) != shard_name
                    ):
                        log.warning("foreign file in chunk store left alone", path=entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    size = st.st_size - TRAILER.size
                    if size <= 0 or (not dirty and name in found):
                        # too short to be a chunk we published, or a clean copy left behind
                        # by a re-commit as dirty interrupted by a crash
                        os.unlink(entry.path)
                        continue
                    found[name] = Found(name, dirty, size, max(st.st_atime_ns, st.st_mtime_ns))
    for state in STATES:
        fsync_dir(root / state)
    fsync_dir(root)
    return list(found.values()), removed
