"""Making a change on disk durable: the helpers every on-disk store shares.

A file written to a temporary name, fsynced and renamed into place survives a power loss
only once its *directory* is fsynced too (the rename lives in the directory's entries).
The cache node's chunk store and the file origin both follow that recipe.
"""

from __future__ import annotations

import os

__all__ = ["fsync_dir", "fsync_file"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush the contents of file ``path`` to stable storage.

    Raises:
        OSError: it cannot be opened, or the fsync failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush the entries of directory ``path`` (creations, renames, unlinks) to stable
    storage.

    Raises:
        OSError: ``path`` is not a directory that can be opened, or the fsync failed (for
            instance ``EIO``: the change may not be durable).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
