"""The chunk store's on-disk format, and the blocking file operations that read and write it.

On-disk layout (``root`` is ``CacheNodeConfig`` / ``Config.cachenode_dir()``)::

    root/tmp/<id>.<16 hex>.tmp     a write in progress; deleted at open (never published)
    root/dirty/<ss>/<id>           a dirty chunk
    root/clean/<ss>/<id>           a clean chunk

``<id>`` is ``[A-Za-z0-9._-]{1,200}`` except ``.`` and ``..`` (see :func:`validate_chunk_id`).
``<ss>`` is the shard, two lowercase hex digits: ``crc32c(id as ASCII) & 0xFF`` (256 shards
per state, all created at open). A chunk file is the payload followed by a 20-byte trailer holding its length and CRC32C;
the format and its reader, :func:`read_verified`, live in :mod:`edgecache.common.chunkfile`
(the gateway's short-circuit reads use them too) and are re-exported here.

A write streams into ``tmp/`` (:func:`open_tmp`, :func:`append`), appends the trailer and
fsyncs the file (:func:`seal`), renames it into ``dirty/`` or ``clean/`` (:func:`replace`)
and fsyncs that directory (:func:`settle_publish`): a committed dirty chunk is durable and
complete or absent. A **clean** chunk (a copy of the origin's bytes) skips both fsyncs:
after a power loss it may be missing or torn, which every read detects (trailer and
CRC32C, :func:`read_verified`); the chunk is then dropped and filled again. (Two fsyncs
per 8 MiB held every fill up for the disk.) Marking chunks clean is a rename ``dirty/ -> clean/`` and an fsync of both
directories (:func:`rename_many`).

Everything here blocks: the store and its writer call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

import crc32c
import structlog

from edgecache.common.chunkfile import TRAILER, InvalidChunk, pack_trailer, read_verified
from edgecache.common.durable import fsync_dir

__all__ = [
    "SHARDS",
    "STATES",
    "TRAILER",
    "InvalidChunk",
    "append",
    "chunk_path",
    "discard",
    "is_chunk_id",
    "open_tmp",
    "read_verified",
    "rename_many",
    "replace",
    "seal",
    "settle_publish",
    "shard",
    "tmp_path",
    "unlink_many",
    "validate_chunk_id",
]

log = structlog.get_logger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_TMP_SUFFIX = ".tmp"
SHARDS = [f"{i:02x}" for i in range(256)]
"""Shard directory names, ``"00"`` to ``"ff"``."""
STATES = ("dirty", "clean")
"""State directory names, dirty first (a dirty copy wins over a clean one)."""


# == Ids and paths ==============================================================================
def is_chunk_id(name: str) -> bool:
    """Whether ``name`` is 1..200 characters of ``[A-Za-z0-9._-]`` and not ``.``/``..``."""
    return bool(_ID_RE.fullmatch(name)) and name not in (".", "..")


def validate_chunk_id(chunk_id: str) -> str:
    """Return ``chunk_id`` if it is a valid chunk id.

    Raises:
        ValueError: not 1..200 characters of ``[A-Za-z0-9._-]``, or ``.``/``..``.
    """
    if not isinstance(chunk_id, str) or not is_chunk_id(chunk_id):
        raise ValueError(f"invalid chunk id {chunk_id!r}")
    return chunk_id


def shard(chunk_id: str) -> str:
    """The shard directory of ``chunk_id``: ``crc32c(id) & 0xFF`` as two lowercase hex digits."""
    return SHARDS[crc32c.crc32c(chunk_id.encode("ascii")) & 0xFF]


def chunk_path(root: Path, chunk_id: str, dirty: bool) -> Path:
    """``root/dirty|clean/<ss>/<id>``: where a committed chunk lives."""
    return root / ("dirty" if dirty else "clean") / shard(chunk_id) / chunk_id


def tmp_path(root: Path, chunk_id: str) -> Path:
    """``root/tmp/<id>.<16 hex>.tmp``: a fresh name for a write in progress."""
    return root / "tmp" / f"{chunk_id}.{secrets.token_hex(8)}{_TMP_SUFFIX}"


# == Writing ====================================================================================
def open_tmp(path: Path) -> BinaryIO:
    """Create the temp file ``path`` (it must not exist)."""
    return open(path, "xb")


def append(f: BinaryIO, data: bytes | bytearray | memoryview, crc: int) -> int:
    """Write ``data`` through to the file (another reader of it sees it); return the
    running CRC32C updated with it."""
    f.write(data)
    f.flush()
    return crc32c.crc32c(data, value=crc)


def seal(f: BinaryIO, pending: bytes | bytearray | memoryview, crc: int, size: int, *, sync: bool = True) -> int:
    """Write the last buffered bytes and the trailer, fsync (if ``sync``) and close; return
    the CRC32C."""
    try:
        if pending:
            crc = append(f, pending, crc)
        f.write(pack_trailer(size, crc))
        f.flush()
        if sync:
            os.fsync(f.fileno())
    finally:
        f.close()
    return crc


def discard(f: BinaryIO | None, path: Path) -> None:
    """Close ``f`` (if open) and remove the temp file ``path``, ignoring what is gone."""
    try:
        if f is not None:
            f.close()
    except OSError:
        pass
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# == Publishing, state changes, deletion ========================================================
def replace(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` over ``dest``; on failure remove ``tmp``."""
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def settle_publish(dest: Path, old: Path | None, *, sync: bool = True) -> None:
    """Make the rename into ``dest`` durable (if ``sync``), then remove ``old`` (the other
    state's copy)."""
    if sync:
        fsync_dir(dest.parent)
    if old is not None and old != dest:
        old.unlink(missing_ok=True)
        fsync_dir(old.parent)


def rename_many(moves: list[tuple[Path, Path]]) -> tuple[list[bool | OSError], OSError | None]:
    """Rename each ``(src, dst)``, then fsync every directory touched, once each.

    Returns:
        Per move: ``True`` (moved), ``False`` (``src`` missing) or the ``OSError``; and the
        first fsync error, if any.
    """
    done: list[bool | OSError] = []
    dirs: set[Path] = set()
    for src, dst in moves:
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            done.append(False)
            continue
        except OSError as exc:
            done.append(exc)
            continue
        done.append(True)
        dirs.update((src.parent, dst.parent))
    error: OSError | None = None
    for d in dirs:
        try:
            fsync_dir(d)
        except OSError as exc:
            error = error or exc
    return done, error


def unlink_many(paths: list[Path]) -> None:
    """Remove chunk files; a failure is logged, not raised (the file is only wasted space)."""
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the chunk is out of the index; the file is only wasted space
            log.warning("chunk unlink failed", path=str(path), error=str(exc))
