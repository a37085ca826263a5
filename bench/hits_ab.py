"""4 KiB hits of two gateway builds and of nginx ``proxy_cache``, interleaved in one run.

On a shared machine the speed available to a benchmark drifts by 2x within minutes, so two
runs of ``bench/hits.py`` taken one after the other compare badly. This script keeps both
builds and the anchor up at once and measures them in turns (``wrk`` on A, B, nginx; the
order rotated every round), so each round's ratios are taken under the same conditions:

    git archive <commit> services/gateway/src | tar -x -C /tmp/base
    .venv/bin/python bench/hits_ab.py --base-src /tmp/base/services/gateway/src

A is this checkout; B is the same stack with ``PYTHONPATH=<--base-src>``, so that its
gateway processes import that build of ``edgecache.gateway`` (everything else is this
checkout's). nginx serves the object files as the fast origin of both stacks and, as the
anchor, caches GETs in front of A (``sendfile off; output_buffers 2 1m``, as ``bench/hits.py``).
Prints each round and the median (min-max) of A/nginx, B/nginx and A/B per round, and
each build's gateway CPU per request (user + system time of its gateway processes from
``/proc/<pid>/stat`` over its own ``wrk`` runs, divided by the requests ``wrk`` counted):
steadier than requests/s on a shared machine, since it does not depend on how much of the
machine the build got.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import FAKE_AWS_ENV, children, cpu_seconds, free_port, s3_client, start_stack, stop
from hits import BUCKET, _fetch_md5, ensure_tools, start_nginx, wrk

SIZE = 4 * 1024
CONNECTIONS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-src", required=True, help="directory holding edgecache/gateway of build B")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of A, B, nginx (6)")
    parser.add_argument("--seconds", type=float, default=4.0, help="each wrk run (4)")
    args = parser.parse_args()
    if not (Path(args.base_src) / "edgecache" / "gateway").is_dir():
        sys.exit(f"{args.base_src}/edgecache/gateway is not a directory")
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="edgecache-hits-ab-") as name, contextlib.ExitStack() as cleanup:
        tmp = Path(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGECACHE_"))}
        env |= FAKE_AWS_ENV
        os.environ.update(FAKE_AWS_ENV)
        ports = {"origin_port": free_port(), "cache_port": free_port(), "gateway_port": free_port()}
        data = os.urandom(SIZE)
        (tmp / "origin" / BUCKET).mkdir(parents=True)
        (tmp / "origin" / BUCKET / "hit-4k").write_bytes(data)
        print("starting nginx and two stacks ...", file=sys.stderr, flush=True)
        nginx = start_nginx(tmp, **ports)
        cleanup.callback(stop, nginx)
        origin = ["--origin", "s3", "--origin-endpoint-url", f"http://127.0.0.1:{ports['origin_port']}"]
        a = start_stack(tmp / "a", origin, env, port=ports["gateway_port"])
        cleanup.callback(stop, a.process)
        b = start_stack(tmp / "b", origin, {**env, "PYTHONPATH": args.base_src})
        cleanup.callback(stop, b.process)
        urls = {}
        gateways = {"A": _gateway_pids(a.process.pid), "B": _gateway_pids(b.process.pid), "nginx": []}
        for which, stack in (("A", a), ("B", b)):
            client = s3_client(stack.endpoint, stack.access_key, stack.secret_key)
            urls[which] = client.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": "hit-4k"}, ExpiresIn=86400
            )
        urls["nginx"] = f"http://127.0.0.1:{ports['cache_port']}/" + urls["A"].split("/", 3)[3]
        digest = hashlib.md5(data).hexdigest()  # noqa: S324 - a checksum of our own bytes
        for which, url in urls.items():
            for attempt in range(4):  # the first fills, the next are hits
                try:
                    status, got = _fetch_md5(url)
                except OSError as exc:  # a stack still starting on a busy machine
                    print(f"  ({which}: {exc!r}, trying again)", file=sys.stderr, flush=True)
                    time.sleep(1 + attempt)
                    continue
                if status != 200 or got != digest:
                    sys.exit(f"{which} answered {status} with other bytes")
            wrk(url, CONNECTIONS, 2)  # warm-up, not counted
        rates: dict[str, list[float]] = {which: [] for which in urls}
        cpu_us: dict[str, list[float]] = {which: [] for which in urls}
        order = list(urls)
        for r in range(args.rounds):
            for which in order[r % 3 :] + order[: r % 3]:
                before = _cpu(gateways[which])
                result = wrk(urls[which], CONNECTIONS, args.seconds)
                rates[which].append(result.rate)
                cpu_us[which].append((_cpu(gateways[which]) - before) / max(1, result.requests) * 1e6)
            print(
                f"round {r + 1}: " + "  ".join(f"{w} {rates[w][-1]:,.0f}" for w in order) + " req/s"
                + "  gateway CPU/request: " + "  ".join(f"{w} {cpu_us[w][-1]:.0f}" for w in "AB") + " us"
                + f"  load {os.getloadavg()[0]:.1f}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    print(f"4 KiB warm GET, {CONNECTIONS} connections, {args.rounds} rounds of {args.seconds:g} s each")
    for which in order:
        print(f"  {which:6s} median {statistics.median(rates[which]):8,.0f} req/s  (per round: "
              + ", ".join(f"{v:,.0f}" for v in rates[which]) + ")")  # fmt: skip
    for which in "AB":
        print(f"  {which} gateway CPU per request: median {statistics.median(cpu_us[which]):.0f} us  (per round: "
              + ", ".join(f"{v:.0f}" for v in cpu_us[which]) + ")")  # fmt: skip
    ratios = [x / y for x, y in zip(cpu_us["A"], cpu_us["B"], strict=True)]
    print(f"  A/B gateway CPU per request: median {statistics.median(ratios):.3f}x "
          f"(min {min(ratios):.3f}x, max {max(ratios):.3f}x)")  # fmt: skip
    for top, bottom in (("A", "nginx"), ("B", "nginx"), ("A", "B")):
        ratios = [x / y for x, y in zip(rates[top], rates[bottom], strict=True)]
        print(f"  {top}/{bottom}: median {statistics.median(ratios):.3f}x "
              f"(min {min(ratios):.3f}x, max {max(ratios):.3f}x)")  # fmt: skip


def _gateway_pids(launcher: int) -> list[int]:
    """The gateway's processes under ``edgecache up`` (pid ``launcher``): the service's own
    and the workers it started."""
    gateway = children(launcher)["gateway"]
    workers = Path(f"/proc/{gateway}/task/{gateway}/children").read_text().split()
    return [gateway, *map(int, workers)]


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


if __name__ == "__main__":
    main()
