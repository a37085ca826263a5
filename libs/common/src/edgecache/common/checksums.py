"""Body digests computed as bytes stream by: MD5 (the ETag) and S3's ``x-amz-checksum-*``.

Values are base64 of the big-endian digest, as S3 sends them; the MD5 is also given in
hex for the ETag. Algorithms: ``crc32`` (zlib), ``crc32c`` (crc32c package), ``crc64nvme``
(awscrt, the AWS SDKs' own native code), ``sha1``, ``sha256`` (hashlib).

Multipart uploads (:func:`multipart_checksum`) have one of S3's two checksum types:
``COMPOSITE`` (the checksum of the concatenated part checksums, suffixed ``-N``) or
``FULL_OBJECT`` (the CRC of the whole object, combined from the parts' CRCs without reading
a byte again; CRC algorithms only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

import awscrt.checksums
import crc32c

from edgecache.common import errors

__all__ = [
    "ALGORITHMS",
    "COMPOSITE",
    "DIGEST_BYTES",
    "FULL_OBJECT",
    "Digests",
    "RunningChecksum",
    "checksum_type_of",
    "multipart_checksum",
    "object_checksum",
    "verify_content_md5",
]


class RunningChecksum(Protocol):
    """What a running checksum offers: hashlib's ``update``/``digest``."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC with the hashlib ``update``/``digest`` interface (big-endian digest of
    ``width`` bytes: 4 for CRC32/CRC32C, 8 for CRC64NVME)."""

    def __init__(self, fn: Callable[[bytes, int], int], width: int = 4) -> None:
        self._fn, self._value, self._width = fn, 0, width

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


# Algorithm name (lower case, as in ``x-amz-checksum-<name>``) -> running-checksum factory.
ALGORITHMS: dict[str, Callable[[], RunningChecksum]] = {
    "crc32": lambda: _Crc(zlib.crc32),
    "crc32c": lambda: _Crc(crc32c.crc32c),
    "crc64nvme": lambda: _Crc(awscrt.checksums.crc64nvme, 8),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}
# Algorithm -> digest length in bytes (a value is base64 of exactly this many bytes).
DIGEST_BYTES: dict[str, int] = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
# CRC algorithm -> (crc1, crc2, len2) -> the CRC of the two byte strings concatenated.
_COMBINE: dict[str, Callable[[int, int, int], int]] = {
    "crc32": awscrt.checksums.combine_crc32,
    "crc32c": awscrt.checksums.combine_crc32c,
    "crc64nvme": awscrt.checksums.combine_crc64nvme,
}
COMPOSITE, FULL_OBJECT = "COMPOSITE", "FULL_OBJECT"


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


def multipart_checksum(algorithm: str | None, checksum_type: str | None) -> tuple[str, str]:
    """The checksum a multipart upload will have, from CreateMultipartUpload's
    ``x-amz-checksum-algorithm`` and ``x-amz-checksum-type`` headers (either may be absent).

    Returns:
        ``(algorithm, type)``: the lower-case algorithm (``""`` for none) and ``COMPOSITE`` or
        ``FULL_OBJECT`` (``""`` for none). Without a type, CRC64NVME is ``FULL_OBJECT`` and
        the others ``COMPOSITE``, as in S3.

    Raises:
        InvalidRequest: an unknown algorithm or type, a type without an algorithm,
            ``FULL_OBJECT`` with SHA-1/SHA-256, ``COMPOSITE`` with CRC64NVME.
    """
    name = (algorithm or "").lower()
    kind = (checksum_type or "").upper()
    if not name:
        if kind:
            raise errors.InvalidRequest(
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            )
        return "", ""
    if name not in ALGORITHMS:
        raise errors.InvalidRequest(f"Checksum algorithm {algorithm} is not supported.")
    if kind not in ("", COMPOSITE, FULL_OBJECT):
        raise errors.InvalidRequest(
            f"Value for x-amz-checksum-type header is invalid: {checksum_type}."
        )
    if not kind:
        kind = FULL_OBJECT if name == "crc64nvme" else COMPOSITE
    if kind == FULL_OBJECT and name not in _COMBINE:
        raise errors.InvalidRequest(
            f"The {FULL_OBJECT} checksum type cannot be used with the {name} checksum algorithm."
        )
    if kind == COMPOSITE and name == "crc64nvme":
        raise errors.InvalidRequest(
            f"The {COMPOSITE} checksum type cannot be used with the {name} checksum algorithm."
        )
    return name, kind


def object_checksum(algorithm: str, checksum_type: str, parts: list[tuple[str, int]]) -> str:
    """The checksum of a completed multipart upload from its parts' checksums.

    Args:
        algorithm: a key of :data:`ALGORITHMS` (a key of the CRCs for ``FULL_OBJECT``).
        checksum_type: ``COMPOSITE`` or ``FULL_OBJECT``.
        parts: ``(base64 checksum, size in bytes)`` of each part, in part-number order.

    Returns:
        base64: ``COMPOSITE``: the checksum of the concatenated part digests, suffixed
        ``-<number of parts>``; ``FULL_OBJECT``: the CRC of the whole object.
    """
    digests = [base64.b64decode(value) for value, _ in parts]
    if checksum_type == FULL_OBJECT:
        combine = _COMBINE[algorithm]
        crc = int.from_bytes(digests[0], "big")
        for digest, (_, size) in zip(digests[1:], parts[1:], strict=True):
            crc = combine(crc, int.from_bytes(digest, "big"), size)
        return base64.b64encode(crc.to_bytes(DIGEST_BYTES[algorithm], "big")).decode()
    running = _new(algorithm)
    for digest in digests:
        running.update(digest)
    return f"{base64.b64encode(running.digest()).decode()}-{len(parts)}"


def checksum_type_of(value: str) -> str:
    """``COMPOSITE`` for a stored value with a ``-N`` part count, else ``FULL_OBJECT``."""
    return COMPOSITE if "-" in value else FULL_OBJECT
