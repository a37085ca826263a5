"""A small process supervisor for ``edgecache up``: start children, restart the ones that
die, stop them all in reverse order.

Synchronous on purpose: the caller's main thread polls :meth:`Supervisor.poll` in a loop
(every 0.1 s is plenty), so a signal handler only has to set a flag. Each child:

- writes stdout and stderr to its own log file (appended), so a child never blocks on a
  pipe nobody reads;
- runs in its own process group, so a Ctrl-C in the terminal reaches only the supervisor,
  which then stops the children in order;
- on Linux, gets SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``), so a
  ``kill -9`` of the supervisor leaves no orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edgecache.common.backoff import Backoff

__all__ = ["ChildSpec", "FatalExit", "RestartBackoff", "Supervisor", "tail"]

# A child exiting with this code failed on its arguments or config (argparse and
# run_service both use 2): restarting it cannot help.
CONFIG_ERROR_EXIT = 2


class FatalExit(RuntimeError):
    """A child exited in a way a restart cannot fix (a config error)."""

    def __init__(self, name: str, code: int, log_tail: str) -> None:
        super().__init__(f"{name} exited with {code} (a config or usage error)")
        self.name = name
        self.code = code
        self.log_tail = log_tail


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child.

    Attributes:
        name: short name for messages (``gateway``, ``nats-server``, …).
        argv: the command; ``argv[0]`` is an executable path.
        log_path: file that receives the child's stdout and stderr (appended; parent
            directories are created).
        env: the child's whole environment; ``None`` inherits the supervisor's.
    """

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RestartBackoff(Backoff):
    """Restart delays: :meth:`~edgecache.common.backoff.Backoff.delay` (``base_s *
    2**(failures - 1)`` capped at ``max_s`` seconds, no jitter), where ``failures`` counts
    exits in a row; a child that ran ``stable_s`` seconds starts over."""

    base_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 10.0


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic s
    failures: int = 0  # unexpected exits in a row
    restarts: int = 0  # total
    restart_at: float | None = None  # monotonic s at which to start it again


def tail(path: Path, lines: int = 20, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a text file (at most ``max_bytes`` read); ``""`` if absent."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class Supervisor:
    """Runs :class:`ChildSpec` s as child processes and keeps them running.

    Args:
        specs: the children, in start order; :meth:`stop` goes in reverse order.
        backoff: restart delays.
        out: where supervision events are written (one line each), default stderr.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        backoff: RestartBackoff | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.backoff = backoff or RestartBackoff()
        self._out = out
        self._clock = clock
        self._children = {s.name: _Child(s) for s in specs}
        self._preexec = _die_with_parent_hook()

    # -- queries -----------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        """Pid of child ``name`` if it is running."""
        process = self._children[name].process
        return process.pid if process and process.poll() is None else None

    def restarts(self, name: str) -> int:
        """How many times child ``name`` was restarted after an unexpected exit."""
        return self._children[name].restarts

    def running(self) -> list[str]:
        """Names of the children that are running, in start order."""
        return [n for n, c in self._children.items() if c.process and c.process.poll() is None]

    # -- actions -----------------------------------------------------------------------------
    def start(self, name: str) -> None:
        """Start child ``name`` now (it must not be running).

        Raises:
            OSError: the executable could not be run.
        """
        child = self._children[name]
        spec = child.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as log:
            child.process = subprocess.Popen(  # noqa: S603 - argv built by us
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=spec.env,
                process_group=0,
                preexec_fn=self._preexec,  # noqa: PLW1509 - only prctl, no threads here
            )
        child.started_at = self._clock()
        child.restart_at = None

    def start_all(self) -> None:
        """Start every child not yet started, in order."""
        for name, child in self._children.items():
            if child.process is None:
                self.start(name)

    def poll(self) -> None:
        """Notice children that exited and restart the ones whose backoff has run out.

        Raises:
            FatalExit: a child exited with a config/usage error (exit code 2).
        """
        now = self._clock()
        for name, child in self._children.items():
            process = child.process
            if process is not None and process.poll() is not None:
                self._exited(child, process.returncode, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._say(f"restarting {name} (restart #{child.restarts})")
                try:
                    self.start(name)
                except OSError as exc:
                    child.started_at = now
                    self._exited(child, 127, now)
                    self._say(f"could not start {name}: {exc}")

    def _exited(self, child: _Child, code: int, now: float) -> None:
        spec = child.spec
        child.process = None
        ran_s = now - child.started_at
        if code == CONFIG_ERROR_EXIT:
            raise FatalExit(spec.name, code, tail(spec.log_path))
        child.failures = 1 if ran_s >= self.backoff.stable_s else child.failures + 1
        delay = self.backoff.delay(child.failures)
        child.restart_at = now + delay
        self._say(
            f"{spec.name} exited with {_describe(code)} after {ran_s:.1f}s; "
            f"restarting in {delay:.1f}s (log: {spec.log_path})"
        )
        if child.failures == 1 and code > 0:  # a crash, the first of a streak: show why, once
            last = tail(spec.log_path, lines=10)
            if last:
                self._say(f"last lines of {spec.log_path.name}:\n{last}")

    def stop(self, *, timeout_s: float = 10.0, force: Callable[[], bool] = lambda: False) -> None:
        """Stop every child, in reverse start order: SIGTERM, wait up to ``timeout_s``
        seconds, then SIGKILL. Pending restarts are cancelled. ``force()`` turning true
        (a second Ctrl-C) skips the waiting."""
        for child in self._children.values():
            child.restart_at = None
        for child in reversed(list(self._children.values())):
            process = child.process
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                deadline = self._clock() + timeout_s
                while process.poll() is None and self._clock() < deadline and not force():
                    time.sleep(0.02)
                if process.poll() is None:
                    why = "asked to stop at once" if force() else f"did not stop within {timeout_s:.0f}s"
                    self._say(f"{child.spec.name} {why}: killing it")
                    process.kill()
                    process.wait()
            child.process = None

    def _say(self, line: str) -> None:
        out = self._out or sys.stderr
        print(f"edgecache: {line}", file=out, flush=True)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
