"""The admin API's requests to the cache nodes, over NATS only: ``edgecache.admin.*``
(purge, warm, uploads) and the two ``s3.*`` requests it needs (listing a prefix, aborting an
upload). Any cache node answers (queue group ``cachenode``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

import msgspec
import nats.errors

from edgecache.common import errors, subjects, wire
from edgecache.common.client import EdgecacheClient

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = ["CacheNodes"]

R = TypeVar("R", bound=msgspec.Struct)


class CacheNodes:
    """Asks the cache nodes on behalf of the admin API.

    Args:
        nc: the federator's NATS connection (identity ``federator``, docs/security.md).
        timeout_s: how long one request may take, in seconds (a warm fills a whole object).
    """

    def __init__(self, nc: NATS, *, timeout_s: float) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._s3 = EdgecacheClient(nc, timeout_s=timeout_s)

    async def _ask(self, subject: str, request: msgspec.Struct, reply_type: type[R]) -> R:
        try:
            msg = await self._nc.request(subject, wire.encode(request), timeout=self._timeout_s)
        except nats.errors.NoRespondersError:
            raise errors.ServiceUnavailable("no cache node is running") from None
        except nats.errors.TimeoutError:
            raise errors.ServiceUnavailable(f"no cache node answered {subject} in time") from None
        reply = msgspec.json.decode(msg.data, type=reply_type | wire.Error)
        if isinstance(reply, wire.Error):
            raise errors.from_code(reply.code, reply.message, resource=reply.resource)
        return reply

    async def purge(self, bucket: str, key: str) -> wire.PurgeResult:
        """Purge one object (see :mod:`edgecache.cachenode.admin`).

        Raises:
            ServiceUnavailable: no cache node answered.
        """
        return await self._ask(
            subjects.ADMIN_PURGE, wire.PurgeObject(bucket=bucket, key=key), wire.PurgeResult
        )

    async def warm(self, bucket: str, key: str) -> wire.WarmResult:
        """Fill one object into the cache.

        Raises:
            NoSuchBucket, NoSuchKey: no such object; ServiceUnavailable: the origin or the
            nodes failed.
        """
        return await self._ask(
            subjects.ADMIN_WARM, wire.WarmObject(bucket=bucket, key=key), wire.WarmResult
        )

    async def uploads(self, bucket: str = "", limit: int = 1000) -> wire.UploadList:
        """Multipart uploads in progress, oldest first (of ``bucket``, or all)."""
        return await self._ask(
            subjects.ADMIN_UPLOADS, wire.ListUploads(bucket=bucket, limit=limit), wire.UploadList
        )

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """AbortMultipartUpload. Raises NoSuchUpload."""
        await self._s3.request(
            wire.AbortMultipartUpload(bucket=bucket, key=key, upload_id=upload_id)
        )

    async def list_prefix(
        self, bucket: str, prefix: str
    ) -> AsyncIterator[list[wire.ObjectSummary]]:
        """Pages (up to 1000 objects) of every object under ``prefix``: the origin's listing
        merged with what is not yet written back, as ListObjectsV2 sees it.

        Raises:
            NoSuchBucket: no such bucket.
        """
        token = ""
        while True:
            reply = await self._s3.request(
                wire.ListObjects(bucket=bucket, prefix=prefix, continuation_token=token)
            )
            if not isinstance(reply, wire.ListObjectsResult):
                raise errors.InternalError(f"expected a listing, got {type(reply).__name__}")
            yield reply.contents
            if not reply.is_truncated or not reply.next_token:
                return
            token = reply.next_token
