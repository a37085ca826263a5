"""What every benchmark under bench/ shares: processes it starts and stops, ``edgecache up``,
peak RSS and CPU accounting from /proc, boto3 clients, and plain-text tables.

Linux only (``/proc``, ``PR_SET_PDEATHSIG``); everything it starts listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from edgecache.launcher.natsserver import free_port

MiB = 1024 * 1024
MB = 1_000_000
VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# an origin that checks no signature (moto, nginx) still needs credentials from boto3
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# == results ===================================================================================
@dataclass
class Row:
    """One line of the table: a figure and, where there is one, its target."""

    operation: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process meanwhile

    def cells(self) -> list[str]:
        verdict = {True: "pass", False: "FAIL", None: ""}[self.passed]
        return [self.operation, fmt(self.value), self.unit, self.target, verdict]


def fmt(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            numeric = cell[:1].isdigit() or cell[:1] == "-" and cell[1:2].isdigit()
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# == processes =================================================================================
def _die_with_parent() -> None:
    """``preexec_fn``: SIGTERM the child if this script dies (Linux), and keep Ctrl-C for us."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    argv: list[str], *, env: dict[str, str], log: Path | None = None
) -> subprocess.Popen[str]:
    """Start ``argv`` in its own session (Ctrl-C reaches only this script, which stops it)."""
    with open(log or os.devnull, "w") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl
        )


def stop(process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by its pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Stack:
    """A running ``edgecache up``."""

    process: subprocess.Popen[str]
    endpoint: str
    nats_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    output: list[str]


def start_stack(
    data_dir: Path,
    origin_args: list[str],
    env: dict[str, str],
    timeout_s: float = 90.0,
    *,
    port: int | None = None,
) -> Stack:
    """``edgecache up --data-dir data_dir <origin_args>`` on a free port; returns once it
    prints its readiness line (credentials made up here, in the environment)."""
    access_key, secret_key = "EDGECACHEBENCHKEY", secrets.token_urlsafe(30)
    argv = [
        str(VENV_BIN / "edgecache"),
        "up",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port or free_port()),
        "--admin-port",  # not the default 14000, which another stack on the machine may hold
        str(free_port()),
        *origin_args,
    ]
    env = {**env, "EDGECACHE_ACCESS_KEY": access_key, "EDGECACHE_SECRET_KEY": secret_key}
    process = spawn(argv, env=env)
    output: list[str] = []
    ready: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("edgecache is up:"):
                ready.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_until(lambda: bool(ready) or process.poll() is not None, timeout_s, "edgecache is up:")
    except TimeoutError:
        stop(process)
        raise
    if not ready:
        raise RuntimeError(f"edgecache up exited with {process.returncode}:\n{''.join(output)}")
    fields = dict(part.split("=", 1) for part in ready[0].split()[3:])
    return Stack(
        process, fields["endpoint"], fields["nats"], access_key, secret_key, data_dir, output
    )


def children(pid: int) -> dict[str, int]:
    """The direct children of ``pid`` by service name (``python -m edgecache.<name>``)."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            words = [w.decode(errors="replace") for w in argv if w]
            module = next((w for w in words if w.startswith("edgecache.")), None)
            found[module.removeprefix("edgecache.") if module else Path(words[0]).name] = int(child)
    return found


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` (peak resident set size) of ``pid``, in MiB; NaN if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of ``pid`` so far: all its threads, or only ``thread`` (its
    task id; the process's own id: its main thread)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_cpu_seconds() -> float:
    """CPU time every process and the kernel spent so far (all CPUs, steal left out)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds per watched process, this one (``client``) and everything else on the
    machine (``other``) over a ``with`` block."""

    def __init__(self, pids: dict[str, int], main_threads: Iterable[str] = ()) -> None:
        self.pids = pids
        self.main_threads = set(main_threads)  # also measure these processes' main threads, as "NAME:main"

    def _sample(self) -> dict[str, float]:
        sample = {"client": time.process_time()}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                sample[name] = cpu_seconds(pid)
                if name in self.main_threads:
                    sample[f"{name}:main"] = cpu_seconds(pid, pid)
        return sample

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        spent: dict[str, float] = {}
        before, busy, t0 = self._sample(), busy_cpu_seconds(), time.perf_counter()
        yield spent
        after = self._sample()
        spent["wall"] = time.perf_counter() - t0
        spent.update({k: after[k] - before[k] for k in before if k in after})
        spent["other"] = max(
            0.0, busy_cpu_seconds() - busy - sum(v for k, v in spent.items() if k != "wall" and ":" not in k)
        )


# == S3 clients ================================================================================
def s3_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=None,
        region_name="us-east-1",
        config=BotoConfig(
            signature_version="s3v4",  # presigned URLs too (boto3 presigns with SigV2 otherwise)
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            read_timeout=120,
        ),
    )


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {
        "cpus": str(os.cpu_count()),
        "memory": f"{mem_kib / MiB:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load": Path("/proc/loadavg").read_text().split()[0],
    }
