"""The S3 origin: AWS S3 or any S3-compatible store, through one long-lived aiobotocore client.

Credentials and region come from the standard AWS chain (environment, shared config,
instance role); ``OriginConfig.endpoint_url`` points at an S3-compatible server. An object's
edgecache metadata is its S3 metadata: ``ContentType``, the system headers
(``CacheControl``, ``ContentDisposition``, ``ContentEncoding``, ``ContentLanguage``,
``Expires``) and user metadata (``x-amz-meta-*``). edgecache's own ETag rides along as
``x-amz-meta-edgecache-etag``; a user key that itself starts with ``edgecache-`` is stored
as ``edgecache-u-<key>`` so the two can never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import botocore.config
import botocore.exceptions as bexc
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from edgecache.common import errors
from edgecache.common.config import OriginConfig
from edgecache.origin._util import (
    check_key,
    check_range,
    part_size_for,
    read_all,
    strip_etag,
    system_headers,
    upload_parts,
)
from edgecache.origin.base import (
    BlockingRangeRead,
    Origin,
    OriginBucket,
    OriginHoldsNewer,
    OriginObject,
    RangeRead,
    holds_newer,
)

__all__ = ["S3Origin"]

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB  # S3's smallest part but the last
MAX_PARTS = 10_000
READ_BYTES = 1 * MiB  # get_range piece size (at most)
_BLOCKING_CONNECTIONS = 32  # the synchronous client's pool (open_range_blocking from many threads)
ETAG_META = "edgecache-etag"
HLC_META = "edgecache-hlc"  # federation: the version's stamp (Origin.put_object)
SITE_META = "edgecache-site"
RESERVED_META = "edgecache-"
ESCAPED_META = "edgecache-u-"

# OriginObject.headers name -> (PutObject parameter, HeadObject field)
_HEADER_PARAMS = {
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-encoding": "ContentEncoding",
    "content-language": "ContentLanguage",
    "expires": "Expires",
}
_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "OperationAborted",
}
_ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}
_NETWORK_ERRORS = (
    bexc.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bexc.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    bexc.IncompleteReadError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)


def _to_user_metadata(stored: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, value in stored.items():
        if name.startswith(ESCAPED_META):
            out[name[len(ESCAPED_META) :]] = value
        elif not name.startswith(RESERVED_META):
            out[name] = value
    return out


def _to_s3_metadata(metadata: dict[str, str] | None, etag: str) -> dict[str, str]:
    out = {}
    for name, value in (metadata or {}).items():
        low = name.lower()
        out[ESCAPED_META + low if low.startswith(RESERVED_META) else low] = value
    if etag:
        out[ETAG_META] = etag
    return out


def _stamp_of(stored: dict[str, str]) -> dict[str, Any]:
    """``hlc``/``site`` of an object from its stored metadata (none: ``{}``)."""
    value = stored.get(HLC_META, "")
    if not value.isdigit():
        return {}
    return {"hlc": int(value), "site": stored.get(SITE_META, "")}


def _retry_after(response: dict[str, Any]) -> int:
    value = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after", "")
    return int(value) if value.isdigit() else 1


@contextlib.contextmanager
def _s3_errors(bucket: str, key: str = "") -> Iterator[None]:
    """Translate botocore/aiohttp errors to :mod:`edgecache.common.errors` at the edge.

    A bare 404 (HEAD has no body) becomes ``NoSuchKey`` when ``key`` is given, else
    ``NoSuchBucket``.
    """
    resource = f"{bucket}/{key}" if key else bucket
    try:
        yield
    except bexc.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            raise errors.NoSuchBucket(resource=bucket) from exc
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchUpload"):
            if key:
                raise errors.NoSuchKey(resource=resource) from exc
            raise errors.NoSuchBucket(resource=bucket) from exc
        if code == "PreconditionFailed" or status == 412:
            raise errors.PreconditionFailed(message, resource=resource) from exc
        if code == "InvalidRange" or status == 416:
            raise errors.InvalidRange(message, resource=resource) from exc
        if code in _ACCESS_CODES or status == 403:
            raise errors.AccessDenied(f"origin: {message}", resource=resource) from exc
        if code in _UNAVAILABLE_CODES or status >= 500:
            raise errors.ServiceUnavailable(
                f"origin: {message}", resource=resource, retry_after_s=_retry_after(exc.response)
            ) from exc
        raise errors.from_code(code, f"origin: {message}", resource=resource) from exc
    except (
        bexc.NoCredentialsError,
        bexc.PartialCredentialsError,
        bexc.CredentialRetrievalError,
    ) as exc:
        raise errors.AccessDenied(f"origin: {exc}", resource=resource) from exc
    except bexc.ParamValidationError as exc:
        raise errors.InvalidArgument(f"origin: {exc}", resource=resource) from exc
    except _NETWORK_ERRORS as exc:
        raise errors.ServiceUnavailable(
            f"origin unreachable: {exc}", resource=resource, retry_after_s=1
        ) from exc


def _describe(key: str, r: dict[str, Any], size: int, *, get: bool = False) -> OriginObject:
    """The object a ``HeadObject`` or (``get``) ``GetObject`` response ``r`` describes
    (``size``: the whole object's bytes). Tags: a GET says how many (``x-amz-tagging-count``,
    absent for none), so an untagged object needs no ``GetObjectTagging``; a HEAD does not
    (``None``: ask :meth:`S3Origin.get_tags`)."""
    headers = {}
    for name, field in _HEADER_PARAMS.items():
        value = r.get(field)
        if name == "expires":
            value = r.get("ExpiresString") or (
                email.utils.format_datetime(value, usegmt=True)
                if isinstance(value, datetime)
                else value
            )
        if value:
            headers[name] = str(value)
    return OriginObject(
        key=key,
        size=size,
        etag=strip_etag(r.get("ETag")),
        last_modified=r["LastModified"].timestamp(),
        content_type=r.get("ContentType") or "binary/octet-stream",
        metadata=_to_user_metadata(r.get("Metadata", {})),
        headers=headers,
        tags={} if get and not r.get("TagCount") else None,
        **_stamp_of(r.get("Metadata", {})),
    )


async def _pieces(body: Any, count: int, bucket: str, key: str) -> AsyncIterator[bytes]:
    """The first ``count`` bytes of a ``GetObject`` body, in pieces of at most 1 MiB."""
    with _s3_errors(bucket, key):
        async for piece in body.iter_chunks(READ_BYTES):
            if len(piece) >= count:
                if piece := piece[:count]:
                    yield piece
                return
            count -= len(piece)
            yield piece


def _ranged_get(bucket: str, key: str, first: int, last: int, if_match: str | None) -> dict[str, Any]:
    """The ``GetObject`` parameters of bytes ``first..last`` (inclusive) ``If-Match``
    ``if_match`` (an origin ETag, unquoted; ``None``: unconditional).

    Raises:
        InvalidArgument: a key or range S3 cannot take (``check_key``, ``check_range``).
    """
    check_key(bucket, key)
    check_range(bucket, key, first, last)
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={first}-{last}"}
    if if_match is not None:
        params["IfMatch"] = f'"{if_match}"'
    return params


def _range_answer(key: str, r: dict[str, Any], first: int, last: int, bucket: str) -> tuple[OriginObject, int, int]:
    """What a ranged ``GetObject`` answer ``r`` (for ``first..last``) holds: the object, and
    the first and last byte of its body (``first`` 0 when the server ignored the range: an
    empty object, or no range support; cut at ``last``). On an error the body is closed.

    Raises:
        InvalidRange: the server ignored the range because ``first`` is past the end.
    """
    try:
        total = r.get("ContentRange", "").rpartition("/")[2]
        if total.isdigit():
            size, served = int(total), r["ContentLength"]
        else:  # 200: the server ignored the range
            size = served = r["ContentLength"]
            if first >= size:
                raise errors.InvalidRange(f"bytes={first}-{last} of {size}", resource=f"{bucket}/{key}")
            first, served = 0, min(last + 1, size)  # the whole object from byte 0, cut at last
        return _describe(key, r, size, get=True), first, first + served - 1
    except BaseException:
        r["Body"].close()
        raise


def _blocking_reader(body: Any, bucket: str, key: str) -> Callable[[int], bytes]:
    """``read(n)`` of a ``GetObject`` body in a worker thread (botocore's StreamingBody: it
    blocks for ``n`` bytes or the end), its errors translated as :func:`_s3_errors` does."""

    def read(n: int) -> bytes:
        with _s3_errors(bucket, key):
            return bytes(body.read(n))

    return read


class S3Origin(Origin):
    """An S3 bucket per edgecache bucket, through one aiobotocore client opened in
    :meth:`start`, and one botocore (synchronous) client beside it for fills' ranged GETs
    in worker threads (:meth:`open_range_blocking`).

    Memory per upload: one buffer of the object (single PUT, at most
    ``multipart_threshold_bytes``) or :data:`~._util.PART_CONCURRENCY` part buffers.
    """

    name = "s3"
    blocking_reads = True

    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._blocking_client: Any = None

    def _client_options(self) -> dict[str, Any]:
        """What both clients are configured with: standard retries (3 attempts), timeouts
        from ``timeout_s``."""
        cfg = self.config
        return {
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": min(cfg.timeout_s, 10.0),
            "read_timeout": cfg.timeout_s,
            # a ranged GET cannot be checked against a whole-object checksum
            "response_checksum_validation": "when_required",
        }

    async def start(self) -> None:
        """Open the clients (:meth:`_client_options`); the asynchronous one's HTTP session
        is built now (see :meth:`_warm`)."""
        cfg = self.config
        self._client = await self._stack.enter_async_context(
            AioSession().create_client(
                "s3",
                endpoint_url=cfg.endpoint_url or None,
                region_name=cfg.region or None,
                config=AioConfig(**self._client_options()),
            )
        )
        self._blocking_client = await asyncio.to_thread(
            botocore.session.get_session().create_client,
            "s3",
            endpoint_url=cfg.endpoint_url or None,
            region_name=cfg.region or None,
            # one connection per fill thread (Filler slots: 4 x fill_concurrency, 16 by
            # default); urllib3 discards connections beyond this on return, with a warning
            config=botocore.config.Config(**self._client_options(), max_pool_connections=_BLOCKING_CONNECTIONS),
        )
        await self._warm()
        # its first request resolves the endpoint rules and builds the signer (4 ms of
        # Python holding the GIL here): done now rather than beside a cold miss's first byte
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self._blocking_client.generate_presigned_url, "get_object", Params={"Bucket": "warm", "Key": "up"}
            )

    async def _warm(self) -> None:
        """Build the client's aiohttp session (its TLS context loads the CA bundle: 60-110 ms
        here) before the first request needs it, so the first cold GET after a start does
        not wait for it. Contacts nobody. aiobotocore builds it lazily and has no public
        call for it: if its internals change, this does nothing and the first request
        builds it, as before."""
        http_session = getattr(getattr(self._client, "_endpoint", None), "http_session", None)
        get_session = getattr(http_session, "_get_session", None)
        if get_session is not None:
            with contextlib.suppress(Exception):
                await get_session(None)  # None: no proxy; one with a proxy is built when used

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        blocking, self._blocking_client = self._blocking_client, None
        if blocking is not None:
            blocking.close()

    @property
    def _s3(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Origin used before start()")
        return self._client

    # -- buckets -----------------------------------------------------------------------------
    async def list_buckets(self) -> list[OriginBucket]:
        with _s3_errors(""):
            response = await self._s3.list_buckets()
        return [
            OriginBucket(name=b["Name"], created=b["CreationDate"].timestamp())
            for b in response.get("Buckets", [])
        ]

    async def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` in the configured region (``LocationConstraint`` unless
        us-east-1); one that is already ours is success."""
        kwargs: dict[str, Any] = {"Bucket": bucket}
        region = self.config.region or self._s3.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            with _s3_errors(bucket):
                await self._s3.create_bucket(**kwargs)
        except errors.BucketAlreadyOwnedByYou:
            pass

    async def delete_bucket(self, bucket: str) -> None:
        try:
            with _s3_errors(bucket):
                await self._s3.delete_bucket(Bucket=bucket)
        except errors.NoSuchBucket:
            pass

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            with _s3_errors(bucket):
                await self._s3.head_bucket(Bucket=bucket)
        except errors.NoSuchBucket:
            return False
        return True

    # -- objects -----------------------------------------------------------------------------
    async def head_object(self, bucket: str, key: str) -> OriginObject:
        check_key(bucket, key)
        try:
            with _s3_errors(bucket, key):
                r = await self._s3.head_object(Bucket=bucket, Key=key)
        except errors.NoSuchKey:
            await self._require_bucket(bucket)
            raise
        return _describe(key, r, r["ContentLength"])

    async def _require_bucket(self, bucket: str) -> None:
        """Raise ``NoSuchBucket`` if ``bucket`` is missing (a bare 404 does not say which)."""
        if not await self.bucket_exists(bucket):
            raise errors.NoSuchBucket(resource=bucket) from None

    async def open_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> RangeRead:
        """``GetObject`` with ``Range: bytes=first-last`` (and ``If-Match``): the object's
        size from ``Content-Range``, its ETag, time, type, system headers and metadata from
        the same response; the body streamed in pieces of at most 1 MiB. See
        :meth:`Origin.open_range`."""
        params = _ranged_get(bucket, key, first, last, if_match)
        try:
            with _s3_errors(bucket, key):
                r = await self._s3.get_object(**params)
        except errors.NoSuchKey:
            await self._require_bucket(bucket)
            raise
        obj, first, end = _range_answer(key, r, first, last, bucket)
        body = r["Body"]
        return RangeRead(obj, first, end, _pieces(body, end - first + 1, bucket, key), body.aclose)

    async def get_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> AsyncIterator[bytes]:
        """``GetObject`` with ``Range: bytes=first-last`` (and ``If-Match``), streamed in
        pieces of at most 1 MiB as they arrive (:meth:`open_range`); see
        :meth:`Origin.get_range`."""
        read = await self.open_range(bucket, key, first, last, if_match=if_match)
        try:
            if read.first != first:  # a server that ignored the range: skip to first
                raise errors.InvalidRange(f"bytes={first}-{last}: the origin ignored the range", resource=f"{bucket}/{key}")
            async for piece in read:
                yield piece
        finally:
            await read.aclose()

    def open_range_blocking(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> BlockingRangeRead:
        """``GetObject`` with ``Range: bytes=first-last`` (and ``If-Match``) through the
        synchronous client, for a worker thread: what :meth:`open_range` answers, the body
        read blocking. See :meth:`Origin.open_range_blocking`."""
        params = _ranged_get(bucket, key, first, last, if_match)
        client = self._blocking_client
        if client is None:
            raise RuntimeError("S3Origin used before start()")
        try:
            with _s3_errors(bucket, key):
                r = client.get_object(**params)
        except errors.NoSuchKey:
            with _s3_errors(bucket):  # NoSuchBucket if it is the bucket that is missing
                client.head_bucket(Bucket=bucket)
            raise
        obj, first, end = _range_answer(key, r, first, last, bucket)
        body = r["Body"]
        return BlockingRangeRead(obj, first, end, _blocking_reader(body, bucket, key), body.close)

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
        """One ``PutObject`` up to ``multipart_threshold_bytes``, else a multipart upload of
        ``part_bytes`` parts, a few in parallel, aborted on any failure. Creates the bucket
        when S3 says it is missing; see :meth:`Origin.put_object`. A stamped write HEADs
        the object first and makes the ``PutObject`` (or ``CompleteMultipartUpload``)
        conditional on what it saw: ``If-Match: <its ETag>``, or ``If-None-Match: *``."""
        check_key(bucket, key)
        params: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "ContentType": content_type or "binary/octet-stream",
            "Metadata": _to_s3_metadata(metadata, etag),
        }
        for name, value in system_headers(headers).items():
            if name == "expires":
                try:
                    params["Expires"] = email.utils.parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    continue  # S3 takes only an HTTP date here
            else:
                params[_HEADER_PARAMS[name]] = value
        if tags:  # x-amz-tagging, on PutObject and CreateMultipartUpload alike
            params["Tagging"] = urlencode(tags, quote_via=quote)
        condition: dict[str, str] = {}
        if hlc:
            params["Metadata"].update({HLC_META: str(hlc), SITE_META: site})
            condition = await self._condition_for(bucket, key, hlc, site)
        try:
            if size <= self.config.multipart_threshold_bytes:
                data = await read_all(body, size=size)
                response = await self._with_bucket(
                    bucket, key, lambda: self._s3.put_object(Body=data, **params, **condition)
                )
                return strip_etag(response.get("ETag"))
            return await self._put_multipart(bucket, key, body, size, params, condition)
        except errors.PreconditionFailed as exc:
            if not condition:
                raise
            raise errors.ServiceUnavailable(
                "origin: the object changed between the comparison and the write",
                resource=f"{bucket}/{key}", retry_after_s=1,
            ) from exc

    async def _condition_for(self, bucket: str, key: str, hlc: int, site: str) -> dict[str, str]:
        """The condition of a stamped write: ``IfMatch`` the object in place (or
        ``IfNoneMatch: *``), after checking its stamp.

        Raises:
            OriginHoldsNewer: the object in place has a larger ``(hlc, site)``.
        """
        try:
            found = await self.head_object(bucket, key)
        except (errors.NoSuchKey, errors.NoSuchBucket):
            return {"IfNoneMatch": "*"}
        if holds_newer(found, hlc, site):
            raise OriginHoldsNewer(
                f"the origin holds a newer version (hlc {found.hlc}, site {found.site!r})",
                resource=f"{bucket}/{key}",
            )
        return {"IfMatch": f'"{found.etag}"'}

    async def _with_bucket(self, bucket: str, key: str, call: Any) -> Any:
        """``await call()``; if the bucket is missing, create it and call once more."""
        try:
            with _s3_errors(bucket, key):
                return await call()
        except errors.NoSuchBucket:
            await self.create_bucket(bucket)
        with _s3_errors(bucket, key):
            return await call()

    async def _put_multipart(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        params: dict[str, Any],
        condition: dict[str, str] | None = None,
    ) -> str:
        checksum = self._s3.meta.config.request_checksum_calculation == "when_supported"
        if checksum:  # the parts carry CRC32s; the upload must say so up front
            params = {**params, "ChecksumAlgorithm": "CRC32"}
        created = await self._with_bucket(
            bucket, key, lambda: self._s3.create_multipart_upload(**params)
        )
        upload_id = created["UploadId"]
        part_size = part_size_for(
            size, self.config.part_bytes, min_bytes=MIN_PART_BYTES, max_parts=MAX_PARTS
        )

        async def upload(index: int, data: bytes) -> dict[str, Any]:
            extra = {"ChecksumAlgorithm": "CRC32"} if checksum else {}
            with _s3_errors(bucket, key):
                r = await self._s3.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=index + 1,
                    Body=data,
                    **extra,
                )
            part = {"PartNumber": index + 1, "ETag": r["ETag"]}
            if r.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = r["ChecksumCRC32"]
            return part

        try:
            parts = await upload_parts(body, size=size, part_size=part_size, upload=upload)
            with _s3_errors(bucket, key):
                done = await self._s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    **(condition or {}),
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return strip_etag(done.get("ETag"))

    async def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        """``GetObjectTagging``; see :meth:`Origin.get_tags`."""
        check_key(bucket, key)
        with _s3_errors(bucket, key):
            r = await self._s3.get_object_tagging(Bucket=bucket, Key=key)
        return {t["Key"]: t["Value"] for t in r.get("TagSet", [])}

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> str | None:
        """``PutObjectTagging`` (``DeleteObjectTagging`` for no tags): S3 keeps the object's
        ETag; see :meth:`Origin.put_tags`."""
        check_key(bucket, key)
        with _s3_errors(bucket, key):
            if tags:
                tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
                await self._s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tag_set})
            else:
                await self._s3.delete_object_tagging(Bucket=bucket, Key=key)
        return None

    async def delete_object(self, bucket: str, key: str, *, hlc: int = 0, site: str = "") -> None:
        """See :meth:`Origin.delete_object` (a stamped delete HEADs first)."""
        check_key(bucket, key)
        if hlc:
            await self._condition_for(bucket, key, hlc, site)  # raises OriginHoldsNewer
        try:
            with _s3_errors(bucket, key):
                await self._s3.delete_object(Bucket=bucket, Key=key)
        except (errors.NoSuchBucket, errors.NoSuchKey):
            pass

    async def iter_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject]:
        """``ListObjectsV2`` pages (``Prefix``, ``StartAfter``), fetched as consumed. Listed
        objects carry key, size, ETag and time; content type and metadata need a HEAD."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        paginator = self._s3.get_paginator("list_objects_v2")
        with _s3_errors(bucket):
            async for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", []):
                    yield OriginObject(
                        key=item["Key"],
                        size=item["Size"],
                        etag=strip_etag(item.get("ETag")),
                        last_modified=item["LastModified"].timestamp(),
                    )
