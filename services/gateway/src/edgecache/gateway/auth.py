"""Which signature a request carries, verified by its module: SigV4
(:mod:`~edgecache.gateway.sigv4`, header or presigned query) or SigV2
(:mod:`~edgecache.gateway.sigv2`). Both look secrets up in the same place
(:func:`edgecache.gateway.sigv4.secret_for`) and give an
:class:`~edgecache.gateway.sigv4.AuthContext` that :func:`edgecache.gateway.sigv4.wrap_body`
turns into the body check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.gateway import sigv2, sigv4

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["verify"]

_SIGV2_PREFIX = sigv2.SCHEME.encode() + b" "
_SIGV4_QUERY = b"X-Amz-Algorithm="


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
    host_bucket: str = "",
) -> sigv4.AuthContext:
    """Verify a request's signature, whichever version it is.

    Arguments as :func:`edgecache.gateway.sigv4.verify`, plus ``host_bucket``: the bucket
    a virtual-hosted ``Host`` names (SigV2 signs it as part of the resource), else ``""``.

    Raises:
        S3Error: as :func:`edgecache.gateway.sigv4.verify` or
            :func:`edgecache.gateway.sigv2.verify`; AccessDenied without any signature.
    """
    headers = list(headers)
    if _is_sigv2(query_string, headers):
        return sigv2.verify(
            method,
            raw_path,
            query_string,
            headers,
            credentials=credentials,
            now=now,
            max_skew_s=max_skew_s,
            host_bucket=host_bucket,
        )
    return sigv4.verify(
        method,
        raw_path,
        query_string,
        headers,
        credentials=credentials,
        region=region,
        now=now,
        max_skew_s=max_skew_s,
    )


def _is_sigv2(query_string: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """``Authorization: AWS …``, or without that header the ``AWSAccessKeyId`` or
    ``Signature`` query parameter and no ``X-Amz-Algorithm``."""
    for name, value in headers:
        if name == b"authorization" and value.strip():
            return value.strip().startswith(_SIGV2_PREFIX)
    if query_string.startswith(_SIGV4_QUERY) or b"&" + _SIGV4_QUERY in query_string:
        return False  # a SigV4 presigned URL: decided without splitting the query
    if b"AWSAccessKeyId" not in query_string and b"Signature" not in query_string:
        return False
    names = {part.partition(b"=")[0] for part in query_string.split(b"&")}
    return b"X-Amz-Algorithm" not in names and bool({b"AWSAccessKeyId", b"Signature"} & names)
