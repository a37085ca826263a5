"""The ``Origin`` interface: where objects live durably (local directory, AWS S3, Azure Blob).

Cache nodes read from it (head, ranged GET, listing); the writeback service writes to it.
Every implementation maps its backend's errors to :mod:`edgecache.common.errors` where they
arise: a missing object is ``NoSuchKey``, a missing bucket/container ``NoSuchBucket``, an
unreachable or throttling origin ``ServiceUnavailable`` (with ``retry_after_s``), never a
raw backend exception.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from edgecache.common import errors

__all__ = ["BlockingRangeRead", "Origin", "OriginBucket", "OriginHoldsNewer", "OriginObject", "RangeRead", "common_prefix", "holds_newer"]


class OriginObject(msgspec.Struct, frozen=True, kw_only=True):
    """An object as the origin describes it.

    ``etag`` is the origin's own ETag (hex, no quotes; for S3 multipart objects ``hex-N``,
    for Azure the blob's ETag with quotes stripped), used to revalidate cached copies.
    ``last_modified`` is in seconds since the Unix epoch; ``size`` in bytes.
    """

    key: str
    size: int
    etag: str
    last_modified: float
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = {}
    headers: dict[str, str] = {}
    # federation: the stamp the object was written with (``put_object``'s ``hlc``/``site``),
    # kept beside it (S3/Azure metadata, the file origin's sidecar), never in ``metadata``
    hlc: int = 0
    site: str = ""
    # the object's tags (S3 object tagging); None: not read with the rest (ask get_tags)
    tags: dict[str, str] | None = None


class OriginHoldsNewer(errors.PreconditionFailed):
    """The origin holds a version with a larger ``(hlc, site)`` than the one being written
    or deleted: nothing was changed (federation: a loser never overwrites the winner)."""


def holds_newer(found: OriginObject | None, hlc: int, site: str) -> bool:
    """Whether ``found`` (the origin's object, ``None``: none) is newer than ``(hlc, site)``:
    only a stamped write (``hlc`` > 0) is compared; an unstamped object is older than any."""
    return hlc > 0 and found is not None and (found.hlc, found.site) > (hlc, site)


class OriginBucket(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    created: float  # s since epoch


class RangeRead:
    """An open ranged GET: the object's attributes (what a HEAD gives) and the body of the
    range, as one origin request answers them.

    Iterate it for the body (pieces of any size, in order, adding up to ``last - first + 1``
    bytes); always :meth:`aclose` it, read or not, to release the request.

    Attributes:
        object: the whole object's description: ``size`` is the object's, not the range's.
        first, last: the inclusive byte range the body holds (``last`` clamped to
            ``object.size - 1``).
    """

    def __init__(
        self,
        obj: OriginObject,
        first: int,
        last: int,
        pieces: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.object = obj
        self.first = first
        self.last = last
        self._pieces = pieces
        self._close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces

    async def aclose(self) -> None:
        """Release the request (idempotent)."""
        close, self._close = self._close, None
        try:
            with contextlib.suppress(Exception):
                await self._pieces.aclose()  # type: ignore[attr-defined]
        finally:
            if close is not None:
                await close()


class BlockingRangeRead:
    """An open ranged GET read by a worker thread (:meth:`Origin.open_range_blocking`): the
    object's attributes and the body of the range, as :class:`RangeRead` holds them.

    :meth:`read` the body (blocking); always close it, read or not: :meth:`close` from the
    thread, or :meth:`aclose` on the event loop (as for a :class:`RangeRead`).

    Attributes:
        object: the whole object's description: ``size`` is the object's, not the range's.
        first, last: the inclusive byte range the body holds (``last`` clamped to
            ``object.size - 1``; ``first`` 0 if the origin ignored the range).
    """

    def __init__(
        self, obj: OriginObject, first: int, last: int, read: Callable[[int], bytes], close: Callable[[], None]
    ) -> None:
        self.object = obj
        self.first = first
        self.last = last
        self._read = read
        self._close: Callable[[], None] | None = close

    def read(self, n: int) -> bytes:
        """The next bytes of the body, at most ``n``: fewer only at its end (``b""`` after it).

        Raises:
            ServiceUnavailable: the origin went away or stalled past its timeout.
        """
        return self._read(n)

    def close(self) -> None:
        """Release the request (idempotent)."""
        close, self._close = self._close, None
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    async def aclose(self) -> None:
        """:meth:`close`, for the event loop (it does not block: the connection is dropped,
        not drained)."""
        self.close()


class Origin(abc.ABC):
    """A durable object store. Safe for concurrent use by many tasks of one event loop.

    An origin with :attr:`blocking_reads` also serves :meth:`open_range_blocking` to worker
    threads, concurrently with the event loop's calls.
    """

    name: str = "origin"

    blocking_reads: bool = False
    """Whether :meth:`open_range_blocking` is served: a fill then moves a range's bytes in a
    worker thread (origin socket to chunk file), none of them through the event loop."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients/connections. Called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients/connections."""

    # -- buckets -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_buckets(self) -> list[OriginBucket]:
        """Every bucket (S3) or container (Azure) or top-level directory (file), by name."""

    @abc.abstractmethod
    async def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; succeeds if it already exists (idempotent)."""

    @abc.abstractmethod
    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty ``bucket``; succeeds if it does not exist (idempotent).

        Raises:
            BucketNotEmpty: the bucket still holds objects.
        """

    @abc.abstractmethod
    async def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists in the origin."""

    # -- objects -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def head_object(self, bucket: str, key: str) -> OriginObject:
        """Metadata of ``bucket/key``.

        Raises:
            NoSuchBucket, NoSuchKey, ServiceUnavailable.
        """

    @abc.abstractmethod
    def get_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes ``first..last`` (inclusive) of ``bucket/key`` as they arrive.

        ``if_match`` is an origin ETag: if the object changed since, raise
        ``PreconditionFailed`` instead of returning bytes of another version.

        Yields:
            Pieces of any size, in order, adding up to ``last - first + 1`` bytes.

        Raises:
            NoSuchBucket, NoSuchKey, PreconditionFailed, InvalidRange, ServiceUnavailable
            (also mid-stream, when the origin goes away).
        """

    async def open_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> RangeRead:
        """Open a ranged GET of bytes ``first..last`` (inclusive) of ``bucket/key``: the
        object's attributes come with the range's body, from one request (no HEAD first),
        where the backend allows it. ``last`` past the end is clamped to the end.

        This default is a HEAD, then :meth:`get_range` ``If-Match`` the ETag it gave
        (consistent, one round trip more); the backends override it.

        Raises:
            NoSuchBucket, NoSuchKey, PreconditionFailed, ServiceUnavailable; InvalidRange:
            ``first`` is at or past the end (an empty object has no byte to range over).
        """
        obj = await self.head_object(bucket, key)
        if first >= obj.size:
            raise errors.InvalidRange(f"bytes={first}-{last} of {obj.size}", resource=f"{bucket}/{key}")
        last = min(last, obj.size - 1)
        return RangeRead(obj, first, last, aiter(self.get_range(bucket, key, first, last, if_match=if_match or obj.etag)))

    def open_range_blocking(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> BlockingRangeRead:
        """:meth:`open_range` for a worker thread: open a ranged GET of bytes ``first..last``
        (inclusive; ``last`` past the end is clamped) of ``bucket/key`` (``If-Match``
        ``if_match``), blocking until the origin answers; the object's attributes come
        with the body, which :meth:`BlockingRangeRead.read` reads.

        Raises:
            NotImplementedError: the origin has no blocking reads (:attr:`blocking_reads`).
            NoSuchBucket, NoSuchKey, PreconditionFailed, ServiceUnavailable; InvalidRange:
            ``first`` is at or past the end.
        """
        raise NotImplementedError(f"the {self.name} origin has no blocking reads")

    @abc.abstractmethod
    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        *,
        size: int,
        content_type: str = "binary/octet-stream",
        metadata: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        etag: str = "",
        hlc: int = 0,
        site: str = "",
        tags: dict[str, str] | None = None,
    ) -> str:
        """Write ``size`` bytes from ``body`` as ``bucket/key``, replacing any object there.

        Atomic for readers: the old object or the whole new one, never a partial one. Large
        objects go up in parts (S3 multipart upload, Azure staged blocks). ``etag`` is
        edgecache's ETag for the bytes (MD5 hex, or ``hex-N``), stored where the backend
        allows. ``tags`` (``{key: value}``, S3's rules already checked) become the object's
        tags (see :meth:`put_tags`). Creates the bucket if it does not exist.

        ``hlc``/``site`` (federation; ``hlc`` 0: not stamped) are stored with the object and
        read back in :class:`OriginObject`; a stamped write never replaces an object with a
        larger ``(hlc, site)``: compared under the file origin's lock, and for S3 and Azure
        compared with a HEAD and then written conditionally on the ETag seen (``If-Match``,
        or ``If-None-Match: *`` where there was none), so a write in between is not lost.

        Returns:
            The origin's ETag of the new object (hex, no quotes).

        Raises:
            OriginHoldsNewer: the origin holds a newer version; nothing was written.
            ServiceUnavailable: the origin could not be reached, or (stamped) the object
                changed between the comparison and the write; nothing was written.
        """

    async def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        """The tags of ``bucket/key`` (``{}``: none). This default reads them from
        :meth:`head_object`, for origins that describe them there.

        Raises:
            NoSuchBucket, NoSuchKey, ServiceUnavailable.
        """
        return (await self.head_object(bucket, key)).tags or {}

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> str | None:
        """Replace the tags of the existing object ``bucket/key`` with ``tags`` (``{}``:
        remove them); the object's bytes and other metadata stay as they are.

        Returns:
            The object's new origin ETag if changing its tags changed it, else ``None``.

        Raises:
            NoSuchBucket, NoSuchKey, ServiceUnavailable.
        """
        raise errors.NotImplementedError_(f"{self.name}: object tags are not supported")

    @abc.abstractmethod
    async def delete_object(self, bucket: str, key: str, *, hlc: int = 0, site: str = "") -> None:
        """Delete ``bucket/key``; succeeds if it does not exist (idempotent).

        With ``hlc`` (a federated delete's stamp): an object with a larger ``(hlc, site)``
        is kept (compared under the file origin's lock; for S3 and Azure by a HEAD just
        before the delete: a write landing in between can be deleted — docs/architecture.md,
        Federation).

        Raises:
            OriginHoldsNewer: the origin holds a newer version; nothing was deleted.
        """

    @abc.abstractmethod
    def iter_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject]:
        """Every object of ``bucket`` whose key starts with ``prefix`` and sorts after
        ``start_after``, in UTF-8 binary key order, fetched page by page as consumed.

        Raises:
            NoSuchBucket, ServiceUnavailable.
        """

    async def iter_level(
        self, bucket: str, *, prefix: str = "", delimiter: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject | str]:
        """One level of ``bucket`` under ``prefix``: the objects whose key has no
        ``delimiter`` after ``prefix``, and the common prefixes (``str``, ending with
        ``delimiter``) that roll up the others, merged in UTF-8 binary order.

        Objects come after ``start_after``; a common prefix comes if it holds a key after
        ``start_after`` and is not ``start_after`` itself (a page that ended on it). With no
        ``delimiter``, the same as :meth:`iter_objects`. This default rolls up
        :meth:`iter_objects`; an origin that can read one level directly overrides it.

        Raises:
            NoSuchBucket, ServiceUnavailable.
        """
        skip = ""
        async for obj in self.iter_objects(bucket, prefix=prefix, start_after=start_after):
            if skip and obj.key.startswith(skip):
                continue
            common = common_prefix(obj.key, prefix, delimiter)
            if not common:
                yield obj
                continue
            skip = common
            if common != start_after:
                yield common


def common_prefix(key: str, prefix: str, delimiter: str) -> str:
    """The common prefix ``key`` rolls up into (through the first ``delimiter`` after
    ``prefix``), or ``""`` if it rolls up into none."""
    if not delimiter:
        return ""
    idx = key.find(delimiter, len(prefix))
    return key[: idx + len(delimiter)] if idx >= 0 else ""
