"""The Azure Blob origin: a container per bucket, through azure-storage-blob's aio client.

Names: a bucket maps to the container of the same name, which Azure allows only for
3-63 of ``a-z 0-9 -`` without ``--`` (no dots): other bucket names raise
``InvalidBucketName``. Keys map to blob names unchanged; a key with a ``.`` or ``..``
segment cannot be addressed over Azure's REST URLs and raises ``InvalidArgument``.

Metadata: content type and the system headers go to the blob's content settings, except
``Expires`` (no such setting) which is stored as metadata ``ec_expires``; edgecache's ETag
is metadata ``ec_etag``; the object's tags are metadata ``ec_tagging``, in the URL query
form of ``x-amz-tagging`` (``k1=v1&k2=v2``, percent-encoded UTF-8): Azure's own blob index
tags allow fewer characters than S3 tags (no ``@``, ASCII only), so they cannot hold every
S3 tag set. Changing them rewrites the metadata, which changes the blob's ETag (returned to
the caller as the new origin ETag). Azure metadata names must be C# identifiers and are
case-insensitive, so a user metadata key ``k`` is stored as ``u_`` + ``k`` with every
character outside ``a-z0-9`` written as ``_xx`` per UTF-8 byte (lower-case hex):
``x-amz-meta-Foo_bar`` -> ``u__46oo_5fbar``. The ``u_``/``ec_`` prefixes keep user and
internal names apart; other names (set by hand) read back as they are.

ETags are the blob's, quotes stripped (``0x8DC…``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobProperties, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, LinearRetry

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
from edgecache.origin.base import Origin, OriginBucket, OriginHoldsNewer, OriginObject, holds_newer

__all__ = ["AzureOrigin", "decode_metadata_name", "encode_metadata_name"]

T = TypeVar("T")
MiB = 1024 * 1024
MAX_BLOCKS = 50_000
GET_BYTES = 4 * MiB  # download request size: get_range pieces are at most this
CONN_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ETAG_META = "ec_etag"
EXPIRES_META = "ec_expires"
HLC_META = "ec_hlc"  # federation: the version's stamp (Origin.put_object)
SITE_META = "ec_site"
TAGS_META = "ec_tagging"  # the object's tags, URL query form
USER_PREFIX = "u_"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_CONTAINER_RE = re.compile(r"[a-z0-9](?:-?[a-z0-9])+")
# OriginObject.headers name -> ContentSettings attribute
_SETTINGS = {
    "cache-control": "cache_control",
    "content-disposition": "content_disposition",
    "content-encoding": "content_encoding",
    "content-language": "content_language",
}


def encode_metadata_name(name: str) -> str:
    """A user metadata key as an Azure metadata name (a C# identifier), reversibly."""
    out = [USER_PREFIX]
    for char in name:
        out.append(char if char in _SAFE else "".join(f"_{b:02x}" for b in char.encode()))
    return "".join(out)


def decode_metadata_name(stored: str) -> str | None:
    """Invert :func:`encode_metadata_name` (case-insensitively); ``None`` if ``stored`` is
    not one of its results."""
    text = stored.lower()
    if not text.startswith(USER_PREFIX):
        return None
    raw = bytearray()
    i = len(USER_PREFIX)
    while i < len(text):
        if text[i] == "_":
            try:
                raw.append(int(text[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _container_name(bucket: str) -> str:
    if not (3 <= len(bucket) <= 63 and _CONTAINER_RE.fullmatch(bucket)):
        raise errors.InvalidBucketName(
            f"{bucket!r} cannot be an Azure container name (3-63 of a-z 0-9 -, no '--')",
            resource=bucket,
        )
    return bucket


def _check_blob_key(bucket: str, key: str) -> None:
    check_key(bucket, key)
    if any(segment in (".", "..") for segment in key.split("/")):
        raise errors.InvalidArgument(
            "Azure Blob Storage cannot address a key with '.' or '..' segments",
            resource=f"{bucket}/{key}",
        )


def _error_code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _retry_after(exc: HttpResponseError) -> int:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After", "") if response is not None else ""
    return int(value) if value.isdigit() else 1


@contextlib.contextmanager
def _azure_errors(bucket: str, key: str = "") -> Iterator[None]:
    """Translate azure-core errors to :mod:`edgecache.common.errors` at the edge."""
    resource = f"{bucket}/{key}" if key else bucket
    try:
        yield
    except ResourceNotFoundError as exc:
        if _error_code(exc) == "ContainerNotFound" or not key:
            raise errors.NoSuchBucket(resource=bucket) from exc
        raise errors.NoSuchKey(resource=resource) from exc
    except ResourceModifiedError as exc:
        raise errors.PreconditionFailed(f"origin: {exc.reason}", resource=resource) from exc
    except ClientAuthenticationError as exc:
        raise errors.AccessDenied(f"origin: {exc.reason}", resource=resource) from exc
    except ResourceExistsError as exc:
        code = _error_code(exc)
        if code == "ContainerBeingDeleted":
            raise errors.ServiceUnavailable(
                "origin: container being deleted", resource=resource, retry_after_s=30
            ) from exc
        if code == "ContainerAlreadyExists":
            raise errors.BucketAlreadyOwnedByYou(resource=bucket) from exc
        if code == "BlobAlreadyExists":  # a write conditional on no blob (If-None-Match: *)
            raise errors.PreconditionFailed(f"origin: {code}", resource=resource) from exc
        raise errors.InternalError(f"origin: {code}: {exc.reason}", resource=resource) from exc
    except HttpResponseError as exc:
        status, code = exc.status_code or 0, _error_code(exc)
        if status == 412 or code == "ConditionNotMet":
            raise errors.PreconditionFailed(f"origin: {code}", resource=resource) from exc
        if status == 416 or code == "InvalidRange":
            raise errors.InvalidRange(resource=resource) from exc
        if status == 403:
            raise errors.AccessDenied(f"origin: {code}", resource=resource) from exc
        if status >= 500 or status in (408, 429) or code == "ServerBusy":
            raise errors.ServiceUnavailable(
                f"origin: {code or exc.reason}",
                resource=resource,
                retry_after_s=_retry_after(exc),
            ) from exc
        raise errors.InternalError(f"origin: {status} {code}", resource=resource) from exc
    except (
        ServiceRequestError,
        ServiceResponseError,
        aiohttp.ClientError,
        TimeoutError,
        ConnectionError,
    ) as exc:
        raise errors.ServiceUnavailable(
            f"origin unreachable: {exc}", resource=resource, retry_after_s=1
        ) from exc


def _describe(props: BlobProperties) -> OriginObject:
    settings = props.content_settings
    headers = {}
    for name, attr in _SETTINGS.items():
        if value := getattr(settings, attr, None):
            headers[name] = value
    metadata = {}
    stamp: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for stored, value in (props.metadata or {}).items():
        low = stored.lower()
        if low == EXPIRES_META:
            headers["expires"] = value
        elif low == HLC_META and value.isdigit():
            stamp["hlc"] = int(value)
        elif low == SITE_META:
            stamp["site"] = value
        elif low == TAGS_META:
            tags = dict(parse_qsl(value, keep_blank_values=True))
        elif low.startswith("ec_"):
            continue
        else:
            metadata[decode_metadata_name(stored) or stored] = value
    return OriginObject(
        key=props.name,
        size=props.size,
        etag=strip_etag(props.etag),
        last_modified=props.last_modified.timestamp(),
        content_type=settings.content_type or "binary/octet-stream",
        metadata=metadata,
        headers=headers,
        **stamp,
        tags=tags,
    )


class AzureOrigin(Origin):
    """A container per edgecache bucket, through one ``BlobServiceClient`` opened in
    :meth:`start` from ``connection_string`` (else ``$AZURE_STORAGE_CONNECTION_STRING``).

    Memory per upload: one buffer of the object (single put, at most
    ``multipart_threshold_bytes``) or :data:`~._util.PART_CONCURRENCY` block buffers; per
    download, one 4 MiB request at a time.
    """

    name = "azure"

    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._service: BlobServiceClient | None = None

    async def start(self) -> None:
        """Open the client: 2 retries 1 s apart, timeouts from ``timeout_s``."""
        cfg = self.config
        conn = cfg.connection_string or os.environ.get(CONN_ENV, "")
        if not conn:
            raise errors.InternalError(f"azure origin: set origin.connection_string or ${CONN_ENV}")
        service = BlobServiceClient.from_connection_string(
            conn,
            max_single_put_size=cfg.multipart_threshold_bytes,
            max_block_size=cfg.part_bytes,
            max_single_get_size=GET_BYTES,
            max_chunk_get_size=GET_BYTES,
            connection_timeout=min(cfg.timeout_s, 10.0),
            read_timeout=cfg.timeout_s,
            # a couple of quick retries; longer outages are the caller's (write-back backoff,
            # stale-if-error): the SDK's default waits 15 s and more
            retry_policy=LinearRetry(backoff=1, retry_total=2, random_jitter_range=0.5),
        )
        self._service = await self._stack.enter_async_context(service)

    async def close(self) -> None:
        await self._stack.aclose()
        self._service = None

    @property
    def _svc(self) -> BlobServiceClient:
        if self._service is None:
            raise RuntimeError("AzureOrigin used before start()")
        return self._service

    def _blob(self, bucket: str, key: str) -> Any:
        _check_blob_key(bucket, key)
        return self._svc.get_blob_client(_container_name(bucket), key)

    # -- buckets -----------------------------------------------------------------------------
    async def list_buckets(self) -> list[OriginBucket]:
        with _azure_errors(""):
            return [
                OriginBucket(name=c.name, created=c.last_modified.timestamp())
                async for c in self._svc.list_containers()
            ]

    async def create_bucket(self, bucket: str) -> None:
        container = self._svc.get_container_client(_container_name(bucket))
        try:
            with _azure_errors(bucket):
                await container.create_container()
        except errors.BucketAlreadyOwnedByYou:
            pass

    async def delete_bucket(self, bucket: str) -> None:
        """Delete the container if it holds no blob (Azure itself would delete a full one)."""
        container = self._svc.get_container_client(_container_name(bucket))
        try:
            with _azure_errors(bucket):
                async for _blob in container.list_blobs(results_per_page=1):
                    raise errors.BucketNotEmpty(resource=bucket)
                await container.delete_container()
        except errors.NoSuchBucket:
            pass

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            name = _container_name(bucket)
        except errors.InvalidBucketName:
            return False
        with _azure_errors(bucket):
            return await self._svc.get_container_client(name).exists()

    # -- objects -----------------------------------------------------------------------------
    async def head_object(self, bucket: str, key: str) -> OriginObject:
        blob = self._blob(bucket, key)
        with _azure_errors(bucket, key):
            return _describe(await blob.get_blob_properties())

    async def get_range(
        self, bucket: str, key: str, first: int, last: int, *, if_match: str | None = None
    ) -> AsyncIterator[bytes]:
        """``download_blob(offset, length)`` (conditional on ``if_match``), streamed in 4 MiB
        requests; see :meth:`Origin.get_range`."""
        check_range(bucket, key, first, last)
        blob = self._blob(bucket, key)
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs = {"etag": f'"{if_match}"', "match_condition": MatchConditions.IfNotModified}
        with _azure_errors(bucket, key):
            download = await blob.download_blob(
                offset=first, length=last - first + 1, decompress=False, **kwargs
            )  # the stored bytes, whatever their Content-Encoding
            total = (download.properties.content_range or "").rpartition("/")[2]
            if total.isdigit() and first >= int(total):  # an empty blob answers 0 bytes
                raise errors.InvalidRange(
                    f"bytes={first}-{last} of {total}", resource=f"{bucket}/{key}"
                )
            async for piece in download.chunks():
                yield piece

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
        """One ``Put Blob`` up to ``multipart_threshold_bytes``, else staged blocks of
        ``part_bytes`` (a few in parallel) and one ``Put Block List``. Blocks of a failed
        upload stay uncommitted (Azure drops them after a week). Creates the container when
        missing; see :meth:`Origin.put_object`. A stamped write reads the blob's properties
        first and makes the ``Put Blob`` (or ``Put Block List``) conditional on them
        (``match_condition`` ``IfNotModified`` with its ETag, or ``IfMissing``)."""
        blob = self._blob(bucket, key)
        sys_headers = system_headers(headers)
        settings = ContentSettings(
            content_type=content_type or "binary/octet-stream",
            **{attr: sys_headers[name] for name, attr in _SETTINGS.items() if name in sys_headers},
        )
        stored = {encode_metadata_name(k): v for k, v in (metadata or {}).items()}
        if etag:
            stored[ETAG_META] = etag
        if "expires" in sys_headers:
            stored[EXPIRES_META] = sys_headers["expires"]
        if tags:
            stored[TAGS_META] = urlencode(tags, quote_via=quote)
        condition: dict[str, Any] = {}
        if hlc:
            stored.update({HLC_META: str(hlc), SITE_META: site})
            condition = await self._condition_for(bucket, key, hlc, site)
        try:
            return await self._put(blob, bucket, key, body, size, settings, stored, condition)
        except errors.PreconditionFailed as exc:
            if not condition:
                raise
            raise errors.ServiceUnavailable(
                "origin: the blob changed between the comparison and the write",
                resource=f"{bucket}/{key}", retry_after_s=1,
            ) from exc

    async def _condition_for(self, bucket: str, key: str, hlc: int, site: str) -> dict[str, Any]:
        """The condition of a stamped write (``etag`` and ``match_condition`` of the blob in
        place, or ``IfMissing``), after checking its stamp.

        Raises:
            OriginHoldsNewer: the blob in place has a larger ``(hlc, site)``.
        """
        try:
            with _azure_errors(bucket, key):
                props = await self._blob(bucket, key).get_blob_properties()
        except (errors.NoSuchKey, errors.NoSuchBucket):
            return {"match_condition": MatchConditions.IfMissing}
        found = _describe(props)
        if holds_newer(found, hlc, site):
            raise OriginHoldsNewer(
                f"the origin holds a newer version (hlc {found.hlc}, site {found.site!r})",
                resource=f"{bucket}/{key}",
            )
        return {"etag": props.etag, "match_condition": MatchConditions.IfNotModified}

    async def _put(
        self,
        blob: Any,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        settings: ContentSettings,
        stored: dict[str, str],
        condition: dict[str, Any],
    ) -> str:
        """The upload of :meth:`put_object` (``condition``: keyword arguments of a
        conditional write, or none)."""
        if size <= self.config.multipart_threshold_bytes:
            data = await read_all(body, size=size)
            result = await self._with_container(
                bucket,
                key,
                lambda: blob.upload_blob(
                    data, length=size, overwrite=True, content_settings=settings, metadata=stored,
                    **condition,
                ),
            )
            return strip_etag(result["etag"])
        # same-width ids, unique per upload so a crashed earlier attempt cannot interfere
        upload_id = secrets.token_hex(6)

        def block_id(index: int) -> str:
            return base64.b64encode(f"{upload_id}-{index:06d}".encode()).decode()

        async def stage(index: int, data: bytes) -> BlobBlock:
            await self._with_container(
                bucket, key, lambda: blob.stage_block(block_id(index), data, length=len(data))
            )
            return BlobBlock(block_id=block_id(index))

        part_size = part_size_for(size, self.config.part_bytes, min_bytes=1, max_parts=MAX_BLOCKS)
        blocks = await upload_parts(body, size=size, part_size=part_size, upload=stage)
        with _azure_errors(bucket, key):
            result = await blob.commit_block_list(
                blocks, content_settings=settings, metadata=stored, **condition
            )
        return strip_etag(result["etag"])

    async def _with_container(self, bucket: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``; if the container is missing, create it and call once more."""
        try:
            with _azure_errors(bucket, key):
                return await call()
        except errors.NoSuchBucket:
            await self.create_bucket(bucket)
        with _azure_errors(bucket, key):
            return await call()

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> str | None:
        """Rewrite the blob's metadata with ``ec_tagging`` set to ``tags`` (removed for
        none), conditional on the ETag just read; see :meth:`Origin.put_tags`.

        Returns:
            The blob's new ETag (a metadata change changes it).

        Raises:
            PreconditionFailed: the blob changed between the read and the write (retry).
        """
        blob = self._blob(bucket, key)
        with _azure_errors(bucket, key):
            props = await blob.get_blob_properties()
            stored = {k: v for k, v in (props.metadata or {}).items() if k.lower() != TAGS_META}
            if tags:
                stored[TAGS_META] = urlencode(tags, quote_via=quote)
            result = await blob.set_blob_metadata(
                stored, etag=props.etag, match_condition=MatchConditions.IfNotModified
            )
        return strip_etag(result["etag"])

    async def delete_object(self, bucket: str, key: str, *, hlc: int = 0, site: str = "") -> None:
        """See :meth:`Origin.delete_object` (a stamped delete reads the properties first)."""
        if hlc:
            await self._condition_for(bucket, key, hlc, site)  # raises OriginHoldsNewer
        blob = self._blob(bucket, key)
        try:
            with _azure_errors(bucket, key):
                await blob.delete_blob()
        except (errors.NoSuchBucket, errors.NoSuchKey):
            pass

    async def iter_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = ""
    ) -> AsyncIterator[OriginObject]:
        """``List Blobs`` pages (with metadata) from ``prefix``; keys up to ``start_after``
        are read and skipped, as Azure has no start-after parameter."""
        container = self._svc.get_container_client(_container_name(bucket))
        with _azure_errors(bucket):
            async for props in container.list_blobs(
                name_starts_with=prefix or None, include=["metadata"]
            ):
                if props.name > start_after:
                    yield _describe(props)
