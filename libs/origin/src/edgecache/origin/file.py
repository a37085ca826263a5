"""The file origin: objects as plain files under one directory (the embedded default).

On-disk layout under ``root`` (bucket names never start with ``.``, so nothing collides)::

    <root>/<bucket>/<key path>                      the object's bytes, a plain file
    <root>/.edgecache-meta/<bucket>/<key path>%.json  its metadata (msgspec JSON)
    <root>/.edgecache-meta/<bucket>%.json           the bucket's creation time
    <root>/.edgecache-tmp/                          files being written (same filesystem)
    <root>/.edgecache-locks/<bucket>.lock           flock(2) lock serialising changes

``<key path>`` is the key with its ``/`` as directory separators and odd segments escaped
(:mod:`edgecache.origin._keypath`). When keys ``a`` and ``a/b`` both exist, ``a`` is
a directory and the object ``a`` lives beside it as ``a%`` (*displaced*); it takes its name
back when the directory empties.

Writes are atomic and durable: the bytes go to a temporary file that is fsynced and
renamed into place, then the metadata likewise (data first, then metadata), each followed
by an fsync of the directory. Structural changes (commits, deletes) hold the bucket's lock
exclusively, so several processes may share one root; readers take no lock unless a
lookup misses or finds data and metadata that disagree, and then retry under a shared lock.

Metadata records the data file's size and ``st_mtime_ns`` and is trusted only while both
still match. A file without trusted metadata (copied in by hand, or caught between the two
renames of a crashed write) is served as a *foreign* object: ETag ``<size hex>-<mtime_ns
hex>`` (never mistaken for an MD5), content type guessed from the key's extension, no user
metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import mimetypes
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from edgecache.common import errors
from edgecache.common.durable import fsync_dir
from edgecache.origin import _keypath as kp
from edgecache.origin._util import (
    check_bucket_name,
    check_key,
    check_range,
    read_parts,
    system_headers,
)
from edgecache.origin.base import Origin, OriginBucket, OriginHoldsNewer, OriginObject, holds_newer

__all__ = ["FileOrigin"]

DEFAULT_CONTENT_TYPE = "binary/octet-stream"
IO_BYTES = 1024 * 1024  # read and write piece size
LIST_BATCH = 256  # objects listed per worker-thread hop
STALE_TMP_S = 24 * 3600  # start() removes temporary files older than this

META_DIR = ".edgecache-meta"
TMP_DIR = ".edgecache-tmp"
LOCK_DIR = ".edgecache-locks"


class _Meta(msgspec.Struct, frozen=True, kw_only=True):
    """What ``<key path>%.json`` holds."""

    key: str
    size: int  # bytes of the data file when this was written ...
    mtime_ns: int  # ... and its st_mtime_ns: trusted only while both still match
    etag: str
    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    hlc: int = 0  # federation: the version's stamp (Origin.put_object)
    site: str = ""
    tags: dict[str, str] = {}  # the object's tags (S3 object tagging), in the order set


class _BucketRecord(msgspec.Struct, frozen=True, kw_only=True):
    created: float  # s since epoch


class _Entry(NamedTuple):
    """One listing entry: an object file, or a directory of keys starting with ``sort_key``."""

    sort_key: str  # the key (files) or key prefix ending in "/" (directories)
    is_dir: bool
    path: str
    parts: list[str]  # components of the key (or prefix) relative to the bucket


_meta_decoder = msgspec.json.Decoder(_Meta)
_bucket_decoder = msgspec.json.Decoder(_BucketRecord)


@contextlib.contextmanager
def _os_errors(resource: str) -> Iterator[None]:
    """Map ``OSError`` to the S3 error a client should see."""
    try:
        yield
    except OSError as exc:
        code = exc.errno
        if code in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EIO,
            errno.EROFS,
            errno.EMFILE,
            errno.ENFILE,
            errno.EAGAIN,
        ):
            raise errors.ServiceUnavailable(
                f"origin directory: {exc}", resource=resource, retry_after_s=5
            ) from exc
        if code in (errno.EACCES, errno.EPERM):
            raise errors.AccessDenied(f"origin directory: {exc}", resource=resource) from exc
        if code == errno.ENAMETOOLONG:
            raise errors.KeyTooLongError(f"origin directory: {exc}", resource=resource) from exc
        raise errors.InternalError(f"origin directory: {exc}", resource=resource) from exc


def _write_all(fd: int, data: bytes, md5: hashlib._Hash | None) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if md5 is not None:
        md5.update(data)


def _canonical_file_under(path: str) -> bool:
    """Whether a regular file whose path below ``path`` is all canonical names (so the walk
    lists it) exists; depth first, stopping at the first found. ``False`` may be wrong (a
    long segment's pieces are not followed): then walk."""
    try:
        with os.scandir(path) as it:
            for e in it:
                if kp.decode_segment(e.name) is None or len(e.name.encode()) > kp.MAX_NAME_BYTES:
                    continue
                if e.is_file(follow_symlinks=False):
                    return True
                if e.is_dir(follow_symlinks=False) and _canonical_file_under(e.path):
                    return True
    except (FileNotFoundError, NotADirectoryError):
        pass  # removed meanwhile
    return False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class FileOrigin(Origin):
    """Objects as plain files under ``root`` (see the module docstring for the layout).

    Blocking file work runs in worker threads (``asyncio.to_thread``), one bounded piece at
    a time: 1 MiB reads/writes, one commit, :data:`LIST_BATCH` listed objects.
    """

    name = "file"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._root = os.path.abspath(root)
        self._meta = os.path.join(self._root, META_DIR)
        self._tmp = os.path.join(self._root, TMP_DIR)
        self._locks = os.path.join(self._root, LOCK_DIR)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the directory layout and remove temporary files left by crashed writes."""
        with _os_errors(str(self.root)):
            await asyncio.to_thread(self._start)

    def _start(self) -> None:
        for path in (self._root, self._meta, self._tmp, self._locks):
            os.makedirs(path, exist_ok=True)
        now = time.time()
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < now - STALE_TMP_S:
                        os.unlink(entry.path)

    # -- paths -------------------------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> str:
        check_bucket_name(bucket)
        return os.path.join(self._root, bucket)

    def _meta_path(self, bucket: str, parts: list[str]) -> str:
        return os.path.join(self._meta, bucket, *parts[:-1], parts[-1] + kp.META_SUFFIX)

    def _record_path(self, bucket: str) -> str:
        return os.path.join(self._meta, bucket + kp.META_SUFFIX)

    def _object_path(self, bucket: str, key: str) -> tuple[str, list[str], str]:
        """``(bucket dir, key components, data path)``; the path is checked to stay inside."""
        bucket_dir = self._bucket_dir(bucket)
        check_key(bucket, key)
        parts = kp.key_to_parts(key)
        path = os.path.join(bucket_dir, *parts)
        # second guard: whatever the escaping, the resolved path stays in the bucket
        inside = os.path.realpath(bucket_dir) + os.sep
        if not os.path.realpath(path).startswith(inside):
            raise errors.InvalidArgument(
                "key resolves outside the origin directory", resource=f"{bucket}/{key}"
            )
        return bucket_dir, parts, path

    @contextlib.contextmanager
    def _lock(self, bucket: str, *, shared: bool = False) -> Iterator[None]:
        """Hold the bucket's flock (exclusive for changes); blocks, so call in a thread."""
        fd = os.open(
            os.path.join(self._locks, bucket + ".lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- buckets -----------------------------------------------------------------------------
    async def list_buckets(self) -> list[OriginBucket]:
        with _os_errors(""):
            return await asyncio.to_thread(self._list_buckets)

    def _list_buckets(self) -> list[OriginBucket]:
        out = []
        with os.scandir(self._root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=True):
                    continue
                with contextlib.suppress(errors.InvalidBucketName):
                    check_bucket_name(entry.name)
                    out.append(OriginBucket(name=entry.name, created=self._created(entry)))
        return sorted(out, key=lambda b: b.name)

    def _created(self, entry: os.DirEntry[str]) -> float:
        try:
            with open(self._record_path(entry.name), "rb") as f:
                return _bucket_decoder.decode(f.read()).created
        except (OSError, msgspec.DecodeError):
            return entry.stat().st_mtime  # a directory made by hand

    async def create_bucket(self, bucket: str) -> None:
        self._bucket_dir(bucket)
        with _os_errors(bucket):
            await asyncio.to_thread(self._create_bucket, bucket)

    def _create_bucket(self, bucket: str) -> None:
        with self._lock(bucket):
            self._ensure_bucket(bucket)

    def _ensure_bucket(self, bucket: str) -> str:
        """Create the bucket's directory and record if missing; call under the lock."""
        bucket_dir = self._bucket_dir(bucket)
        if os.path.isdir(bucket_dir):
            return bucket_dir
        os.mkdir(bucket_dir)
        record = msgspec.json.encode(_BucketRecord(created=time.time()))
        self._write_file(self._record_path(bucket), record)
        fsync_dir(self._root)
        return bucket_dir

    async def delete_bucket(self, bucket: str) -> None:
        self._bucket_dir(bucket)
        with _os_errors(bucket):
            await asyncio.to_thread(self._delete_bucket, bucket)

    def _delete_bucket(self, bucket: str) -> None:
        bucket_dir = self._bucket_dir(bucket)
        with self._lock(bucket):
            if os.path.isdir(bucket_dir):
                for _dirpath, _dirnames, filenames in os.walk(bucket_dir):
                    if filenames:  # anything but a directory counts, foreign files too
                        raise errors.BucketNotEmpty(resource=bucket)
                shutil.rmtree(bucket_dir)
            shutil.rmtree(os.path.join(self._meta, bucket), ignore_errors=True)
            _unlink(self._record_path(bucket))
            fsync_dir(self._root)
        # the lock file stays: removing it could let two holders lock different files

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            bucket_dir = self._bucket_dir(bucket)
        except errors.InvalidBucketName:
            return False
        with _os_errors(bucket):
            return await asyncio.to_thread(os.path.isdir, bucket_dir)

    # -- reading -----------------------------------------------------------------------------
    def _open_data(self, path: str) -> tuple[int, os.stat_result] | None:
        """Open the object's file at ``path``, or its displaced twin when ``path`` is a
        directory (or missing, mid-conversion). ``None`` if there is neither."""
        for candidate in (path, path + kp.DISPLACED_SUFFIX):
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return fd, st
            os.close(fd)
        return None

    def _read_meta(self, path: str) -> _Meta | None:
        try:
            with open(path, "rb") as f:
                return _meta_decoder.decode(f.read())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _matching_meta(
        self, bucket: str, key: str, parts: list[str], st: os.stat_result
    ) -> _Meta | None:
        """The object's metadata if it describes the data file ``st``, else ``None``."""
        meta = self._read_meta(self._meta_path(bucket, parts))
        if meta is None or (meta.key, meta.size, meta.mtime_ns) != (
            key,
            st.st_size,
            st.st_mtime_ns,
        ):
            return None
        return meta

    @staticmethod
    def _describe(key: str, st: os.stat_result, meta: _Meta | None) -> OriginObject:
        """The object for data file ``st`` with its matching ``meta``, or a foreign one."""
        if meta is None:
            return OriginObject(
                key=key,
                size=st.st_size,
                etag=f"{st.st_size:x}-{st.st_mtime_ns:x}",
                last_modified=st.st_mtime_ns / 1e9,
                content_type=mimetypes.guess_type(key)[0] or DEFAULT_CONTENT_TYPE,
                tags={},
            )
        return OriginObject(
            key=key,
            size=st.st_size,
            etag=meta.etag,
            last_modified=st.st_mtime_ns / 1e9,
            content_type=meta.content_type,
            metadata=dict(meta.metadata),
            headers=dict(meta.headers),
            hlc=meta.hlc,
            site=meta.site,
            tags=dict(meta.tags),
        )

    def _try_lookup(
        self, bucket: str, key: str, parts: list[str], path: str
    ) -> tuple[int, OriginObject, bool] | None:
        """``(descriptor, object, metadata matched)``, or ``None`` if there is no file."""
        found = self._open_data(path)
        if found is None:
            return None
        fd, st = found
        meta = self._matching_meta(bucket, key, parts, st)
        return fd, self._describe(key, st, meta), meta is not None

    def _lookup(self, bucket: str, key: str) -> tuple[int, OriginObject]:
        """An open descriptor of the object's bytes and its description.

        A miss, or data without matching metadata, is looked up again under the shared
        lock, so a concurrent commit is never seen half done.
        """
        bucket_dir, parts, path = self._object_path(bucket, key)
        found = self._try_lookup(bucket, key, parts, path)
        if found is not None:
            if found[2]:
                return found[0], found[1]
            os.close(found[0])
        if not os.path.isdir(bucket_dir):
            raise errors.NoSuchBucket(resource=bucket)
        with self._lock(bucket, shared=True):
            found = self._try_lookup(bucket, key, parts, path)
        if found is None:
            raise errors.NoSuchKey(resource=f"{bucket}/{key}")
        return found[0], found[1]

    async def head_object(self, bucket: str, key: str) -> OriginObject:
        with _os_errors(f"{bucket}/{key}"):
            fd, obj = await asyncio.to_thread(self._lookup, bucket, key)
        os.close(fd)
        return obj

    async def get_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes ``first..last`` of the file, in pieces of at most 1 MiB.

        Reads one open descriptor, so a concurrent replacement never mixes versions.
        ``last`` past the end is clamped to the end (as S3 does).

        Raises:
            NoSuchBucket, NoSuchKey, PreconditionFailed (``if_match`` differs, or the file
            was truncated in place while being read), InvalidRange (``first`` at or past the
            end).
        """
        resource = f"{bucket}/{key}"
        check_range(bucket, key, first, last)
        with _os_errors(resource):
            fd, obj = await asyncio.to_thread(self._lookup, bucket, key)
        try:
            if if_match is not None and if_match != obj.etag:
                raise errors.PreconditionFailed(f"ETag is {obj.etag}", resource=resource)
            if first >= obj.size:
                raise errors.InvalidRange(f"bytes={first}-{last} of {obj.size}", resource=resource)
            offset, end = first, min(last, obj.size - 1) + 1
            while offset < end:
                with _os_errors(resource):
                    piece = await asyncio.to_thread(
                        os.pread, fd, min(IO_BYTES, end - offset), offset
                    )
                if not piece:
                    raise errors.PreconditionFailed(
                        "object truncated while read", resource=resource
                    )
                offset += len(piece)
                yield piece
        finally:
            os.close(fd)

    # -- writing -----------------------------------------------------------------------------
    def _write_file(self, path: str, data: bytes) -> None:
        """Atomically replace ``path`` with ``data`` (temp file, fsync, rename, fsync dir)."""
        tmp = os.path.join(self._tmp, secrets.token_hex(16))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            _write_all(fd, data, None)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        fsync_dir(parent)

    def _open_tmp(self) -> tuple[int, str]:
        path = os.path.join(self._tmp, secrets.token_hex(16))
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path

    @staticmethod
    def _seal(fd: int) -> os.stat_result:
        try:
            os.fsync(fd)
            return os.fstat(fd)
        finally:
            os.close(fd)

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        *,
        size: int,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        etag: str = "",
        hlc: int = 0,
        site: str = "",
        tags: dict[str, str] | None = None,
    ) -> str:
        """Write the file, then its metadata (tags included); see :meth:`Origin.put_object`
        (a stamped write compares the stamp in place under the bucket's lock, where it renames).

        Returns:
            ``etag`` as given, else the MD5 hex of the bytes (computed while writing).

        Raises:
            OriginHoldsNewer: a newer version is in place; nothing was written.
            IncompleteBody: ``body`` did not hold ``size`` bytes; nothing was written.
            InvalidBucketName, KeyTooLongError, InvalidArgument: bad names.
            ServiceUnavailable: the disk is full or failing.
        """
        resource = f"{bucket}/{key}"
        self._object_path(bucket, key)
        if size < 0:
            raise errors.InvalidArgument(f"negative size {size}", resource=resource)
        md5 = None if etag else hashlib.md5(usedforsecurity=False)
        with _os_errors(resource):
            fd, tmp = await asyncio.to_thread(self._open_tmp)
        try:
            with _os_errors(resource):
                try:
                    async for piece in read_parts(body, size=size, part_size=IO_BYTES):
                        await asyncio.to_thread(_write_all, fd, piece, md5)
                finally:
                    st = await asyncio.to_thread(self._seal, fd)
                meta = _Meta(
                    key=key,
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                    etag=etag or md5.hexdigest(),  # type: ignore[union-attr]
                    content_type=content_type or DEFAULT_CONTENT_TYPE,
                    metadata=dict(metadata or {}),
                    headers=system_headers(headers),
                    hlc=hlc,
                    site=site,
                    tags=dict(tags or {}),
                )
                await asyncio.to_thread(self._commit, bucket, key, tmp, meta)
        except BaseException:
            _unlink(tmp)  # gone already if the commit renamed it
            raise
        return meta.etag

    def _commit(self, bucket: str, key: str, tmp: str, meta: _Meta) -> None:
        """Rename the written file into place, then write its metadata; under the lock."""
        _bucket_dir, parts, path = self._object_path(bucket, key)
        with self._lock(bucket):
            self._refuse_if_newer(bucket, key, meta.hlc, meta.site)
            bucket_dir = self._ensure_bucket(bucket)
            parent = self._make_parents(bucket_dir, parts[:-1])
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                is_dir = False
            os.replace(tmp, path + kp.DISPLACED_SUFFIX if is_dir else path)
            if not is_dir:
                _unlink(path + kp.DISPLACED_SUFFIX)  # a stale twin from an interrupted change
            fsync_dir(parent)
            self._write_file(self._meta_path(bucket, parts), msgspec.json.encode(meta))

    def _make_parents(self, bucket_dir: str, dir_parts: list[str]) -> str:
        """Create the directories of ``dir_parts``; a file in the way (the object whose key
        is that directory's key) is displaced to ``<name>%`` first. Returns the last one."""
        path = bucket_dir
        for name in dir_parts:
            parent, path = path, os.path.join(path, name)
            try:
                os.mkdir(path)
            except FileExistsError:
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    raise errors.InternalError(
                        f"origin directory: {path} is not a directory"
                    ) from None
                os.rename(path, path + kp.DISPLACED_SUFFIX)  # readers look there on a miss
                os.mkdir(path)
            fsync_dir(parent)
        return path

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> str | None:
        """Rewrite the object's metadata file with ``tags`` (the data file is untouched, so
        its ETag stays); see :meth:`Origin.put_tags`. An object without trusted metadata (a
        foreign file) gets a metadata file describing it as it is served."""
        with _os_errors(f"{bucket}/{key}"):
            await asyncio.to_thread(self._put_tags, bucket, key, dict(tags))
        return None

    def _put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        bucket_dir, parts, path = self._object_path(bucket, key)
        if not os.path.isdir(bucket_dir):
            raise errors.NoSuchBucket(resource=bucket)
        with self._lock(bucket):
            found = self._open_data(path)
            if found is None:
                raise errors.NoSuchKey(resource=f"{bucket}/{key}")
            fd, st = found
            os.close(fd)
            meta = self._matching_meta(bucket, key, parts, st)
            if meta is None:
                obj = self._describe(key, st, None)
                meta = _Meta(key=key, size=st.st_size, mtime_ns=st.st_mtime_ns, etag=obj.etag, content_type=obj.content_type)
            self._write_file(self._meta_path(bucket, parts), msgspec.json.encode(msgspec.structs.replace(meta, tags=tags)))

    # -- deleting ----------------------------------------------------------------------------
    async def delete_object(self, bucket: str, key: str, *, hlc: int = 0, site: str = "") -> None:
        """See :meth:`Origin.delete_object`; a stamped delete compares under the lock."""
        with _os_errors(f"{bucket}/{key}"):
            await asyncio.to_thread(self._delete_object, bucket, key, hlc, site)

    def _refuse_if_newer(self, bucket: str, key: str, hlc: int, site: str) -> None:
        """Raise :class:`OriginHoldsNewer` if the object in place has a larger stamp than
        ``(hlc, site)``; called under the bucket's lock (nothing changes it meanwhile)."""
        if not hlc:
            return
        found = self._try_lookup(bucket, key, *self._object_path(bucket, key)[1:])
        if found is None:
            return
        os.close(found[0])
        if holds_newer(found[1], hlc, site):
            raise OriginHoldsNewer(
                f"the origin holds a newer version (hlc {found[1].hlc}, site {found[1].site!r})",
                resource=f"{bucket}/{key}",
            )

    def _delete_object(self, bucket: str, key: str, hlc: int = 0, site: str = "") -> None:
        bucket_dir, parts, path = self._object_path(bucket, key)
        if not os.path.isdir(bucket_dir):
            return
        with self._lock(bucket):
            self._refuse_if_newer(bucket, key, hlc, site)
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                return  # a folder of the key is missing, or is a file: no such key
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                is_dir = True  # only a displaced twin can be left
            if not is_dir:
                os.unlink(path)
            _unlink(path + kp.DISPLACED_SUFFIX)
            fsync_dir(parent)
            meta = self._meta_path(bucket, parts)
            _unlink(meta)
            self._prune(bucket_dir, parent, restore=True)
            self._prune(os.path.join(self._meta, bucket), os.path.dirname(meta), restore=False)

    @staticmethod
    def _prune(top: str, path: str, *, restore: bool) -> None:
        """Remove empty directories from ``path`` up to (not including) ``top``; with
        ``restore``, a displaced file whose directory went takes its name back."""
        while len(path) > len(top):
            try:
                os.rmdir(path)
            except OSError:
                return  # not empty (or gone)
            if restore:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path + kp.DISPLACED_SUFFIX, path)
                    return
            path = os.path.dirname(path)

    # -- listing -----------------------------------------------------------------------------
    async def iter_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject]:
        """Walk the bucket's tree in UTF-8 key order, :data:`LIST_BATCH` objects per thread
        hop; subtrees outside ``prefix`` or before ``start_after`` are not visited.

        Raises:
            NoSuchBucket: the bucket's directory does not exist.
        """
        bucket_dir = self._bucket_dir(bucket)
        with _os_errors(bucket):
            if not await asyncio.to_thread(os.path.isdir, bucket_dir):
                raise errors.NoSuchBucket(resource=bucket)
        walk = self._walk(bucket, _Entry("", True, bucket_dir, []), prefix, start_after)
        async for obj in self._batches(bucket, walk):
            yield obj

    async def iter_level(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject | str]:
        """See :meth:`Origin.iter_level`. With ``delimiter`` ``"/"`` the directories of the
        level are read, not walked: a subdirectory under ``prefix`` is a common prefix,
        opened only to see that it holds an object (its first regular file with a
        canonical name suffices; else it is walked until one is found). Other delimiters
        roll up the walk.

        Raises:
            NoSuchBucket: the bucket's directory does not exist.
        """
        if delimiter != "/":
            async for item in super().iter_level(
                bucket, prefix=prefix, delimiter=delimiter, start_after=start_after
            ):
                yield item
            return
        bucket_dir = self._bucket_dir(bucket)
        with _os_errors(bucket):
            if not await asyncio.to_thread(os.path.isdir, bucket_dir):
                raise errors.NoSuchBucket(resource=bucket)
        level = self._walk(
            bucket, _Entry("", True, bucket_dir, []), prefix, start_after, roll_up=True
        )
        async for item in self._batches(bucket, level):
            yield item

    @staticmethod
    async def _batches(
        bucket: str, items: Iterator[OriginObject | str]
    ) -> AsyncIterator[OriginObject | str]:
        """Drain a blocking iterator, :data:`LIST_BATCH` items per worker-thread hop."""
        while True:
            with _os_errors(bucket):
                batch = await asyncio.to_thread(lambda: list(itertools.islice(items, LIST_BATCH)))
            for obj in batch:
                yield obj
            if len(batch) < LIST_BATCH:
                return

    def _walk(
        self, bucket: str, top: _Entry, prefix: str, start_after: str, *, roll_up: bool = False
    ) -> Iterator[OriginObject | str]:
        """Depth-first over the directories under ``top`` (a directory entry; the bucket's
        is ``_Entry("", True, bucket_dir, [])``), each one's entries sorted by key;
        directories sort as their key prefix with the trailing ``/``, which is exactly
        where their keys fall (``a`` < ``a-b`` < ``a.b`` < ``a/…`` < ``a0``).

        ``roll_up``: a directory under ``prefix`` is not entered but yielded as a common
        prefix (its key prefix, a ``str``) if it holds an object to list.
        """
        stack = [iter(self._scan(top.path, top.sort_key, top.parts))]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            key = entry.sort_key
            if entry.is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    if key > prefix:
                        return  # everything after is past the prefix too
                    continue
                if key < start_after and not start_after.startswith(key):
                    continue  # every key under it sorts before start_after
                if roll_up and len(key) > len(prefix) and key.startswith(prefix):
                    if key != start_after and self._holds_object(bucket, entry, start_after):
                        yield key  # the common prefix: the directory's key prefix
                    continue
                stack.append(iter(self._scan(entry.path, key, entry.parts)))
            elif key.startswith(prefix):
                if key > start_after and kp.key_to_parts(key) == entry.parts:
                    obj = self._list_entry(bucket, key, entry)
                    if obj is not None:
                        yield obj
            elif key > prefix:
                return

    def _holds_object(self, bucket: str, entry: _Entry, start_after: str) -> bool:
        """Whether directory ``entry`` holds an object listed after ``start_after``.

        First a depth-first look that stops at the first object file with a canonical
        name (on a tree this origin wrote: one directory per level, its first entries);
        the exact walk only when that finds none or ``start_after`` falls inside.
        """
        if (
            start_after < entry.sort_key
            and kp.key_to_parts(entry.sort_key[:-1]) == entry.parts
            and _canonical_file_under(entry.path)
        ):
            return True
        walk = self._walk(bucket, entry, entry.sort_key, start_after)
        return next(walk, None) is not None

    def _list_entry(self, bucket: str, key: str, entry: _Entry) -> OriginObject | None:
        for shared_lock in (contextlib.nullcontext(), self._lock(bucket, shared=True)):
            with shared_lock:  # data without matching metadata: maybe mid-commit, look again
                try:
                    st = os.stat(entry.path, follow_symlinks=False)
                except FileNotFoundError:
                    return None  # deleted meanwhile
                meta = self._matching_meta(bucket, key, entry.parts, st)
            if meta is not None:
                break
        return self._describe(key, st, meta)

    def _scan(self, path: str, key_prefix: str, parts: list[str]) -> list[_Entry]:
        """The entries of one directory, long-segment continuations folded in, sorted."""
        out: list[_Entry] = []
        self._scan_into(out, path, key_prefix, parts, "", [])
        out.sort(key=lambda e: e.sort_key)
        return out

    def _scan_into(
        self,
        out: list[_Entry],
        path: str,
        key_prefix: str,
        parts: list[str],
        piece: str,
        piece_parts: list[str],
    ) -> None:
        try:
            with os.scandir(path) as it:
                kinds = {}
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        kinds[e.name] = True
                    elif e.is_file(follow_symlinks=False):
                        kinds[e.name] = False
        except (FileNotFoundError, NotADirectoryError):
            return  # removed meanwhile
        for name, is_dir in kinds.items():
            if name.endswith(kp.CONT_SUFFIX):
                text = kp.unescape(name[: -len(kp.CONT_SUFFIX)])
                if is_dir and text is not None:
                    self._scan_into(
                        out,
                        os.path.join(path, name),
                        key_prefix,
                        parts,
                        piece + text,
                        [*piece_parts, name],
                    )
                continue
            own = name
            if name != kp.EMPTY_SEGMENT and name.endswith(kp.DISPLACED_SUFFIX):
                own = name[: -len(kp.DISPLACED_SUFFIX)]  # displaced: valid beside its dir
                if is_dir or kinds.get(own) is not True:
                    continue
            segment = kp.unescape(own) if piece else kp.decode_segment(own)
            if segment is None:
                continue  # not a name this origin writes (e.g. "50%off"): ignored
            key = key_prefix + piece + segment
            out.append(
                _Entry(
                    key + "/" if is_dir else key,
                    is_dir,
                    os.path.join(path, name),
                    [*parts, *piece_parts, own],
                )
            )
