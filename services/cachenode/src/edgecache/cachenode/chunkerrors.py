"""The chunk store's errors, by cause: a chunk that is not there, one that failed its check,
and a full disk. :mod:`edgecache.cachenode.chunkstore` re-exports them."""

from __future__ import annotations

import errno
from typing import NoReturn

__all__ = ["ChunkCorrupt", "ChunkMissing", "ChunkStoreFull", "raise_os"]

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class ChunkMissing(KeyError):
    """The chunk is not in the store (never written, deleted, evicted, or dropped as corrupt)."""


class ChunkCorrupt(Exception):
    """The chunk failed verification (checksum, trailer or length) or could not be read (EIO).

    The chunk has been deleted from the store by the time this is raised, so it is refetched.
    """


class ChunkStoreFull(OSError):
    """The disk is full (``ENOSPC`` or ``EDQUOT``) while writing or publishing a chunk.

    The write was aborted; nothing became visible. ``errno`` is the original one; the
    original ``OSError`` is the ``__cause__``.
    """


def raise_os(exc: OSError) -> NoReturn:
    """Re-raise ``exc``, as :class:`ChunkStoreFull` if it means a full disk."""
    if exc.errno in _FULL_ERRNOS and not isinstance(exc, ChunkStoreFull):
        raise ChunkStoreFull(exc.errno, f"chunk store disk full: {exc.strerror}") from exc
    raise exc
