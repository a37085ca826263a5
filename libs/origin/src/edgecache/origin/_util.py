"""Helpers shared by the origin backends: validation, header shapes, part streaming.

Private to :mod:`edgecache.origin`; nothing here talks to a backend.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from edgecache.common import errors, names

__all__ = [
    "PART_CONCURRENCY",
    "SYSTEM_HEADERS",
    "check_bucket_name",
    "check_key",
    "check_range",
    "part_size_for",
    "read_all",
    "read_parts",
    "strip_etag",
    "system_headers",
    "upload_parts",
]

T = TypeVar("T")

PART_CONCURRENCY = 4  # parts in flight per large upload; memory: this many part buffers

# The system headers an origin keeps with an object, as lowercase HTTP header names (the keys
# of ``OriginObject.headers``). Anything else passed in ``headers=`` is dropped, by every
# backend alike, so an object reads back the same whatever the origin.
SYSTEM_HEADERS: tuple[str, ...] = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)


def check_bucket_name(bucket: str) -> None:
    """Check ``bucket`` against S3's naming rules, which also keep it a safe directory name.

    Raises:
        InvalidBucketName: it breaks a rule (see :func:`edgecache.common.names.validate_bucket_name`).
    """
    names.validate_bucket_name(bucket)


def check_key(bucket: str, key: str) -> None:
    """Check that ``key`` is a non-empty S3 key of at most 1024 bytes of valid UTF-8.

    Raises:
        InvalidArgument: the key is empty or holds a lone surrogate.
        KeyTooLongError: the key is longer than 1024 bytes.
    """
    names.validate_key(bucket, key)
    try:
        key.encode()
    except UnicodeEncodeError as exc:
        raise errors.InvalidArgument(f"key is not valid UTF-8: {exc}", resource=bucket) from None


def check_range(bucket: str, key: str, first: int, last: int) -> None:
    """Reject a range no object could satisfy (``first < 0`` or ``first > last``).

    Raises:
        InvalidRange: the range is empty or negative.
    """
    if first < 0 or last < first:
        raise errors.InvalidRange(f"bytes={first}-{last}", resource=f"{bucket}/{key}")


def strip_etag(etag: str | None) -> str:
    """An ETag as the origin interface carries it: without the surrounding quotes."""
    return (etag or "").strip('"')


def system_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The members of :data:`SYSTEM_HEADERS` in ``headers``, names lowercased, empty dropped."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        low = name.lower()
        if low in SYSTEM_HEADERS and value:
            out[low] = value
    return out


def part_size_for(size: int, part_bytes: int, *, min_bytes: int, max_parts: int) -> int:
    """The part size for a ``size``-byte upload: ``part_bytes``, raised to the backend's
    minimum part size and to whatever keeps the part count within ``max_parts``."""
    return max(part_bytes, min_bytes, math.ceil(size / max_parts))


async def read_parts(
    body: AsyncIterator[bytes], *, size: int, part_size: int
) -> AsyncIterator[bytes]:
    """Regroup ``body`` into parts of exactly ``part_size`` bytes (the last one shorter).

    Yields:
        ``ceil(size / part_size)`` parts, or one empty part when ``size`` is 0. Holds at most
        one part in memory beyond the piece being split.

    Raises:
        IncompleteBody: ``body`` holds more or fewer than ``size`` bytes (raised as soon as
            it is known: after the last piece, or at the first byte past ``size``).
    """
    pending: list[memoryview] = []
    pending_len = 0
    total = 0
    async for piece in body:
        if not piece:
            continue
        total += len(piece)
        if total > size:
            raise errors.IncompleteBody(f"body is longer than its size, {size} bytes")
        view = memoryview(piece)
        while pending_len + len(view) >= part_size:
            take = part_size - pending_len
            pending.append(view[:take])
            yield b"".join(pending)
            pending, pending_len, view = [], 0, view[take:]
        if view:
            pending.append(view)
            pending_len += len(view)
    if total != size:
        raise errors.IncompleteBody(f"body has {total} bytes, expected {size}")
    if pending_len or size == 0:
        yield b"".join(pending)


async def read_all(body: AsyncIterator[bytes], *, size: int) -> bytes:
    """All ``size`` bytes of ``body`` in one buffer (for single-request uploads only).

    Raises:
        IncompleteBody: ``body`` holds more or fewer than ``size`` bytes.
    """
    out = b""
    async for part in read_parts(body, size=size, part_size=max(size, 1)):
        out = part
    return out


async def upload_parts(
    body: AsyncIterator[bytes],
    *,
    size: int,
    part_size: int,
    upload: Callable[[int, bytes], Awaitable[T]],
    concurrency: int = PART_CONCURRENCY,
) -> list[T]:
    """Cut ``body`` into parts and ``await upload(index, data)`` for each (``index`` from 0), ``concurrency`` at
    a time; a part is read only when a slot is free, so memory stays at ``concurrency``
    parts.

    Returns:
        ``upload``'s results, in part order.

    Raises:
        The first error of ``upload`` or of reading ``body`` (not an ExceptionGroup); the
        other uploads in flight are cancelled first.
    """
    slots = asyncio.Semaphore(concurrency)
    results: dict[int, T] = {}

    async def one(index: int, data: bytes) -> None:
        try:
            results[index] = await upload(index, data)
        finally:
            slots.release()

    parts = aiter(read_parts(body, size=size, part_size=part_size))
    try:
        async with asyncio.TaskGroup() as group:
            index = 0
            while True:
                await slots.acquire()
                try:
                    data = await anext(parts)
                except StopAsyncIteration:
                    break
                except BaseException:
                    slots.release()
                    raise
                group.create_task(one(index, data))
                index += 1
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    return [results[i] for i in range(len(results))]


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The most telling error of a task group: an S3Error if there is one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, errors.S3Error):
            return exc
    return leaves[0]
