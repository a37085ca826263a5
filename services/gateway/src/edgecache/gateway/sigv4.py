"""Server-side AWS Signature Version 4 verification for S3 requests.

The gateway calls :func:`verify` with the request line and headers as the ASGI
server gives them, before reading the body, then reads the body through
:func:`wrap_body`, which checks whatever the signature promised about it
(a SHA-256, chunk signatures, trailing checksums, the length).

References: https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html
(header, presigned query and aws-chunked variants).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, unquote, unquote_to_bytes

from edgecache.common import errors
from edgecache.gateway.chunked import STREAMING_MODES, ChunkedDecoder, parse_trailer_names
from edgecache.gateway.headers import parse_decimal

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping

__all__ = [
    "ALGORITHM",
    "MAX_EXPIRES_S",
    "UNSIGNED_PAYLOAD",
    "AuthContext",
    "PayloadVerifier",
    "VerifiedBody",
    "policy_signer",
    "request_time",
    "secret_for",
    "verify",
    "wrap_body",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 604800  # one week, the longest a presigned URL may live
_SERVICE, _TERMINATOR = "s3", "aws4_request"
_AMZ_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SPACES = re.compile(r"[ \t\r\n\x0b\x0c]+")
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)


@dataclass(frozen=True)
class AuthContext:
    """A request whose signature was verified.

    Attributes:
        access_key: the access key id that signed it.
        region: the region of the credential scope (the gateway's region).
        amz_date: the request time, ``yyyymmddThhmmssZ``.
        scope: ``yyyymmdd/region/s3/aws4_request``.
        signing_key: the derived SigV4 key for ``scope`` (32 bytes).
        seed_signature: the request signature, lower-case hex; aws-chunked
            chunk signatures chain from it.
        content_sha256: the ``x-amz-content-sha256`` value signed: 64 hex
            digits, ``UNSIGNED-PAYLOAD`` or one of the ``STREAMING-*`` modes.
        presigned: signed in the query string rather than the ``Authorization`` header.
    """

    access_key: str
    region: str
    amz_date: str
    scope: str
    signing_key: bytes = field(repr=False)
    seed_signature: str
    content_sha256: str
    presigned: bool


@dataclass(frozen=True)
class _Claim:
    """What the client says it signed, from the ``Authorization`` header or the query."""

    access_key: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: bytes
    expires_s: int | None  # presigned only
    malformed: type[errors.S3Error]  # the error for a bad claim, per mechanism


def verify(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    credentials: Mapping[str, str],
    region: str,
    now: float,
    max_skew_s: int = 900,
) -> AuthContext:
    """Verify a request signed with SigV4 in its ``Authorization`` header or its query string.

    Args:
        method: the HTTP method, e.g. ``"GET"``.
        raw_path: the path exactly as sent, percent-encoded, without the query
            (ASGI ``scope["raw_path"]``).
        query_string: the raw query, without ``?`` (ASGI ``scope["query_string"]``).
        headers: ``(name, value)`` byte pairs, names lower case (ASGI ``scope["headers"]``).
        credentials: access key id -> secret access key.
        region: the region clients must sign for, e.g. ``"us-east-1"``.
        now: the current time, Unix seconds.
        max_skew_s: the largest difference allowed between ``now`` and the
            request time, seconds (header signatures; presigned URLs may not
            start later than this).

    Returns:
        The verified request, to pass to :func:`wrap_body`.

    Raises:
        AccessDenied: no authentication, an unusable date, unsigned ``x-amz-*``
            headers, or an expired (or not yet valid) presigned URL.
        InvalidRequest: SigV2, or a missing ``x-amz-content-sha256`` header.
        InvalidArgument: an unsupported ``Authorization`` type, both auth
            mechanisms at once, or an unknown ``x-amz-content-sha256`` value.
        AuthorizationHeaderMalformed: a malformed ``Authorization`` header or
            credential scope (wrong region, service or date).
        AuthorizationQueryParametersError: the same for presigned URLs,
            including ``X-Amz-Expires`` outside ``1..604800``.
        InvalidAccessKeyId: the access key is not in ``credentials``.
        RequestTimeTooSkewed: the request time is more than ``max_skew_s`` from ``now``.
        SignatureDoesNotMatch: the signature is wrong.
    """
    headers = headers if isinstance(headers, list) else list(headers)
    if b"X-Amz-Signature=" in query_string:
        key = (method, raw_path, query_string, region)
        known = _presigned.get_raw(key, headers, credentials)
        if known is not None:  # the same URL with the same header bytes: only the clock
            _check_time(known.claim, known.when, now, max_skew_s)
            return known.context
    header_map = _header_map(headers)
    if header_map.get("authorization", ["x"])[0].strip() == "":
        del header_map["authorization"]  # an empty Authorization is no authentication
    if "authorization" not in header_map and b"X-Amz-Signature=" in query_string:
        known = _presigned.get((method, raw_path, query_string, region), header_map, credentials)
        if known is not None:  # the same URL again: only the checks that depend on now
            _check_time(known.claim, known.when, now, max_skew_s)
            _check_signed_headers(known.claim, header_map)
            return known.context
    params = _parse_query(query_string)
    query = {name: value for name, value, _ in reversed(params)}  # first occurrence wins
    authorization = header_map.get("authorization")
    presigned = authorization is None
    if authorization is not None and "X-Amz-Algorithm" in query:
        raise errors.InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified"
        )
    if authorization is not None:
        claim = _header_claim(authorization[0])
        amz_date, when = _header_date(header_map)
    elif "X-Amz-Algorithm" in query:
        claim = _query_claim(query)
        amz_date, when = query["X-Amz-Date"], _parse_amz_date(query["X-Amz-Date"])
        if when is None:
            raise errors.AuthorizationQueryParametersError(
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
            )
    elif "AWSAccessKeyId" in query or "Signature" in query:
        raise _sigv2()
    else:
        raise errors.AccessDenied()

    secret = secret_for(credentials, claim.access_key)
    _check_scope(claim, region, amz_date)
    _check_time(claim, when, now, max_skew_s)
    _check_signed_headers(claim, header_map)
    content_sha256 = _content_sha256(presigned, query, header_map)

    canonical_request = "\n".join(
        (
            method,
            _canonical_path(raw_path),
            _canonical_query(params, presigned),
            "".join(
                f"{n}:{_canonical_value(header_map.get(n, []))}\n" for n in claim.signed_headers
            ),
            ";".join(claim.signed_headers),
            content_sha256,
        )
    )
    scope = f"{claim.scope_date}/{region}/{_SERVICE}/{_TERMINATOR}"
    string_to_sign = "\n".join(
        (
            ALGORITHM,
            amz_date,
            scope,
            # latin-1 gives back the header bytes as sent; the rest is ASCII, except in a
            # forged X-Amz-SignedHeaders, which "replace" turns into a mismatch.
            hashlib.sha256(canonical_request.encode("latin-1", "replace")).hexdigest(),
        )
    )
    signing_key = _signing_key(secret, claim.scope_date, region)
    signature = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), claim.signature):
        raise errors.SignatureDoesNotMatch()
    context = AuthContext(
        access_key=claim.access_key,
        region=region,
        amz_date=amz_date,
        scope=scope,
        signing_key=signing_key,
        seed_signature=signature,
        content_sha256=content_sha256,
        presigned=presigned,
    )
    if presigned:
        _presigned.put(
            (method, raw_path, query_string, region),
            _Verified(
                claim,
                when,
                context,
                secret,
                _signed_values(claim, header_map),
                _raw_signed(claim, headers),
                frozenset(n.encode("latin-1", "replace") for n in claim.signed_headers),
            ),
        )
    return context


@dataclass(frozen=True)
class _Verified:
    """A presigned request whose signature was verified, and what the signature covered
    beyond its method, path and query."""

    claim: _Claim
    when: float
    context: AuthContext
    secret: str = field(repr=False)
    signed_values: tuple[str, ...]
    # the request's headers as sent: (lower-case name, value) of each signed one, in order;
    # None when a header name was not lower case (the canonical check then decides)
    raw_signed: tuple[tuple[bytes, bytes], ...] | None = None
    raw_names: frozenset[bytes] = field(default=frozenset(), repr=False)


def _signed_values(claim: _Claim, header_map: Mapping[str, list[str]]) -> tuple[str, ...]:
    return tuple(_canonical_value(header_map.get(n, [])) for n in claim.signed_headers)


def _raw_signed(
    claim: _Claim, headers: list[tuple[bytes, bytes]]
) -> tuple[tuple[bytes, bytes], ...] | None:
    """The signed headers among ``headers``, byte for byte and in order (what
    :meth:`_PresignedCache.get_raw` compares); ``None`` if a name is not lower case."""
    signed = frozenset(n.encode("latin-1", "replace") for n in claim.signed_headers)
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name != name.lower():
            return None
        if name in signed:
            out.append((name, value))
    return tuple(out)


class _PresignedCache:
    """Presigned URLs verified lately, by ``(method, raw path, raw query, region)``.

    A shared link is fetched again and again with the very same signed input; its
    signature (a SHA-256 of the canonical request and an HMAC) is then verified once. A
    hit still needs the same signed header values and the same secret for its access key,
    and the time checks run on every request. Bounded: the oldest entry goes first.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: dict[tuple[str, bytes, bytes, str], _Verified] = {}

    def get(
        self,
        key: tuple[str, bytes, bytes, str],
        header_map: Mapping[str, list[str]],
        credentials: Mapping[str, str],
    ) -> _Verified | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if credentials.get(found.context.access_key) != found.secret:
            return None
        if _signed_values(found.claim, header_map) != found.signed_values:
            return None
        return found

    def get_raw(
        self,
        key: tuple[str, bytes, bytes, str],
        headers: list[tuple[bytes, bytes]],
        credentials: Mapping[str, str],
    ) -> _Verified | None:
        """The entry for ``key`` if this request's headers are, byte for byte, those it was
        verified with as far as the signature and its rules see them: the same signed
        headers (names, values and order), no ``authorization`` and no unsigned
        ``x-amz-*`` header; and the secret of its access key is unchanged. ``None``
        otherwise, which only means "verify it the long way": the bytes being equal implies
        the canonical values are, so this never accepts what :func:`verify` would refuse
        but for the clock, which the caller still checks."""
        found = self._entries.get(key)
        if found is None or found.raw_signed is None:
            return None
        if credentials.get(found.context.access_key) != found.secret:
            return None
        names = found.raw_names
        signed = []
        for name, value in headers:
            if name in names:
                signed.append((name, value))
            elif name.startswith(b"x-amz-") or name == b"authorization" or name != name.lower():
                return None
        if tuple(signed) != found.raw_signed:
            return None
        return found

    def put(self, key: tuple[str, bytes, bytes, str], verified: _Verified) -> None:
        self._entries.pop(key, None)
        self._entries[key] = verified
        while len(self._entries) > self._capacity:
            del self._entries[next(iter(self._entries))]


_presigned = _PresignedCache()


def secret_for(credentials: Mapping[str, str], access_key: str) -> str:
    """The secret access key of ``access_key`` (every signature version looks it up here).

    Raises:
        InvalidAccessKeyId: ``access_key`` is not in ``credentials``.
    """
    secret = credentials.get(access_key)
    if secret is None:
        raise errors.InvalidAccessKeyId()
    return secret


def policy_signer(
    credential: str, amz_date: str, credentials: Mapping[str, str], region: str
) -> tuple[str, bytes]:
    """The signer of a browser POST policy signed with SigV4 (``x-amz-credential``,
    ``x-amz-date`` form fields): ``(access key, signing key)``; the policy's signature is
    the lower-case hex ``HMAC-SHA256(signing key, policy as sent in base64)``.

    Raises:
        AccessDenied: ``x-amz-date`` is not ``yyyymmddThhmmssZ``.
        InvalidArgument: a malformed credential or a scope this gateway does not answer.
        InvalidAccessKeyId: the access key is unknown.
    """
    if _parse_amz_date(amz_date) is None:
        raise errors.AccessDenied("Invalid according to Policy: x-amz-date is not a valid date.")
    claim = _claim(credential, "host", "", None, errors.InvalidArgument)
    secret = secret_for(credentials, claim.access_key)
    _check_scope(claim, region, amz_date)
    return claim.access_key, _signing_key(secret, claim.scope_date, region)


# -- the claim --------------------------------------------------------------------------------
def _sigv2() -> errors.S3Error:
    return errors.InvalidRequest(
        f"The authorization mechanism you have provided is not supported. Please use {ALGORITHM}."
    )


def _header_claim(authorization: str) -> _Claim:
    """Parse ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``."""
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme == "AWS":
        raise _sigv2()
    if scheme != ALGORITHM:
        raise errors.InvalidArgument("Unsupported Authorization Type")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name.strip()] = value.strip()
    missing = [f for f in ("Credential", "SignedHeaders", "Signature") if not fields.get(f)]
    if missing:
        raise errors.AuthorizationHeaderMalformed(
            f"The authorization header is malformed; missing {missing[0]}."
        )
    return _claim(
        fields["Credential"],
        fields["SignedHeaders"],
        fields["Signature"],
        None,
        errors.AuthorizationHeaderMalformed,
    )


def _query_claim(query: Mapping[str, str]) -> _Claim:
    """Parse the ``X-Amz-*`` parameters of a presigned URL."""
    malformed = errors.AuthorizationQueryParametersError
    if any(not query.get(p) for p in _PRESIGN_PARAMS):
        raise malformed(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters."
        )
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise malformed(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    expires = parse_decimal(query["X-Amz-Expires"], max_digits=7)
    if expires is None or not 1 <= expires <= MAX_EXPIRES_S:
        raise malformed(f"X-Amz-Expires must be between 1 and {MAX_EXPIRES_S} seconds (one week).")
    return _claim(
        query["X-Amz-Credential"],
        query["X-Amz-SignedHeaders"],
        query["X-Amz-Signature"],
        expires,
        malformed,
    )


def _claim(
    credential: str,
    signed_headers: str,
    signature: str,
    expires_s: int | None,
    malformed: type[errors.S3Error],
) -> _Claim:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise malformed(
            "The Credential is mal-formed; expecting "
            '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    return _Claim(
        access_key=parts[0],
        scope_date=parts[1],
        region=parts[2],
        service=parts[3],
        terminator=parts[4],
        signed_headers=tuple(signed_headers.split(";")),
        signature=signature.encode("latin-1", "replace"),
        expires_s=expires_s,
        malformed=malformed,
    )


# -- checks -----------------------------------------------------------------------------------
def _check_scope(claim: _Claim, region: str, amz_date: str) -> None:
    """Raises the claim's ``malformed`` error for a scope this gateway does not answer."""
    if claim.region != region:
        raise claim.malformed(f"The region '{claim.region}' is wrong; expecting '{region}'")
    if claim.service != _SERVICE:
        raise claim.malformed(
            f'Incorrect service "{claim.service}". This endpoint belongs to "{_SERVICE}".'
        )
    if claim.terminator != _TERMINATOR:
        raise claim.malformed(
            f'Incorrect terminal "{claim.terminator}". This endpoint uses "{_TERMINATOR}".'
        )
    if claim.scope_date != amz_date[:8]:
        raise claim.malformed("Invalid credential date. Date is not the same as X-Amz-Date.")


def _check_time(claim: _Claim, when: float, now: float, max_skew_s: int) -> None:
    """Raises RequestTimeTooSkewed (header) or AccessDenied (presigned) for a request out of time."""
    if claim.expires_s is None:
        if abs(now - when) > max_skew_s:
            raise errors.RequestTimeTooSkewed()
    elif when - now > max_skew_s:
        raise errors.AccessDenied("Request is not valid yet")
    elif now > when + claim.expires_s:
        raise errors.AccessDenied("Request has expired")


def _check_signed_headers(claim: _Claim, header_map: Mapping[str, list[str]]) -> None:
    """``host`` and every ``x-amz-*`` header sent must be signed."""
    if "host" not in claim.signed_headers:
        raise claim.malformed("The host header must be signed.")
    unsigned = sorted(
        n for n in header_map if n.startswith("x-amz-") and n not in claim.signed_headers
    )
    if unsigned:
        raise errors.AccessDenied(
            "There were headers present in the request which were not signed: "
            + ", ".join(unsigned)
        )


def _header_date(header_map: Mapping[str, list[str]]) -> tuple[str, float]:
    """The request time from ``x-amz-date``, else ``Date``: (``yyyymmddThhmmssZ``, Unix seconds).

    Raises:
        AccessDenied: neither header holds a valid date.
    """
    if "x-amz-date" in header_map:
        amz_date = header_map["x-amz-date"][0].strip()
        when = _parse_amz_date(amz_date)
    else:
        try:
            parsed = email.utils.parsedate_to_datetime(header_map["date"][0])
            when = parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()
            amz_date = datetime.fromtimestamp(when, UTC).strftime(_AMZ_FORMAT)
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            # absent, unparsable, or out of datetime's range (year 9999 in a zone west of
            # UTC is year 10000 in UTC)
            when, amz_date = None, ""
    if when is None:
        raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    return amz_date, when


def request_time(header_map: Mapping[str, list[str]]) -> float:
    """The time a header-signed request claims, from ``x-amz-date`` (``yyyymmddThhmmssZ``)
    or else ``Date`` (RFC 7231), in Unix seconds.

    Args:
        header_map: lower-case header name -> values.

    Raises:
        AccessDenied: neither header holds a valid date within years 1..9999.
    """
    return _header_date(header_map)[1]


def _parse_amz_date(value: str) -> float | None:
    """``yyyymmddThhmmssZ`` -> Unix seconds, or ``None`` if it is not one."""
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:  # the fields by position: strptime cost a tenth of a 4 KiB hit
        when = datetime(
            int(value[0:4]), int(value[4:6]), int(value[6:8]),
            int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
        )
    except ValueError:
        return None
    return when.timestamp()


def _content_sha256(
    presigned: bool, query: Mapping[str, str], header_map: Mapping[str, list[str]]
) -> str:
    """The payload hash the signature covers.

    Raises:
        InvalidRequest: a header-signed request without ``x-amz-content-sha256``.
        InvalidArgument: a value that is neither a SHA-256 nor a known mode.
    """
    value = header_map.get("x-amz-content-sha256", [None])[0]
    if presigned:
        value = query.get("X-Amz-Content-Sha256", query.get("X-Amz-Content-SHA256", value))
        value = UNSIGNED_PAYLOAD if value is None else value
    elif value is None:
        raise errors.InvalidRequest(
            "Missing required header for this request: x-amz-content-sha256"
        )
    if not (value == UNSIGNED_PAYLOAD or value in STREAMING_MODES or _HEX_SHA256.fullmatch(value)):
        raise errors.InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING-* mode, "
            "or a valid sha256 value."
        )
    return value


# -- canonical forms --------------------------------------------------------------------------
def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """ASGI headers -> lower-case name -> values in order (latin-1, so bytes round-trip)."""
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _canonical_value(values: list[str]) -> str:
    """Trim each value, collapse inner whitespace runs to one space, join repeats with ``,``."""
    return ",".join(_SPACES.sub(" ", v).strip(" ") for v in values)


def _uri_encode(raw: bytes | str) -> str:
    """Percent-decode, then encode every byte outside ``A-Za-z0-9-._~`` (SigV4's UriEncode)."""
    return quote(unquote_to_bytes(raw), safe="")


def _canonical_path(raw_path: bytes) -> str:
    """Each ``/``-separated segment re-encoded, so ``~``, ``%7E``, ``$`` and ``%24`` all verify.

    S3 neither normalises ``.``/``..``/``//`` nor double-encodes; ``%2F`` stays
    inside its segment.
    """
    return "/".join(_uri_encode(seg) for seg in raw_path.split(b"/")) or "/"


def _parse_query(query_string: bytes) -> list[tuple[str, str, tuple[str, str]]]:
    """Raw query -> ``(name, value, (canonical name, canonical value))`` per parameter, in order.

    ``name`` and ``value`` are percent-decoded text (``+`` is kept as ``+``, as
    SigV4 signers send a space as ``%20``); a parameter without ``=`` has value ``""``.
    """
    params = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        params.append(
            (
                unquote(name.decode("latin-1"), errors="replace"),
                unquote(value.decode("latin-1"), errors="replace"),
                (_uri_encode(name), _uri_encode(value)),
            )
        )
    return params


def _canonical_query(params: list[tuple[str, str, tuple[str, str]]], presigned: bool) -> str:
    """Sorted ``name=value`` pairs joined by ``&``, without ``X-Amz-Signature`` when presigned."""
    pairs = sorted(
        encoded for name, _, encoded in params if not (presigned and name == "X-Amz-Signature")
    )
    return "&".join(f"{n}={v}" for n, v in pairs)


@functools.lru_cache(maxsize=256)
def _signing_key(secret: str, date: str, region: str) -> bytes:
    """``HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"), "aws4_request")``."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, _SERVICE, _TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# -- the body ---------------------------------------------------------------------------------
class VerifiedBody(Protocol):
    """A request body that checks itself while it is read; see :func:`wrap_body`."""

    trailers: dict[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class PayloadVerifier:
    """Pass a non-streaming body through, checking its SHA-256 and its length at the end.

    Iterate it once; the pieces are the body's own. As with every
    :class:`VerifiedBody`, they are provisional until iteration ends without
    an exception. :attr:`trailers` is always empty.

    Args:
        body: the raw request body.
        content_sha256: the signed ``x-amz-content-sha256``: 64 hex digits
            (checked), or ``UNSIGNED-PAYLOAD`` (not checked).
        content_length: ``Content-Length`` in bytes, or ``None`` if not sent.

    Raises (during iteration):
        XAmzContentSHA256Mismatch: the body's SHA-256 differs from ``content_sha256``.
        IncompleteBody: the body's length differs from ``content_length``.
    """

    def __init__(
        self, body: AsyncIterable[bytes], content_sha256: str, content_length: int | None
    ) -> None:
        self._body = body
        self._expected = content_sha256.lower() if _HEX_SHA256.fullmatch(content_sha256) else None
        self._length = content_length
        self.trailers: dict[str, str] = {}

    async def __aiter__(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256() if self._expected else None
        received = 0
        async for piece in self._body:
            received += len(piece)
            if self._length is not None and received > self._length:
                raise errors.IncompleteBody("The body is longer than Content-Length.")
            if digest is not None:
                digest.update(piece)
            yield piece
        if self._length is not None and received < self._length:
            raise errors.IncompleteBody()
        if digest is not None and not hmac.compare_digest(digest.hexdigest(), self._expected):
            raise errors.XAmzContentSHA256Mismatch()


def wrap_body(
    body: AsyncIterable[bytes], ctx: AuthContext, headers: Iterable[tuple[bytes, bytes]]
) -> VerifiedBody:
    """Wrap a request body in the check its signature calls for.

    ``ctx.content_sha256`` decides: a hex SHA-256 -> :class:`PayloadVerifier`
    (hash and ``Content-Length``); ``UNSIGNED-PAYLOAD`` -> the same, length
    only; a ``STREAMING-*`` mode -> :class:`~edgecache.gateway.chunked.ChunkedDecoder`
    (chunk and trailer signatures, ``x-amz-trailer`` checksums,
    ``x-amz-decoded-content-length``).

    Args:
        body: the raw request body, e.g. Litestar's ``request.stream()``.
        ctx: the result of :func:`verify` for this request.
        headers: the request headers, as given to :func:`verify`.

    Returns:
        An async iterable of the decoded object bytes whose ``trailers``
        (e.g. ``{"crc32": "DUoRhQ=="}``) are filled once it is exhausted.
        Iteration raises the S3 error of the first check that fails; the
        bytes already yielded must then be discarded.

    Raises:
        InvalidArgument: an unknown ``ctx.content_sha256``, a bad length
            header, or an unsupported ``x-amz-trailer``.
    """
    header_map = _header_map(headers)
    mode = ctx.content_sha256
    if mode in STREAMING_MODES:
        return ChunkedDecoder(
            body,
            mode,
            signing=ctx,
            trailer_names=parse_trailer_names(header_map.get("x-amz-trailer", [None])[0]),
            decoded_length=_length_header(header_map, "x-amz-decoded-content-length"),
        )
    if mode == UNSIGNED_PAYLOAD or _HEX_SHA256.fullmatch(mode):
        return PayloadVerifier(body, mode, _length_header(header_map, "content-length"))
    raise errors.InvalidArgument(f"Unsupported x-amz-content-sha256 value: {mode}")


def _length_header(header_map: Mapping[str, list[str]], name: str) -> int | None:
    """A byte count header as an int, ``None`` if absent.

    Raises:
        InvalidArgument: not a non-negative decimal integer.
    """
    values = header_map.get(name)
    if values is None:
        return None
    value = values[0].strip()
    number = parse_decimal(value)
    if number is None:
        raise errors.InvalidArgument(f"Invalid {name}: {value[:32]!r}")
    return number
