"""Idle heartbeats of a request in progress: how a requester tells a dead server from a slow one.

A requester asks for them with the header ``Ec-Heartbeat: <seconds>`` on its request; the
server working on that request publishes a heartbeat — an empty message with the header
``Ec-Heartbeat`` — to the request's reply subject every that many seconds, until it has
finished with the request (its last reply, frame or ``End`` is sent). Heartbeats go to the
same subject as everything else the server sends, so they are ordered with it and cost
nothing while the answer is quick (the first one is due after ``heartbeat_s``).

The requester gives up when it hears nothing at all — no reply, frame, credit or
heartbeat — for :attr:`Liveness.timeout_s`: the server is gone (``kill -9``, its host or
connection lost), and the caller gets ``ServiceUnavailable`` in about that time instead of
waiting for ``nats.request_timeout_s``. A server that is alive but slow (a fill from a slow
origin, a long listing) keeps beating and is waited for as before. This is NATS's own
pattern (JetStream's idle heartbeats) applied to one request; the membership heartbeats of
the federator (every ``cachenode.heartbeat_s``, KV ``nodes`` TTL ``federator.node_ttl_s``)
are too slow for it and cannot say which node holds a request a queue group gave away.

Both ends must know the header: cache nodes send heartbeats only when asked, so upgrade the
cache nodes before the services that ask (docs/operations.md).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.errors import TimeoutError as NatsTimeoutError

from edgecache.common import errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from edgecache.common.config import NatsConfig

__all__ = [
    "DEFAULT",
    "HDR_HEARTBEAT",
    "Liveness",
    "is_heartbeat",
    "next_message",
    "sending",
    "wait_any",
]

HDR_HEARTBEAT = "Ec-Heartbeat"
_MIN_S, _MAX_S = 0.05, 60.0  # a requested interval is clamped to this range


@dataclass(frozen=True, slots=True)
class Liveness:
    """What a requester asks of the server and how long it waits for a sign of life.

    Attributes:
        heartbeat_s: the interval the server is asked to beat at, seconds.
        timeout_s: silence after which the server is taken for dead, seconds (several
            intervals, so a busy event loop or a loaded host does not look like a death).
    """

    heartbeat_s: float = 0.5
    timeout_s: float = 2.0

    @classmethod
    def of(cls, config: NatsConfig) -> Liveness:
        """From ``nats.idle_heartbeat_s`` and ``nats.heartbeat_timeout_s``."""
        return cls(heartbeat_s=config.idle_heartbeat_s, timeout_s=config.heartbeat_timeout_s)

    def request_headers(self) -> dict[str, str]:
        """The header that asks the server for heartbeats."""
        return {HDR_HEARTBEAT: f"{self.heartbeat_s:g}"}


DEFAULT = Liveness()


def is_heartbeat(msg: Msg) -> bool:
    """Whether ``msg`` is a heartbeat (to be skipped by whoever reads the answer)."""
    return not msg.data and bool(msg.headers) and HDR_HEARTBEAT in msg.headers


def _interval_of(msg: Msg) -> float | None:
    """The interval the request ``msg`` asks heartbeats at, seconds; ``None``: none wanted."""
    value = (msg.headers or {}).get(HDR_HEARTBEAT)
    if not value or not msg.reply:
        return None
    try:
        return min(_MAX_S, max(_MIN_S, float(value)))
    except ValueError:
        return None


@asynccontextmanager
async def sending(nc: NATS, msg: Msg) -> AsyncIterator[None]:
    """Beat to ``msg.reply`` while the block runs, if the request ``msg`` asked for it.

    Costs one timer per request; a heartbeat is published only when an interval passes
    (best effort: a failed publish is ignored, the requester then gives up as it should).
    """
    every = _interval_of(msg)
    if every is None:
        yield
        return
    loop = asyncio.get_running_loop()
    headers = {HDR_HEARTBEAT: "1"}
    sends: set[asyncio.Future[None]] = set()

    def beat() -> None:
        nonlocal handle
        send = asyncio.ensure_future(nc.publish(msg.reply, b"", headers=headers))
        sends.add(send)
        send.add_done_callback(_forget(sends))
        handle = loop.call_later(every, beat)

    handle = loop.call_later(every, beat)
    try:
        yield
    finally:
        handle.cancel()


def _forget(sends: set[asyncio.Future[None]]):  # type: ignore[no-untyped-def]
    def done(send: asyncio.Future[None]) -> None:
        sends.discard(send)
        if not send.cancelled():
            send.exception()  # retrieved: a closed connection is not worth a warning

    return done


async def wait_any(sub: Subscription, timeout_s: float | None, liveness: Liveness | None) -> Msg:
    """The next message on ``sub``, heartbeats included.

    Waits at most ``timeout_s`` (``None``: no limit) and, when ``liveness`` is given, at most
    ``liveness.timeout_s``.

    Raises:
        nats.errors.TimeoutError: ``timeout_s`` passed without a message.
        ServiceUnavailable: ``liveness.timeout_s`` passed without a message: the server is gone.
    """
    silence = liveness.timeout_s if liveness is not None else None
    if silence is None or (timeout_s is not None and timeout_s <= silence):
        return await sub.next_msg(timeout=timeout_s)
    try:
        return await sub.next_msg(timeout=silence)
    except NatsTimeoutError as exc:
        raise errors.ServiceUnavailable(
            f"no heartbeat on {sub.subject} for {silence:g} s: the server is gone", retry_after_s=1
        ) from exc


async def next_message(sub: Subscription, timeout_s: float, liveness: Liveness | None) -> Msg:
    """The next message on ``sub`` that is not a heartbeat.

    Raises:
        nats.errors.TimeoutError: none came within ``timeout_s`` (heartbeats or not).
        ServiceUnavailable: nothing at all came for ``liveness.timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise NatsTimeoutError
        msg = await wait_any(sub, remaining, liveness)
        if not is_heartbeat(msg):
            return msg
