"""The chunk file format, and the one function that reads and verifies a chunk file.

A chunk file is the payload followed by a 20-byte little-endian trailer (``struct`` format
``<4sBBHQI``, :data:`TRAILER`):

    ======  =====  ==================================================
    offset  bytes  field
    ======  =====  ==================================================
    0       4      magic ``b"ECCK"``
    4       1      format version, 1
    5       1      flags, 0
    6       2      reserved, 0
    8       8      payload length in bytes (= file size - 20)
    16      4      CRC32C (Castagnoli) of the payload
    ======  =====  ==================================================

The cache node writes these files (``edgecache.cachenode.chunkformat`` has the directory
layout and the writing side); the cache node and the gateway's short-circuit reads
(``edgecache.gateway.shortcircuit``) both read them with :func:`read_verified`, so a byte
that fails its check is never served by either.

Everything here blocks: call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from pathlib import Path

import crc32c

__all__ = [
    "MAGIC",
    "TRAILER",
    "VERSION",
    "InvalidChunk",
    "pack_trailer",
    "read_verified",
    "read_verified_into",
]

TRAILER = struct.Struct("<4sBBHQI")
"""The 20-byte chunk trailer: magic, version, flags, reserved, payload length, CRC32C."""
MAGIC = b"ECCK"
VERSION = 1


class InvalidChunk(Exception):
    """Raised in a reader thread: the file is not a valid chunk."""


def pack_trailer(size: int, crc: int) -> bytes:
    """The trailer of a payload of ``size`` bytes whose CRC32C is ``crc``."""
    return TRAILER.pack(MAGIC, VERSION, 0, 0, size, crc)


def read_verified(path: Path | str, *, touch: bool = True) -> bytes:
    """Read a chunk file, verify trailer and CRC32C; return the payload.

    Args:
        path: the chunk file.
        touch: set its access time to now (the cache node's eviction order after a
            restart; best effort). Readers other than the owning node pass ``False``.

    Raises:
        FileNotFoundError: no such file.
        InvalidChunk: bad trailer, length or checksum, or an I/O error (EIO) while reading.
        OSError: another error opening or reading the file.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            length = st.st_size - TRAILER.size
            if length <= 0:
                raise InvalidChunk(f"file of {st.st_size} B is too short")
            payload = f.read(length)
            trailer = f.read(TRAILER.size + 1)
            if touch:
                try:
                    os.utime(f.fileno(), ns=(time.time_ns(), st.st_mtime_ns))
                except OSError:
                    pass
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise InvalidChunk(f"I/O error: {exc}") from exc
        raise
    if len(payload) != length or len(trailer) != TRAILER.size:
        raise InvalidChunk("file changed size while being read")
    _verify(trailer, payload)
    return payload


def read_verified_into(path: Path | str, buffer: bytearray) -> memoryview:
    """:func:`read_verified` into ``buffer`` (grown if smaller than the file; not touched):
    for a reader that reuses its buffers. Returns a view of the payload in ``buffer``;
    release it before resizing ``buffer``.

    Raises:
        As :func:`read_verified`.
    """
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= TRAILER.size:
                raise InvalidChunk(f"file of {size} B is too short")
            if len(buffer) < size:
                buffer.extend(bytes(size - len(buffer)))
            with memoryview(buffer) as whole:
                view = whole[:size]
                done = 0
                while done < size:
                    n = f.readinto(view[done:])
                    if not n:
                        break
                    done += n
                grown = f.read(1)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise InvalidChunk(f"I/O error: {exc}") from exc
        raise
    if done != size or grown:
        view.release()
        raise InvalidChunk("file changed size while being read")
    length = size - TRAILER.size
    payload = view[:length]
    try:
        _verify(bytes(view[length:]), payload)
    except InvalidChunk:
        payload.release()
        view.release()
        raise
    view.release()
    return payload


def _verify(trailer: bytes, payload: bytes | memoryview) -> None:
    magic, version, flags, reserved, stored_length, stored_crc = TRAILER.unpack(trailer)
    if (magic, version, flags, reserved) != (MAGIC, VERSION, 0, 0):
        raise InvalidChunk(f"bad trailer {trailer.hex()}")
    if stored_length != len(payload):
        raise InvalidChunk(f"trailer says {stored_length} B, file holds {len(payload)} B")
    crc = crc32c.crc32c(payload)
    if crc != stored_crc:
        raise InvalidChunk(f"crc32c {crc:08x} != stored {stored_crc:08x}")
