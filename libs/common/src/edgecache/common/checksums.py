"""Body digests computed as bytes stream by: MD5 (the ETag) and S3's ``x-amz-checksum-*``.

Values are base64 of the big-endian digest, as S3 sends them; the MD5 is also given in
hex for the ETag. Algorithms: ``crc32`` (zlib), ``crc32c`` (crc32c package), ``sha1``,
``sha256`` (hashlib).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

import crc32c

from edgecache.common import errors

__all__ = ["ALGORITHMS", "Digests", "RunningChecksum", "verify_content_md5"]


class RunningChecksum(Protocol):
    """What a running checksum offers: hashlib's ``update``/``digest``."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC with the hashlib ``update``/``digest`` interface (4-byte big-endian digest)."""

    def __init__(self, fn: Callable[[bytes, int], int]) -> None:
        self._fn, self._value = fn, 0

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


# Algorithm name (lower case, as in ``x-amz-checksum-<name>``) -> running-checksum factory.
ALGORITHMS: dict[str, Callable[[], RunningChecksum]] = {
    "crc32": lambda: _Crc(zlib.crc32),
    "crc32c": lambda: _Crc(crc32c.crc32c),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


def _new(algorithm: str) -> RunningChecksum:
    factory = ALGORITHMS.get(algorithm)
    if factory is None:
        raise errors.InvalidRequest(f"checksum algorithm {algorithm!r} is not supported")
    return factory()


class Digests:
    """MD5 plus the requested ``x-amz-checksum-*`` algorithms over one body.

    Args:
        algorithms: lower-case names, keys of :data:`ALGORITHMS`.

    Raises:
        InvalidRequest: an unsupported algorithm.
    """

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        self._md5 = hashlib.md5()  # noqa: S324 - MD5 is the S3 ETag, not a security hash
        self._others = {a: _new(a) for a in algorithms}
        self.size = 0

    def update(self, data: bytes) -> None:
        self._md5.update(data)
        for h in self._others.values():
            h.update(data)
        self.size += len(data)

    @property
    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    @property
    def md5_digest(self) -> bytes:
        return self._md5.digest()

    def values(self) -> dict[str, str]:
        """Base64 value of every requested algorithm."""
        return {a: base64.b64encode(h.digest()).decode() for a, h in self._others.items()}

    def verify(self, expected: dict[str, str]) -> dict[str, str]:
        """Check ``expected`` (algorithm → base64) against what was computed.

        Returns:
            The verified values, to be stored with the object.

        Raises:
            BadDigest: a value does not match (S3's code for a checksum mismatch).
        """
        got = self.values()
        for algorithm, value in expected.items():
            if got.get(algorithm) != value:
                raise errors.BadDigest(
                    f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )
        return {a: got[a] for a in expected}


def verify_content_md5(content_md5: str | None, md5_digest: bytes) -> None:
    """Check a ``Content-MD5`` header (base64 of the 16-byte MD5) against the body's MD5.

    Raises:
        InvalidDigest: the header is not base64 of 16 bytes.
        BadDigest: it does not match.
    """
    if content_md5 is None:
        return
    try:
        claimed = base64.b64decode(content_md5, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidDigest() from exc
    if len(claimed) != 16:
        raise errors.InvalidDigest()
    if claimed != md5_digest:
        raise errors.BadDigest()
