"""edgecache benchmark: one run of the whole stack on this machine, printed as a table.

Run it from the repository root:

    .venv/bin/python bench/run.py [--size-mib 256] [--json]

What it starts (all on 127.0.0.1, all stopped on exit, Ctrl-C or an exception):

* ``moto_server`` from the venv, a real S3 server, as the origin (fake AWS credentials);
* ``edgecache up --origin s3 --origin-endpoint-url <moto>`` on a free port in a temp data
  dir, with default settings (8 MiB chunks); the script waits for ``edgecache is up:``.

What it measures (one pass each; MB = 10^6 bytes):

* cold GET of a ``--size-mib`` object seeded straight into moto, through the gateway with
  boto3 (``get_object``, body read in 1 MiB pieces and discarded), against the same
  download straight from moto; the ratio has a target of >= 1.0x;
* time to first byte of a cold GET of a fresh 64 MiB object (request sent -> first body
  byte), target <= 100 ms; the same straight from moto for reference;
* warm GET of the big object again, and the cache node's fills/hits around it (from
  ``edgecache status --json``) to show that the warm read made no origin GET;
* 4 KiB GET requests per second, warm: one presigned URL fetched for a fixed time by a pool
  of concurrent aiohttp connections in this process (no signing or botocore per request,
  so the client costs little next to the gateway);
* PUT of 64 MiB with boto3 ``put_object`` through the gateway and straight to moto, and how
  long write-back takes to land it in moto;
* peak RSS (``VmHWM``) of every child of ``edgecache up``; target <= 256 MiB for each of the
  four Python services;
* last, a probe: 4 PUTs of 64 MiB at once through the gateway, their write-back, and the
  write-back service's peak RSS after them (same target).

Each measurement also records the CPU seconds every process spent during it (from
``/proc/<pid>/stat``), which shows where the time goes. Nothing here touches the network
beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from harness import (
    FAKE_AWS_ENV,
    MB,
    VENV_BIN,
    CpuMeter,
    MiB,
    Row,
    Stack,
    children,
    fmt,
    free_port,
    machine,
    peak_rss_mib,
    render_table,
    s3_client,
    spawn,
    start_stack,
    stop,
    wait_until,
)

PIECE = MiB  # body read size for downloads
BUCKET = "bench"
SERVICES = ("gateway", "cachenode", "writeback", "federator")
RSS_TARGET_MIB = 256
TTFB_TARGET_MS = 100.0
SMALL_SIZE = 4 * 1024
SMALL_SECONDS = 5.0
SMALL_CONCURRENCY = (1, 16)
CHUNK = 8 * MiB  # the cache node's default chunk_bytes ...
FILL_CONCURRENCY = 4  # ... and fill_concurrency: its ranged GETs to the origin
PUT_SIZE = 64 * MiB
CONCURRENT_PUTS = 4
TTFB_SIZE = 64 * MiB


def start_moto(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``moto_server`` on a free port; returns the process and its URL once it answers."""
    port = free_port()
    process = spawn(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        log=workdir / "moto.log",
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with {process.returncode}; see {workdir / 'moto.log'}"
            )
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(answers, 30, "moto_server")
    return process, url


def download(client: Any, key: str) -> tuple[float, float, int]:
    """GET ``key``, reading the body in 1 MiB pieces; returns (seconds, first-byte seconds, bytes)."""
    t0 = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    first = body.read(1)
    ttfb = time.perf_counter() - t0
    size = len(first)
    while piece := body.read(PIECE):
        size += len(piece)
    return time.perf_counter() - t0, ttfb, size


def ranged_download(client: Any, key: str, size: int) -> float:
    """GET ``key`` as the cache node fills it: 8 MiB ranges, 4 at a time; returns seconds."""

    def fetch(first: int) -> None:
        last = min(first + CHUNK, size) - 1
        body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={first}-{last}")["Body"]
        while body.read(PIECE):
            pass

    t0 = time.perf_counter()
    with ThreadPoolExecutor(FILL_CONCURRENCY) as pool:
        list(pool.map(fetch, range(0, size, CHUNK)))
    return time.perf_counter() - t0


def upload(client: Any, key: str, data: bytes) -> float:
    t0 = time.perf_counter()
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return time.perf_counter() - t0


async def _request_rate(url: str, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """GET ``url`` from ``concurrency`` keep-alive connections for ``seconds``."""
    target = yarl.URL(url, encoded=True)  # the presigned query must reach the server unchanged
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def worker() -> None:
            nonlocal ok, failed
            while loop.time() < deadline:
                async with session.get(target) as response:
                    body = await response.read()
                if response.status == 200 and len(body) == SMALL_SIZE:
                    ok += 1
                else:
                    failed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, failed, time.perf_counter() - t0


def cache_stats(nats_url: str, data_dir: Path) -> dict[str, int]:
    """The cache node's counters, summed over nodes, from ``edgecache status --json`` (as
    the ``admin`` identity of the stack's private NATS, found through its data dir)."""
    out = subprocess.run(
        [
            str(VENV_BIN / "edgecache"),
            *("status", "--json", "--nats-url", nats_url, "--data-dir", str(data_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    nodes = json.loads(out)["nodes"]
    return {k: sum(n["stats"][k] for n in nodes) for k in ("fills", "hits", "misses")}


# == the benchmark =============================================================================
@dataclass
class Bench:
    """The running stack, moto, the two S3 clients, the processes we watch and the rows
    measured so far."""

    stack: Stack
    gateway: Any
    origin: Any
    pids: dict[str, int]  # the children of `edgecache up` by name
    meter: CpuMeter
    size: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        operation: str,
        value: float,
        unit: str,
        cpu: dict[str, float],
        *,
        target: str = "",
        passed: bool | None = None,
    ) -> None:
        self.rows.append(Row(operation, value, unit, target, passed, dict(cpu)))
        print(f"  {operation}: {fmt(value)} {unit}", file=sys.stderr, flush=True)

    def seed(self, key: str, size: int) -> None:
        """Put random bytes straight into moto (the cache has never seen them)."""
        self.origin.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))

    def big_gets(self) -> None:
        """Direct, cold and warm GET of the big object; fills/hits around the warm one."""
        mib = self.size // MiB
        self.seed("big", self.size)
        with self.meter.measure() as cpu:
            direct, _, n = download(self.origin, "big")
        self._check_size(n, self.size, "direct GET")
        self.add(f"GET {mib} MiB direct from moto", self.size / direct / MB, "MB/s", cpu)
        with self.meter.measure() as cpu:
            cold, _, n = download(self.gateway, "big")
        self._check_size(n, self.size, "cold GET")
        self.add(f"GET {mib} MiB cold via gateway", self.size / cold / MB, "MB/s", cpu)
        ratio = direct / cold
        self.add("cold GET / direct GET", ratio, "x", {}, target=">= 1.0x", passed=ratio >= 1.0)
        with self.meter.measure() as cpu:
            ranged = ranged_download(self.origin, "big", self.size)
        self.add(
            f"GET {mib} MiB direct from moto, 8 MiB ranges x4", self.size / ranged / MB, "MB/s", cpu
        )
        self.add("cold GET / direct ranged GET", ranged / cold, "x", {})
        before = self._stats_after_heartbeat()
        with self.meter.measure() as cpu:
            warm, _, n = download(self.gateway, "big")
        self._check_size(n, self.size, "warm GET")
        self.add(f"GET {mib} MiB warm via gateway", self.size / warm / MB, "MB/s", cpu)
        after = self._stats_after_heartbeat()
        fills = after["fills"] - before["fills"]
        self.add(
            "  origin fills during warm GET", fills, "chunks", {}, target="0", passed=fills == 0
        )
        self.add("  cache hits during warm GET", after["hits"] - before["hits"], "", {})

    def first_byte(self) -> None:
        """Time to first byte of a cold 64 MiB GET through the gateway, and from moto."""
        self.seed("ttfb", TTFB_SIZE)
        with self.meter.measure() as cpu:
            _, direct_ttfb, _ = download(self.origin, "ttfb")
        self.add("TTFB 64 MiB direct from moto", direct_ttfb * 1000, "ms", cpu)
        with self.meter.measure() as cpu:
            total, ttfb, n = download(self.gateway, "ttfb")
        self._check_size(n, TTFB_SIZE, "TTFB GET")
        ms = ttfb * 1000
        self.add(
            "TTFB 64 MiB cold via gateway",
            ms,
            "ms",
            cpu,
            target=f"<= {TTFB_TARGET_MS:.0f} ms",
            passed=ms <= TTFB_TARGET_MS,
        )
        self.add("  (whole cold 64 MiB GET)", TTFB_SIZE / total / MB, "MB/s", {})

    def small_gets(self) -> None:
        """4 KiB warm GETs per second with a presigned URL and a pool of connections."""
        self.seed("small", SMALL_SIZE)
        download(self.gateway, "small")  # fill it: the measured reads are warm
        url = self.gateway.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "small"}, ExpiresIn=600
        )
        for concurrency in SMALL_CONCURRENCY:
            what = f"GET 4 KiB warm, {concurrency} connection{'s' * (concurrency > 1)}"
            with self.meter.measure() as cpu:
                ok, failed, seconds = asyncio.run(_request_rate(url, SMALL_SECONDS, concurrency))
            if failed:
                self.notes.append(f"{what}: {failed} of {ok + failed} requests failed")
            self.add(what, ok / seconds, "req/s", cpu)

    def puts(self) -> None:
        """PUT 64 MiB straight to moto and through the gateway; then the write-back lag."""
        self.note_rss("before the PUTs")
        data = os.urandom(PUT_SIZE)
        with self.meter.measure() as cpu:
            direct = upload(self.origin, "put-direct", data)
        self.add("PUT 64 MiB direct to moto", PUT_SIZE / direct / MB, "MB/s", cpu)
        with self.meter.measure() as cpu:
            via = upload(self.gateway, "put-gateway", data)
            acked = time.perf_counter()
            wait_until(lambda: self._in_origin("put-gateway"), 120, "write-back of put-gateway")
        self.add("PUT 64 MiB via gateway", PUT_SIZE / via / MB, "MB/s", cpu)
        self.add("  write-back to moto after the ack", time.perf_counter() - acked, "s", {})

    def concurrent_puts(self) -> None:
        """A probe beyond the single PUT: several 64 MiB PUTs at once, their write-back, and
        the write-back service's peak RSS afterwards (it uploads several intents at once)."""
        data = os.urandom(PUT_SIZE)
        keys = [f"put-concurrent-{i}" for i in range(CONCURRENT_PUTS)]
        with self.meter.measure() as cpu:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENT_PUTS) as pool:
                list(pool.map(lambda key: upload(self.gateway, key, data), keys))
            acked = time.perf_counter()
            wait_until(lambda: all(map(self._in_origin, keys)), 120, "write-back of the PUTs")
        what = f"PUT {CONCURRENT_PUTS} x 64 MiB at once via gateway"
        self.add(what, CONCURRENT_PUTS * PUT_SIZE / (acked - t0) / MB, "MB/s", cpu)
        self.add("  write-back to moto after the acks", time.perf_counter() - acked, "s", {})
        self._rss_row("  peak RSS writeback after them", "writeback")

    def note_other_cpu(self) -> None:
        """How busy the rest of the machine was while we measured (noise on the figures)."""
        wall = sum(r.cpu_s.get("wall", 0) for r in self.rows)
        other = sum(r.cpu_s.get("other", 0) for r in self.rows)
        self.notes.append(
            f"'other' (the kernel and every process not ours) used {other:.1f} CPU-s "
            f"during {wall:.1f} s of measurements"
        )

    def note_rss(self, when: str) -> None:
        """A note with every watched process's peak RSS so far (which step raised it)."""
        peaks = (f"{n} {peak_rss_mib(p):.0f} MiB" for n, p in self.meter.pids.items())
        self.notes.append(f"peak RSS {when}: " + ", ".join(peaks))

    def peak_rss(self) -> None:
        """Peak RSS of every child of ``edgecache up``."""
        for name in self.pids:
            self._rss_row(f"peak RSS {name}", name)

    def _rss_row(self, operation: str, name: str) -> None:
        mib = peak_rss_mib(self.pids[name])
        if mib != mib:  # NaN: the process is gone
            self.notes.append(f"{operation}: process {self.pids[name]} is gone")
        elif name in SERVICES:
            target, passed = f"<= {RSS_TARGET_MIB} MiB", mib <= RSS_TARGET_MIB
            self.add(operation, mib, "MiB", {}, target=target, passed=passed)
        else:
            self.add(operation, mib, "MiB", {})

    def _in_origin(self, key: str) -> bool:
        try:
            self.origin.head_object(Bucket=BUCKET, Key=key)
            return True
        except self.origin.exceptions.ClientError:
            return False

    def _stats_after_heartbeat(self) -> dict[str, int]:
        time.sleep(2.5)  # cache nodes publish their counters every 2 s
        return cache_stats(self.stack.nats_url, self.stack.data_dir)

    def _check_size(self, got: int, expected: int, what: str) -> None:
        if got != expected:
            self.notes.append(f"{what}: read {got} bytes, expected {expected}")


def log_problems(data_dir: Path) -> list[str]:
    """Warnings, errors and 5xx replies the services logged so far (JSON lines), counted."""
    found = []
    for log in sorted((data_dir / "logs").glob("*.log")):
        counts: dict[str, int] = {}
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"level": "error" if "Traceback" in line or "ERROR" in line else ""}
            kind = event.get("level", "")
            if isinstance(event.get("status"), int) and event["status"] >= 500:
                kind = f"{event['status']} {event.get('error', '')}".strip()
            if kind in ("warning", "error", "critical") or kind[:1] == "5":
                what = f"{kind} {event.get('event', '')}".strip()
                counts[what] = counts.get(what, 0) + 1
        found += [f"{log.name}: {n} x {what}" for what, n in sorted(counts.items())]
    return found


def run(size: int, workdir: Path) -> tuple[Bench, dict[str, int]]:
    """Start moto and the stack, measure everything, stop both (whatever happens)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGECACHE_"))}
    env |= FAKE_AWS_ENV
    os.environ.update(FAKE_AWS_ENV)  # for this process's boto3 client of moto
    os.environ.pop("AWS_PROFILE", None)
    with contextlib.ExitStack() as cleanup:
        print("starting moto_server and edgecache up ...", file=sys.stderr, flush=True)
        moto, moto_url = start_moto(workdir, env)
        cleanup.callback(stop, moto)
        stack = start_stack(
            workdir / "data", ["--origin", "s3", "--origin-endpoint-url", moto_url], env
        )
        cleanup.callback(stop, stack.process)
        pids = children(stack.process.pid)
        origin = s3_client(moto_url, "testing", "testing")
        origin.create_bucket(Bucket=BUCKET)
        bench = Bench(
            stack,
            s3_client(stack.endpoint, stack.access_key, stack.secret_key),
            origin,
            pids,
            CpuMeter({**pids, "moto": moto.pid}),
            size,
        )
        steps = [bench.big_gets, bench.first_byte, bench.small_gets, bench.puts]
        steps += [bench.peak_rss, bench.concurrent_puts]  # the probe goes last
        for step in steps:
            try:
                step()
            except Exception as exc:  # the stack failed: say how, and measure the rest
                bench.notes.append(f"{step.__name__} failed: {type(exc).__name__}: {exc}")
        bench.note_other_cpu()
        now = children(stack.process.pid)
        restarted = sorted(n for n, p in pids.items() if now.get(n) != p)
        if restarted:
            bench.notes.append(f"not the same process at the end: {', '.join(restarted)}")
        bench.notes += log_problems(stack.data_dir)
        stop(stack.process)
        if stack.process.returncode:
            bench.notes.append(f"edgecache up exited with {stack.process.returncode}")
        said = [line.strip() for line in stack.output if line.startswith("edgecache:")]
        bench.notes += [f"up said: {line}" for line in said if "stop" not in line]
    return bench, pids


def cpu_table(rows: list[Row], names: list[str]) -> str:
    measured = [r for r in rows if r.cpu_s]
    cells = [
        [r.operation, f"{r.cpu_s['wall']:.2f}", *(f"{r.cpu_s.get(n, 0):.2f}" for n in names)]
        for r in measured
    ]
    return render_table(["CPU seconds during", "wall", *names], cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the big object (256)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    host = machine()  # the load average before the run
    try:
        with tempfile.TemporaryDirectory(prefix="edgecache-bench-") as tmp:
            bench, pids = run(args.size_mib * MiB, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted: moto and the stack are stopped; nothing to print", file=sys.stderr)
        sys.exit(130)
    names = ["client", *pids, "moto", "other"]
    if args.json:
        print(
            json.dumps(
                {"machine": host, "rows": [asdict(r) for r in bench.rows], "notes": bench.notes},
                indent=2,
            )
        )
        return
    print(" ".join(f"{k}={v}" for k, v in host.items()))
    print()
    print(
        render_table(
            ["operation", "figure", "unit", "target", "result"], [r.cells() for r in bench.rows]
        )
    )
    print()
    print(cpu_table(bench.rows, names))
    if bench.notes:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in bench.notes))


if __name__ == "__main__":
    main()
