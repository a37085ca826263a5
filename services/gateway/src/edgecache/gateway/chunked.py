"""Streaming decoder for ``Content-Encoding: aws-chunked`` request bodies.

An aws-chunked body frames the object bytes as chunks, optionally followed by
trailing headers (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html)::

    <hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n      (repeated)
    0[;chunk-signature=<sig>]\\r\\n
    [x-amz-checksum-<alg>:<base64>\\r\\n]                    (trailer variants)
    [x-amz-trailer-signature:<sig>\\r\\n]                    (signed trailer variant)
    \\r\\n

The decoder passes data through as it arrives: it buffers at most one framing
line (bounded by :data:`MAX_LINE_BYTES`), never a chunk, so its memory does
not depend on chunk size. Data is therefore yielded *before* the signature of
its chunk and the trailing checksum are checked: a consumer must treat the
bytes as provisional until iteration ends without an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Protocol

from edgecache.common import errors
from edgecache.common.checksums import ALGORITHMS

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

__all__ = [
    "MAX_LINE_BYTES",
    "MIN_CHUNK_BYTES",
    "SIGNED_PAYLOAD",
    "SIGNED_PAYLOAD_TRAILER",
    "STREAMING_MODES",
    "UNSIGNED_PAYLOAD_TRAILER",
    "ChunkedDecoder",
    "SigningContext",
    "parse_trailer_names",
]

SIGNED_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = frozenset({SIGNED_PAYLOAD, SIGNED_PAYLOAD_TRAILER, UNSIGNED_PAYLOAD_TRAILER})

MAX_LINE_BYTES = 4096  # longest framing line (chunk header or trailer) accepted
# S3's smallest chunk but the last one with data: bounds the framing work per byte (one-byte
# chunks cost ~30 µs each in this decoder alone)
MIN_CHUNK_BYTES = 8192
_MAX_TRAILERS = 8
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")  # < 2**60 bytes
_SIGNATURE = re.compile(rb"[0-9a-f]{64}")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
_CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
_TRAILER_ALGORITHM = "AWS4-HMAC-SHA256-TRAILER"
_CHECKSUM_PREFIX = "x-amz-checksum-"


class SigningContext(Protocol):
    """What chunk signatures chain from; :class:`edgecache.gateway.sigv4.AuthContext` is one."""

    @property
    def amz_date(self) -> str: ...  # yyyymmddThhmmssZ
    @property
    def scope(self) -> str: ...  # date/region/s3/aws4_request
    @property
    def signing_key(self) -> bytes: ...
    @property
    def seed_signature(self) -> str: ...  # hex signature of the request headers


def parse_trailer_names(x_amz_trailer: str | None) -> tuple[str, ...]:
    """Parse an ``x-amz-trailer`` header into checksum algorithm names.

    Args:
        x_amz_trailer: the header value, e.g. ``"x-amz-checksum-crc32"``
            (comma-separated if several), or ``None`` when absent.

    Returns:
        Algorithm names in :data:`edgecache.common.checksums.ALGORITHMS`, e.g. ``("crc32",)``.

    Raises:
        InvalidArgument: a name is not an ``x-amz-checksum-*`` header this
            decoder can verify.
    """
    names: list[str] = []
    for raw in (x_amz_trailer or "").split(","):
        name = raw.strip().lower()
        if not name:
            continue
        algorithm = name.removeprefix(_CHECKSUM_PREFIX)
        if not name.startswith(_CHECKSUM_PREFIX) or algorithm not in ALGORITHMS:
            raise errors.InvalidArgument(f"Unsupported trailing header in x-amz-trailer: {name}")
        if algorithm not in names:
            names.append(algorithm)
    return tuple(names)


class _Reader:
    """Reads framing lines and runs of data from an async iterator of byte pieces of any size."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._pieces = aiter(body)
        self._piece = b""
        self._pos = 0

    async def _fill(self) -> bool:
        """Make unread bytes available; ``False`` at the end of the body."""
        while self._pos >= len(self._piece):
            try:
                piece = await anext(self._pieces)
            except StopAsyncIteration:
                return False
            self._piece, self._pos = bytes(piece), 0
        return True

    async def at_eof(self) -> bool:
        return not await self._fill()

    async def line(self, limit: int = MAX_LINE_BYTES, *, eof_ok: bool = False) -> bytes | None:
        """Read one line ended by CRLF, without the CRLF.

        Args:
            limit: longest line accepted, in bytes, CRLF excluded.
            eof_ok: accept the body ending at or inside this line: returns the
                partial line, or ``None`` if no byte of it arrived.

        Raises:
            IncompleteBody: the body ended first (and not ``eof_ok``).
            InvalidArgument: the line is longer than ``limit`` or ends in a bare LF.
        """
        acc = bytearray()
        while True:
            if not await self._fill():
                if eof_ok:
                    return bytes(acc) if acc else None
                raise errors.IncompleteBody("The aws-chunked body ended inside its framing.")
            room = limit + 2 - len(acc)
            end = self._piece.find(b"\n", self._pos, self._pos + room)
            stop = end + 1 if end >= 0 else min(len(self._piece), self._pos + room)
            acc += self._piece[self._pos : stop]
            self._pos = stop
            if end >= 0:
                if not acc.endswith(b"\r\n"):
                    raise errors.InvalidArgument("aws-chunked framing lines must end with CRLF.")
                return bytes(acc[:-2])
            if len(acc) >= limit + 2:
                raise errors.InvalidArgument("aws-chunked framing line too long.")

    async def data(self, n: int) -> AsyncIterator[bytes]:
        """Yield exactly ``n`` bytes in pieces as they arrive (no copy when a whole piece fits).

        Raises:
            IncompleteBody: the body ended first.
        """
        while n > 0:
            if not await self._fill():
                raise errors.IncompleteBody("The aws-chunked body ended inside a chunk.")
            take = min(n, len(self._piece) - self._pos)
            if self._pos == 0 and take == len(self._piece):
                out = self._piece
            else:
                out = self._piece[self._pos : self._pos + take]
            self._pos += take
            n -= take
            yield out


class ChunkedDecoder:
    """Decode and verify an aws-chunked body while streaming it.

    Iterate it once (``async for piece in decoder``) to get the decoded object
    bytes; after a complete iteration :attr:`trailers` holds the trailing
    checksums, e.g. ``{"crc32": "DUoRhQ=="}`` (algorithm name -> base64 value
    as sent), each already verified against the decoded bytes.

    Args:
        body: the raw request body, as pieces of any size split anywhere.
        mode: the request's ``x-amz-content-sha256``, one of :data:`STREAMING_MODES`.
        signing: the verified request's signing context; required for the two
            signed modes, ignored for ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``.
        trailer_names: algorithms announced in ``x-amz-trailer``, see
            :func:`parse_trailer_names`; the body must send exactly these.
        decoded_length: ``x-amz-decoded-content-length`` in bytes, if given.
        min_chunk_bytes: the smallest size of a chunk followed by another one with data.

    Raises (during iteration):
        SignatureDoesNotMatch: a chunk or trailer signature is wrong.
        BadDigest: a trailing checksum does not match the decoded bytes.
        InvalidDigest: a trailing checksum is not valid base64 of the right length.
        IncompleteBody: the body ends early, or its decoded length differs
            from ``decoded_length``, or an announced trailer is missing.
        InvalidArgument: malformed framing, or an unannounced trailer.
        InvalidChunkSizeError: a chunk smaller than ``min_chunk_bytes`` that is not the last.
    """

    def __init__(
        self,
        body: AsyncIterable[bytes],
        mode: str,
        *,
        signing: SigningContext | None = None,
        trailer_names: tuple[str, ...] = (),
        decoded_length: int | None = None,
        min_chunk_bytes: int = MIN_CHUNK_BYTES,
    ) -> None:
        if mode not in STREAMING_MODES:
            raise ValueError(f"not an aws-chunked payload mode: {mode!r}")
        self._signing = signing if mode != UNSIGNED_PAYLOAD_TRAILER else None
        if self._signing is None and mode != UNSIGNED_PAYLOAD_TRAILER:
            raise ValueError(f"{mode} needs a signing context")
        self._body = body
        self._allows_trailers = mode != SIGNED_PAYLOAD
        self._trailer_names = trailer_names
        self._decoded_length = decoded_length
        self._min_chunk = min_chunk_bytes
        self.trailers: dict[str, str] = {}

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader = _Reader(self._body)
        checksums = {name: ALGORITHMS[name]() for name in self._trailer_names}
        previous = self._signing.seed_signature if self._signing else ""
        total = 0
        short = False  # the previous chunk was below min_chunk_bytes
        while True:
            size, signature = self._parse_chunk_header(await reader.line())
            if size:
                if short:
                    raise errors.InvalidChunkSizeError()
                short = size < self._min_chunk
            total += size
            if self._decoded_length is not None and total > self._decoded_length:
                raise errors.IncompleteBody(
                    "The decoded body is longer than x-amz-decoded-content-length."
                )
            digest = hashlib.sha256() if self._signing else None
            async for piece in reader.data(size):
                for running in (digest, *checksums.values()):
                    if running is not None:
                        running.update(piece)
                yield piece
            if size and await reader.line(0) != b"":
                raise errors.InvalidArgument("An aws-chunked chunk is longer than its size.")
            if digest is not None:
                hashes = (_EMPTY_SHA256, digest.hexdigest())
                previous = self._check_signature(_CHUNK_ALGORITHM, previous, hashes, signature)
            if size == 0:
                break
        await self._read_trailers(reader, previous)
        if not await reader.at_eof():
            raise errors.InvalidArgument("Unexpected data after the end of the aws-chunked body.")
        if self._decoded_length is not None and total != self._decoded_length:
            raise errors.IncompleteBody(
                "The decoded body is shorter than x-amz-decoded-content-length."
            )
        for name, running in checksums.items():
            _check_checksum(name, self.trailers[name], running.digest())

    def _parse_chunk_header(self, line: bytes) -> tuple[int, bytes | None]:
        """``b"400;chunk-signature=<hex>"`` -> ``(1024, b"<hex>")``; signature ``None`` if unsigned."""
        size, _, extension = line.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size):
            raise errors.InvalidArgument("Invalid aws-chunked chunk size.")
        if self._signing is None:
            return int(size, 16), None
        name, _, signature = extension.partition(b"=")
        if name != b"chunk-signature" or not _SIGNATURE.fullmatch(signature):
            raise errors.InvalidArgument("Missing or malformed aws-chunked chunk-signature.")
        return int(size, 16), signature

    def _check_signature(
        self, algorithm: str, previous: str, hashes: tuple[str, ...], given: bytes | None
    ) -> str:
        """Verify one chained signature and return it (hex), the next one's ``previous``.

        The string to sign is ``algorithm``, date, scope, ``previous`` and the
        hex ``hashes``, one per line.

        Raises:
            SignatureDoesNotMatch: ``given`` is not the expected signature, or is missing.
        """
        signing = self._signing
        assert signing is not None
        to_sign = "\n".join((algorithm, signing.amz_date, signing.scope, previous, *hashes))
        expected = hmac.new(signing.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        if given is None or not hmac.compare_digest(expected.encode(), given):
            raise errors.SignatureDoesNotMatch()
        return expected

    async def _read_trailers(self, reader: _Reader, previous: str) -> None:
        """Read the trailer section up to the final empty line into :attr:`trailers`.

        Lenient where clients differ: a body may end where its final CRLF (or
        the CRLF of its last trailer) belongs, and a blank line may precede
        the trailers.
        """
        canonical: list[str] = []
        signature: bytes | None = None
        for i in range(_MAX_TRAILERS + 2):
            line = await reader.line(eof_ok=True)
            if line == b"" and i == 0 and self._allows_trailers and not await reader.at_eof():
                continue  # some clients send a blank line between the final chunk and trailers
            if not line:
                break
            if signature is not None or not self._allows_trailers:
                raise errors.InvalidArgument("Unexpected trailing header in aws-chunked body.")
            name, sep, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if not sep:
                raise errors.InvalidArgument("Malformed trailing header in aws-chunked body.")
            if name == _TRAILER_SIGNATURE and self._signing is not None:
                signature = value.encode("latin-1")
                continue
            algorithm = name.removeprefix(_CHECKSUM_PREFIX)
            if algorithm not in self._trailer_names or algorithm in self.trailers:
                raise errors.InvalidArgument(
                    f"Trailing header {name} was not announced in x-amz-trailer."
                )
            self.trailers[algorithm] = value
            canonical.append(f"{name}:{value}\n")
        else:
            raise errors.InvalidArgument("Too many trailing headers in aws-chunked body.")
        missing = [n for n in self._trailer_names if n not in self.trailers]
        if missing:
            raise errors.IncompleteBody(f"Missing trailing header x-amz-checksum-{missing[0]}.")
        if self._signing is not None and self._allows_trailers:
            trailer_hash = hashlib.sha256("".join(canonical).encode("latin-1")).hexdigest()
            self._check_signature(_TRAILER_ALGORITHM, previous, (trailer_hash,), signature)


def _check_checksum(algorithm: str, value: str, actual: bytes) -> None:
    """Compare a base64 checksum as sent with the digest computed.

    Raises:
        InvalidDigest: ``value`` is not base64 of a digest of the right size.
        BadDigest: the checksums differ.
    """
    try:
        sent = base64.b64decode(value, validate=True)
    except ValueError:
        sent = b""
    if len(sent) != len(actual):
        raise errors.InvalidDigest(
            f"Value for x-amz-checksum-{algorithm} trailing header is invalid."
        )
    if not hmac.compare_digest(sent, actual):
        raise errors.BadDigest(
            f"The {algorithm.upper()} you specified did not match the calculated checksum."
        )
