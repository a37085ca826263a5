"""Liveness and readiness of one service process, as ``/health/live`` and ``/health/ready``
answer them (:mod:`edgecache.common.monitor` serves them).

*Live*: the process's event loop answers (nothing else is asked: a live process that is not
ready should be left alone, not restarted). *Ready*: every check passes — connected to NATS,
JetStream reachable (``$JS.API.INFO`` answered within ``timeout_s``), plus the service's own
(a cache node: its chunk store writable).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

__all__ = ["Check", "Health", "HealthReport", "writable_dir"]

#: A readiness check: returns normally when it passes, raises (any exception, whose text is
#: reported) when it does not. It may be a coroutine function.
Check = Callable[[], "Awaitable[None] | None"]

_PROBE = ".health-probe"


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a health endpoint answers, as JSON (status 200 when ``ok``, else 503).

    Attributes:
        ok: every check passed.
        service: the service's name (``gateway``, ``cachenode``, …).
        checks: check name → ``"ok"`` or why it failed.
    """

    ok: bool
    service: str
    checks: dict[str, str] = {}


class Health:
    """The checks of one process.

    Args:
        service: the service's name, reported in every answer.
        timeout_s: how long one check may take before it counts as failed, seconds.
    """

    def __init__(self, service: str, *, timeout_s: float = 2.0) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        """Make readiness depend on ``check`` (see :data:`Check`), reported as ``name``."""
        self._checks[name] = check

    def watch_nats(self, nc: NATS) -> None:
        """Add the checks every service has: ``nats`` (the connection is up) and
        ``jetstream`` (the server answers ``$JS.API.INFO``)."""

        def connected() -> None:
            if not nc.is_connected:
                raise ConnectionError("not connected")

        async def jetstream() -> None:
            connected()
            await nc.jetstream(timeout=self.timeout_s).account_info()

        self.add_check("nats", connected)
        self.add_check("jetstream", jetstream)

    def live(self) -> HealthReport:
        """Always ok: answering at all is what liveness asks."""
        return HealthReport(ok=True, service=self.service)

    async def ready(self) -> HealthReport:
        """Run every check at once, each bounded by ``timeout_s``."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        return HealthReport(ok=all(r == "ok" for r in results), service=self.service, checks=checks)

    async def _run(self, check: Check) -> str:
        try:
            result = check()
            if result is not None:
                await asyncio.wait_for(result, self.timeout_s)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, not raised
            return str(exc) or type(exc).__name__
        return "ok"


def writable_dir(path: Path) -> Check:
    """A check that ``path`` takes a write: a small file written, fsynced and removed (in a
    thread, so a stuck disk does not stall the event loop)."""
    probe = path / _PROBE

    def write() -> None:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()

    async def check() -> None:
        await asyncio.to_thread(write)

    return check
