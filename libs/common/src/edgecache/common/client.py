"""The async client of the ``s3.*`` NATS API, for the gateway and for platform services.

Example::

    nc = await nats.connect("nats://127.0.0.1:4222")
    client = EdgecacheClient(nc)
    await client.request(wire.CreateBucket(bucket="photos"))
    info = await client.put_object(wire.PutObject(bucket="photos", key="a.jpg"), body_iter)
    info, body = await client.get_object(wire.GetObject(bucket="photos", key="a.jpg"))
    async for piece in body: ...

Errors come back as :class:`edgecache.common.errors.S3Error` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from edgecache.common import errors, stream, subjects, wire
from edgecache.common.credit import CreditBudget
from edgecache.common.heartbeats import DEFAULT as DEFAULT_LIVENESS
from edgecache.common.heartbeats import Liveness

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = ["EdgecacheClient", "operation_of"]

R = TypeVar("R")


def operation_of(request: wire.Request) -> str:
    """The ``s3.<operation>`` subject of a request."""
    return subjects.s3_request(request)


def _expect(reply: wire.Reply, type_: type[R]) -> R:
    if not isinstance(reply, type_):
        raise errors.InternalError(f"expected {type_.__name__}, got {type(reply).__name__}")
    return reply


class EdgecacheClient:
    """Speaks the ``s3.*`` subjects (docs/protocol.md) over one NATS connection.

    Args:
        nc: a connected nats-py client.
        timeout_s: how long to wait for any one answer or credit grant, in seconds.
        window_frames: most credit one download asks for, in frames of up to
            ``max_payload`` bytes.
        budget: the download credit of ``nc``, shared by all its downloads (see
            :mod:`edgecache.common.credit`); default: one of its own, of
            ``DEFAULT_CREDIT_BYTES``. Whatever else downloads on ``nc`` must share it.
        liveness: the idle heartbeats asked of the node working on a request, and the
            silence after which it is taken for dead (``ServiceUnavailable`` then, in about
            ``liveness.timeout_s`` rather than ``timeout_s``); see
            :mod:`edgecache.common.heartbeats`.

    Attributes:
        budget: the download credit budget of ``nc``.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        timeout_s: float = 30.0,
        window_frames: int = 8,
        budget: CreditBudget | None = None,
        liveness: Liveness = DEFAULT_LIVENESS,
    ) -> None:
        self.nc = nc
        self.liveness = liveness
        self.timeout_s = timeout_s
        self.window_frames = window_frames
        self.budget = budget if budget is not None else CreditBudget(nc)

    async def request(self, request: wire.Request, *, timeout_s: float | None = None) -> wire.Reply:
        """Send a request that has no body either way and return its reply.

        ``timeout_s``: how long to wait for the reply, when it is not the client's
        ``timeout_s`` (a server-side copy answers only once its bytes are copied).

        Raises:
            S3Error: the error the cache node answered; ServiceUnavailable when none
                answered within the timeout, or the one working on it went silent.
        """
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=0)
        try:
            msg = await stream.open_request(
                self.nc, sub, operation_of(request), wire.encode(request), reply=inbox, headers=None,
                timeout_s=self.timeout_s if timeout_s is None else timeout_s,
                liveness=self.liveness,
            )
        finally:
            await sub.unsubscribe()
        return stream.read_control(msg)

    async def put_object(
        self,
        request: wire.PutObject | wire.UploadPart,
        body: AsyncIterator[bytes],
        *,
        trailers: dict[str, str] | None = None,
    ) -> wire.ObjectInfo | wire.PartInfo:
        """Upload ``body`` as an object (PutObject) or a part (UploadPart).

        ``trailers`` (trailing ``x-amz-checksum-*`` values) is read once ``body`` is
        exhausted. If ``body`` raises, nothing is stored and the error propagates.

        Returns:
            ``ObjectInfo`` for PutObject, ``PartInfo`` for UploadPart.
        """
        reply = await stream.upload(
            self.nc,
            operation_of(request),
            request,
            body,
            timeout_s=self.timeout_s,
            trailers=trailers,
            liveness=self.liveness,
        )
        return _expect(reply, wire.PartInfo if isinstance(request, wire.UploadPart) else wire.ObjectInfo)

    async def get_object(
        self, request: wire.GetObject
    ) -> tuple[wire.ObjectInfo, AsyncIterator[bytes]]:
        """Start a download.

        Returns:
            The object's metadata (``range_first``/``range_last`` say which bytes follow,
            inclusive) and an iterator of its bytes. The iterator raises an S3Error if the
            stream breaks (the body is then short: cut the client connection). Call
            ``aclose()`` on it when stopping early: that also returns its credit.

        Raises:
            S3Error: the node's error; ServiceUnavailable when no node answered, or no
                download credit came free, within ``timeout_s``.
        """
        reply, body = await self._download(request)
        if not isinstance(reply, wire.ObjectInfo):
            await body.aclose()  # type: ignore[attr-defined]
        return _expect(reply, wire.ObjectInfo), body

    async def get_object_or_plan(
        self, request: wire.GetObject, *, read_file: stream.ReadFile
    ) -> tuple[wire.ObjectInfo, AsyncIterator[bytes]] | tuple[wire.ReadPlan, None]:
        """Start a download that a node on this host may answer with a read plan (set
        ``request.local_host``; see docs/protocol.md, short-circuit reads).

        Args:
            read_file: reads the bytes of the stream's file frames (:class:`wire.FileSpan`).

        Returns:
            ``(ObjectInfo, bytes)`` as :meth:`get_object` when the node streams (file frames
            read with ``read_file``), or ``(ReadPlan, None)``: read the plan's files, then
            :meth:`release_lease`.
        """
        reply, body = await self._download(request, read_file=read_file)
        if isinstance(reply, wire.ReadPlan):
            await body.aclose()  # type: ignore[attr-defined]  # no stream was opened: frees the inbox
            return reply, None
        if not isinstance(reply, wire.ObjectInfo):
            await body.aclose()  # type: ignore[attr-defined]
        return _expect(reply, wire.ObjectInfo), body

    async def _download(
        self, request: wire.GetObject, *, read_file: stream.ReadFile | None = None
    ) -> tuple[wire.Reply, AsyncIterator[bytes]]:
        """Open the download of ``request`` with this connection's credit budget."""
        return await stream.download(
            self.nc,
            operation_of(request),
            request,
            budget=self.budget,
            window=self.window_frames,
            timeout_s=self.timeout_s,
            read_file=read_file,
            liveness=self.liveness,
        )

    async def release_lease(self, plan: wire.ReadPlan | wire.FileSpan) -> None:
        """Tell the node that answered ``plan`` (or sent the file frame) that its files are
        no longer read (best effort: the lease expires anyway after ``cachenode.lease_s``)."""
        try:
            await self.nc.publish(plan.release_subject, wire.encode(wire.LeaseRelease(lease_id=plan.lease_id)))
        except Exception:  # noqa: BLE001 - the connection is closed: the lease expires
            pass

    async def get_object_bytes(self, bucket: str, key: str) -> tuple[wire.ObjectInfo, bytes]:
        """The whole object in memory: for small objects and tests."""
        info, body = await self.get_object(wire.GetObject(bucket=bucket, key=key))
        try:
            return info, b"".join([piece async for piece in body])
        finally:
            await body.aclose()  # type: ignore[attr-defined]  # a no-op once it ended
