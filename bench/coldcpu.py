"""CPU seconds per cold GET, per process: where a cold read's CPU goes.

Run it from the repository root (nginx from Debian, as ``bench/hits.py``):

    .venv/bin/python bench/coldcpu.py [--gets 3] [--mib 256] [--profile DIR]

It starts the fast origin (nginx serving a directory, as ``bench/hits.py`` does) and
``edgecache up`` over it, then reads ``--gets`` objects of ``--mib`` MiB that edgecache has
never seen, one after the other, with boto3 through the gateway. For each GET it prints
MB/s, time to first byte and the CPU seconds (user + system, from ``/proc/<pid>/stat``)
that each process spent during it: the gateway (all its worker processes summed), the
cache node, nats-server (inside ``edgecache up``'s process tree), this client, and
``other`` (the rest of the machine: the kernel and everyone else's processes; a large
figure means the box was busy). ``--profile DIR`` also runs ``py-spy record`` on the
gateway worker(s) and the cache node for the whole series and writes its collapsed stacks there (``NAME.txt``, py-spy's ``raw`` format).

Another checkout's code is measured by running this file with that checkout's venv
Python (the stack comes from ``sys.executable``'s directory).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    FAKE_AWS_ENV,
    MB,
    CpuMeter,
    MiB,
    children,
    free_port,
    machine,
    s3_client,
    start_stack,
    stop,
)
from hits import BUCKET, HitBench, _timed_get, start_nginx

__all__ = ["main"]


def _pids(stack_pid: int) -> dict[str, int]:
    """The services of ``edgecache up`` by name, the gateway's extra workers as ``gateway-N``."""
    pids = children(stack_pid)
    if "gateway" in pids:
        workers = Path(f"/proc/{pids['gateway']}/task/{pids['gateway']}/children")
        for i, pid in enumerate(workers.read_text().split(), start=1):
            pids[f"gateway-{i}"] = int(pid)
    return pids


def _profile(pids: dict[str, int], out: Path) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    started = []
    for name, pid in pids.items():
        if name.startswith(("gateway", "cachenode")):
            argv = [
                spy,
                "record",
                "--gil",  # samples holding the GIL: where Python spends CPU, not where it waits
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "-o",
                str(out / f"{name}.txt"),
            ]
            started.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    time.sleep(1.0)  # py-spy attaches
    return started


def run(args: argparse.Namespace, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGECACHE_"))}
    env |= FAKE_AWS_ENV
    os.environ.update(FAKE_AWS_ENV)
    ports = {"origin_port": free_port(), "cache_port": free_port(), "gateway_port": free_port()}
    (tmp / "origin" / BUCKET).mkdir(parents=True)
    bench = HitBench(tmp, 0)
    size = args.mib * MiB
    with contextlib.ExitStack() as cleanup:
        nginx = start_nginx(tmp, **ports)
        cleanup.callback(stop, nginx)
        origin_url = f"http://127.0.0.1:{ports['origin_port']}"
        stack = start_stack(
            tmp / "data",
            ["--origin", "s3", "--origin-endpoint-url", origin_url],
            env,
            port=ports["gateway_port"],
        )
        cleanup.callback(stop, stack.process)
        pids = _pids(stack.process.pid)
        meter = CpuMeter({**pids, "up": stack.process.pid, "nginx": nginx.pid}, main_threads=["cachenode"])
        gateway = s3_client(stack.endpoint, stack.access_key, stack.secret_key)
        origin = s3_client(origin_url, "testing", "testing")
        keys = [f"cold-{i}" for i in range(args.gets + 1)]
        for key in keys:
            bench.write_object(key, size)
            _timed_get(origin, key)  # in the page cache, as the direct read in hits.py
        _timed_get(gateway, keys[0])  # the stack's first request (connections, TLS context)
        spies = _profile(pids, args.profile) if args.profile else []
        print(f"load {machine()['load']}  pids {pids}")
        names = ["gateway", "cachenode", "node loop", "nats-server", "client", "other"]
        print(f"{'GET':>4} {'MB/s':>7} {'TTFB ms':>8} " + " ".join(f"{n:>11}" for n in names))
        for i, key in enumerate(keys[1:], start=1):
            with meter.measure() as cpu:
                seconds, ttfb, n = _timed_get(gateway, key)
            if n != size:
                raise RuntimeError(f"the gateway served {n} of {size} bytes")
            row = {
                "gateway": sum(v for k, v in cpu.items() if k.startswith("gateway")),
                "cachenode": cpu.get("cachenode", 0.0),
                "node loop": cpu.get("cachenode:main", 0.0),
                "nats-server": cpu.get("nats-server", cpu.get("up", 0.0)),
                "client": cpu["client"],
                "other": cpu["other"],
            }
            cells = " ".join(f"{row[n]:>11.3f}" for n in names)
            print(f"{i:>4} {size / seconds / MB:>7.0f} {ttfb * 1e3:>8.1f} {cells}", flush=True)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=3, help="cold GETs to measure (3)")
    parser.add_argument("--mib", type=int, default=256, help="object size (256)")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="edgecache-coldcpu-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
