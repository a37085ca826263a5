"""Cache hits against nginx ``proxy_cache``, and a cold read against a fast origin, in one run.

Run it from the repository root (as root it installs nginx and wrk from Debian if missing):

    .venv/bin/python bench/hits.py [--seconds 10] [--cold-mib 256] [--cold-gets 3] [--readers 64]
                                   [--readers-mib 1024] [--json] [--only STEP ...]

What it starts, all on 127.0.0.1 and all stopped on exit, Ctrl-C or an exception:

* one nginx with two servers: the **fast origin** (``root`` at a directory of object
  files, so path-style ``HEAD``/ranged ``GET /<bucket>/<key>`` behave as S3's do for reads)
  and the **anchor**, ``proxy_cache`` in front of the gateway (``sendfile off;
  output_buffers 2 1m``, the fastest nginx setting measured on this kind of box);
* ``edgecache up --origin s3 --origin-endpoint-url <the fast origin>``.

What it measures, one pass each, in one run (MB = 10^6 bytes):

* warm GET of 4 KiB (64 connections), 1 MiB and 64 MiB (16 connections): ``wrk`` on the
  same presigned SigV4 URL against the gateway and against nginx, whose cache was filled
  through the gateway; requests/s, MB/s, p50/p99 latency and the edgecache/nginx ratio;
* cold GET of ``--cold-gets`` objects of ``--cold-mib`` through the gateway with boto3,
  each right after boto3 read it straight from the fast origin: the medians' MB/s, time
  to first byte and ratio, and the first byte of the stack's first origin read;
* many readers at once: ``--readers`` GETs of one cached ``--readers-mib`` object and 256
  GETs of a 4 KiB object, all at the same moment, each body checked for its length; and
  whether nats-server logged a slow consumer meanwhile;
* the peak RSS (``VmHWM``) of every edgecache service afterwards.

Bodies are checked (MD5) once through each path before the timed runs; ``wrk`` itself
counts only status codes. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from harness import (
    FAKE_AWS_ENV,
    MB,
    CpuMeter,
    MiB,
    children,
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

BUCKET = "bench"
SERVICES = ("gateway", "cachenode", "writeback", "federator")
RSS_TARGET_MIB = 256
HIT_LOADS = (  # key, size, wrk connections, target ratio to nginx
    ("hit-4k", 4 * 1024, 64, 0.15),
    ("hit-1m", MiB, 16, 0.3),
    ("hit-64m", 64 * MiB, 16, 0.5),
)
COLD_TARGET = 0.5  # cold GET / direct GET from the fast origin
TTFB_TARGET_MS = 30.0
SMALL_READERS = 256
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile off;
    output_buffers 2 1m;
    keepalive_requests 10000000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=hits:16m max_size=8g
                     inactive=1h use_temp_path=off;
    server {{  # the fast origin: object files, path-style /<bucket>/<key>
        listen 127.0.0.1:{origin_port};
        root {tmp}/origin;
        location / {{ autoindex on; }}
    }}
    server {{  # the anchor: proxy_cache hits in front of the gateway
        listen 127.0.0.1:{cache_port};
        location / {{
            proxy_pass http://127.0.0.1:{gateway_port};
            proxy_set_header Host 127.0.0.1:{gateway_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hits;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
        }}
    }}
}}
"""


# == results ===================================================================================
@dataclass
class Row:
    """One comparison: edgecache's figure, the anchor's, their ratio and its target."""

    what: str
    unit: str
    edgecache: float
    anchor: float | None = None
    target: str = ""
    passed: bool | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[str]:
        ratio = "" if not self.anchor else f"{self.edgecache / self.anchor:.3f}x"
        anchor = "" if self.anchor is None else _num(self.anchor)
        verdict = {True: "pass", False: "FAIL", None: ""}[self.passed]
        return [self.what, _num(self.edgecache), anchor, self.unit, ratio, self.target, verdict]


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


@dataclass
class WrkResult:
    """What ``wrk --latency`` printed."""

    requests: int
    seconds: float
    bytes_read: float
    errors: int  # non-2xx/3xx answers plus socket errors
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def mb_s(self) -> float:
        return self.bytes_read / self.seconds / MB


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output (latencies in ms, bytes as wrk's binary units)."""

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", text)
    if not done:
        raise RuntimeError(f"wrk printed no summary:\n{text}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * _UNITS[done.group(3)] / 1e3,
        bytes_read=float(done.group(4)) * _SIZES[done.group(5)],
        errors=errors,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
    )


def wrk(url: str, connections: int, seconds: float) -> WrkResult:
    """``wrk`` with 2 threads (one per core here) and ``connections`` keep-alive connections."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout
    return parse_wrk(out)


# == tools =====================================================================================
def ensure_tools() -> None:
    """nginx and wrk from Debian: installed as root when missing, else a clear error."""
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench/hits.py needs {' and '.join(missing)}: apt-get install {' '.join(missing)}")
    print(f"installing {' '.join(missing)} from Debian ...", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def start_nginx(tmp: Path, *, origin_port: int, cache_port: int, gateway_port: int) -> Any:
    for name in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
        (tmp / name).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp, origin_port=origin_port, cache_port=cache_port, gateway_port=gateway_port
        )
    )
    process = spawn(["nginx", "-c", str(conf), "-p", str(tmp)], env=dict(os.environ), log=tmp / "nginx.out")

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(tmp / 'nginx-error.log').read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{origin_port}/", timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(answers, 30, "nginx")
    return process


# == the benchmark =============================================================================
@dataclass
class HitBench:
    tmp: Path
    seconds: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        anchor = "" if row.anchor is None else f" vs {_num(row.anchor)}"
        print(f"  {row.what}: {_num(row.edgecache)}{anchor} {row.unit}", file=sys.stderr, flush=True)

    def write_object(self, key: str, size: int) -> str:
        """An object file in the fast origin (random bytes); returns its MD5."""
        path = self.tmp / "origin" / BUCKET / key
        path.parent.mkdir(parents=True, exist_ok=True)
        md5 = hashlib.md5()  # noqa: S324 - a checksum of our own bytes
        with open(path, "wb") as f:
            left = size
            while left:
                piece = os.urandom(min(left, 8 * MiB))
                md5.update(piece)
                f.write(piece)
                left -= len(piece)
        return md5.hexdigest()


def _fetch_md5(url: str, *, tries: int = 5) -> tuple[int, str]:
    """GET ``url`` whole: (status, MD5 of the body); a 503 (a stack still warming up, a
    node busy with another test's load) is tried again, a second apart, as S3 clients do."""
    for attempt in range(tries):
        md5 = hashlib.md5()  # noqa: S324
        try:
            with urllib.request.urlopen(url, timeout=300) as response:
                while piece := response.read(MiB):
                    md5.update(piece)
                return response.status, md5.hexdigest()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == tries - 1:
                raise
            print(f"  (503 on a check GET, trying again: {exc.read()[:200]!r})", file=sys.stderr)
            time.sleep(1)
    raise AssertionError("unreachable")


def hits(
    bench: HitBench, gateway: Any, gateway_url: str, cache_url: str, meter: CpuMeter,
    loads: tuple[tuple[str, int, int, float], ...] = HIT_LOADS,
) -> None:
    """wrk against the gateway and against nginx for each size in ``loads``."""
    for key, size, connections, target in loads:
        digest = bench.write_object(key, size)
        url = gateway.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=7 * 86400
        )
        path_and_query = url.split("/", 3)[3]
        anchor_url = f"{cache_url}/{path_and_query}"
        for which, u in (("edgecache", url), ("nginx", anchor_url), ("nginx", anchor_url)):
            status, got = _fetch_md5(u)  # the first fills, the second must be a hit
            if status != 200 or got != digest:
                raise RuntimeError(f"{which} answered {status} with other bytes for {key}")
        wrk(url, connections, 2)  # warm-up, not counted
        wrk(anchor_url, connections, 2)
        with meter.measure() as cpu:
            ours = wrk(url, connections, bench.seconds)
        theirs = wrk(anchor_url, connections, bench.seconds)
        label = f"warm GET {_size_text(size)}, {connections} conns"
        if ours.errors or theirs.errors:
            bench.notes.append(f"{label}: errors edgecache={ours.errors} nginx={theirs.errors}")
        if size >= MiB:
            value, anchor, unit = ours.mb_s, theirs.mb_s, "MB/s"
        else:
            value, anchor, unit = ours.rate, theirs.rate, "req/s"
        ratio = value / anchor if anchor else 0.0
        bench.add(Row(label, unit, value, anchor, f">= {target}x", ratio >= target, cpu))
        if size < MiB:  # what a hit costs the gateway, steadier than req/s on a shared box
            gateway_cpu = sum(v for k, v in cpu.items() if k.startswith("gateway"))
            bench.add(Row(f"  gateway CPU per request {_size_text(size)}", "us", gateway_cpu / ours.requests * 1e6))
        bench.add(Row(f"  p50 latency {_size_text(size)}", "ms", ours.p50_ms, theirs.p50_ms))
        bench.add(Row(f"  p99 latency {_size_text(size)}", "ms", ours.p99_ms, theirs.p99_ms))


def _timed_get(client: Any, key: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    first = body.read(1)
    ttfb = time.perf_counter() - t0
    size = len(first)
    while piece := body.read(MiB):
        size += len(piece)
    return time.perf_counter() - t0, ttfb, size


def cold(bench: HitBench, gateway: Any, origin: Any, size: int, gets: int, meter: CpuMeter) -> None:
    """``gets`` never-read objects through the gateway, each right after boto3 read it
    straight from the origin (which also puts its file in the page cache); the medians of
    both, so one noisy read (a 256 MiB read takes 0.1-1 s) does not make the ratio. The
    first is also the stack's first origin read, reported on its own."""
    cold_runs, direct_runs = [], []
    for i in range(gets):
        key = f"cold-{i}"
        bench.write_object(key, size)
        direct = _timed_get(origin, key)
        if direct[2] != size:
            raise RuntimeError(f"the fast origin served {direct[2]} of {size} bytes")
        with meter.measure() as cpu:
            through = _timed_get(gateway, key)
        if through[2] != size:
            raise RuntimeError(f"the gateway served {through[2]} of {size} bytes")
        cold_runs.append((*through, cpu))
        direct_runs.append(direct)
    warm_s, _, _ = _timed_get(gateway, f"cold-{gets - 1}")
    mib = size // MiB
    by_speed = sorted(cold_runs, key=lambda run: run[0])
    cold_s, _, _, cpu = by_speed[len(by_speed) // 2]
    direct_s = statistics.median(run[0] for run in direct_runs)
    value, anchor = size / cold_s / MB, size / direct_s / MB
    bench.add(
        Row(f"cold GET {mib} MiB (vs boto3 direct), median of {gets}", "MB/s", value, anchor,
            f">= {COLD_TARGET}x", value / anchor >= COLD_TARGET, cpu)
    )
    ttfb = statistics.median(run[1] for run in cold_runs) * 1e3
    bench.add(
        Row(f"  time to first byte, cold {mib} MiB, median", "ms", ttfb,
            statistics.median(run[1] for run in direct_runs) * 1e3,
            f"<= {TTFB_TARGET_MS:.0f} ms", ttfb <= TTFB_TARGET_MS)
    )
    bench.add(
        Row("  time to first byte, the stack's first origin read", "ms", cold_runs[0][1] * 1e3,
            direct_runs[0][1] * 1e3)
    )
    bench.add(Row(f"  second (warm) GET {mib} MiB", "MB/s", size / warm_s / MB))


async def _many(url: str, readers: int, size: int) -> tuple[int, float]:
    """``readers`` GETs of ``url`` at once; how many returned all ``size`` bytes, and MB/s."""
    target = yarl.URL(url, encoded=True)
    connector = aiohttp.TCPConnector(limit=readers)
    timeout = aiohttp.ClientTimeout(total=1800)
    whole = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            nonlocal whole
            got = 0
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(target) as response:
                    async for piece in response.content.iter_chunked(MiB):
                        got += len(piece)
                    if response.status == 200 and got == size:
                        whole += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(readers)))
        return whole, readers * size / (time.perf_counter() - t0) / MB


def many_readers(bench: HitBench, gateway: Any, readers: int, size: int, nats_log: Path) -> None:
    """All at once: ``readers`` downloads of a big object, then 256 of a small one."""
    for key, n, each in (("many-big", readers, size), ("many-small", SMALL_READERS, 4 * 1024)):
        bench.write_object(key, each)
        url = gateway.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=86400
        )
        _fetch_md5(url)  # fill it: what follows are hits
        slow_before = _slow_consumers(nats_log)
        whole, mb_s = asyncio.run(_many(url, n, each))
        slow = _slow_consumers(nats_log) - slow_before
        label = f"{n} readers x {_size_text(each)} at once: whole bodies"
        bench.add(Row(label, "bodies", whole, n, f"{n} of {n}", whole == n))
        bench.add(Row(f"  {n} x {_size_text(each)}: aggregate", "MB/s", mb_s))
        bench.add(Row(f"  {n} x {_size_text(each)}: slow consumers logged", "", slow, None, "0", slow == 0))


def _size_text(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // 1024} KiB"


def _slow_consumers(log: Path) -> int:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace").count("Slow Consumer")
    return 0


def peak_rss(bench: HitBench) -> None:
    for name in SERVICES:
        if name in bench.pids:
            mib = peak_rss_mib(bench.pids[name])
            bench.add(Row(f"peak RSS {name}", "MiB", mib, None, f"<= {RSS_TARGET_MIB}", mib <= RSS_TARGET_MIB))


def run(args: argparse.Namespace, tmp: Path) -> HitBench:
    bench = HitBench(tmp, args.seconds)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGECACHE_"))}
    env |= FAKE_AWS_ENV
    os.environ.update(FAKE_AWS_ENV)
    ports = {"origin_port": free_port(), "cache_port": free_port(), "gateway_port": free_port()}
    (tmp / "origin" / BUCKET).mkdir(parents=True)
    with contextlib.ExitStack() as cleanup:
        print("starting nginx and edgecache up ...", file=sys.stderr, flush=True)
        nginx = start_nginx(tmp, **ports)
        cleanup.callback(stop, nginx)
        origin_url = f"http://127.0.0.1:{ports['origin_port']}"
        stack = start_stack(
            tmp / "data", ["--origin", "s3", "--origin-endpoint-url", origin_url], env,
            port=ports["gateway_port"],
        )
        cleanup.callback(stop, stack.process)
        bench.pids = children(stack.process.pid)
        if "gateway" in bench.pids:  # its other workers (multiprocessing children)
            workers = Path(f"/proc/{bench.pids['gateway']}/task/{bench.pids['gateway']}/children")
            for i, pid in enumerate(workers.read_text().split(), start=1):
                bench.pids[f"gateway-{i}"] = int(pid)
        meter = CpuMeter({**bench.pids, "nginx": nginx.pid})
        gateway = s3_client(stack.endpoint, stack.access_key, stack.secret_key)
        origin = s3_client(origin_url, "testing", "testing")
        cache_url = f"http://127.0.0.1:{ports['cache_port']}"
        nats_log = stack.data_dir / "logs" / "nats-server.log"
        steps = [
            ("hits", lambda: hits(bench, gateway, stack.endpoint, cache_url, meter)),
            ("4k", lambda: hits(bench, gateway, stack.endpoint, cache_url, meter, HIT_LOADS[:1])),
            ("cold", lambda: cold(bench, gateway, origin, args.cold_mib * MiB, args.cold_gets, meter)),
            ("many readers", lambda: many_readers(bench, gateway, args.readers, args.readers_mib * MiB, nats_log)),
            ("peak RSS", lambda: peak_rss(bench)),
        ]
        for name, step in steps:
            if (args.only and name not in args.only) or (not args.only and name == "4k"):
                continue
            try:
                step()
            except Exception as exc:  # measure the rest, say what failed
                bench.notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
        if args.hold:
            print(f"holding the stack {args.hold:.0f} s: pids {bench.pids}", file=sys.stderr, flush=True)
            time.sleep(args.hold)
    return bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each wrk run (10)")
    parser.add_argument("--cold-mib", type=int, default=256, help="the cold object (256)")
    parser.add_argument("--cold-gets", type=int, default=3, help="cold objects read, medians reported (3)")
    parser.add_argument("--readers", type=int, default=64, help="concurrent big readers (64)")
    parser.add_argument("--readers-mib", type=int, default=1024, help="their object (1024)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only", action="append", choices=["hits", "cold", "many readers", "peak RSS", "4k"],
        help="run only this step (repeatable); default: all; 4k: the 4 KiB hit row alone",
    )
    parser.add_argument(
        "--hold", type=float, default=0.0,
        help="keep the stack up this many seconds after the steps (to attach py-spy)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools()
    host = machine()
    try:
        with tempfile.TemporaryDirectory(prefix="edgecache-hits-") as tmp:
            bench = run(args, Path(tmp))
    except KeyboardInterrupt:
        sys.exit(130)
    if args.json:
        print(json.dumps({"machine": host, "rows": [asdict(r) for r in bench.rows], "notes": bench.notes}, indent=2))
        return
    print(" ".join(f"{k}={v}" for k, v in host.items()))
    print()
    header = ["measurement", "edgecache", "anchor", "unit", "ratio", "target", "result"]
    print(render_table(header, [r.cells() for r in bench.rows]))
    if bench.notes:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in bench.notes))


if __name__ == "__main__":
    main()
