"""Scale run: a file-origin bucket of 100,000 objects (files made directly, 100 directories
of 1,000), then ListObjectsV2 page latency with and without a delimiter, the stack's start
time with the manifests of many read objects in KV ``objects``, and the size of KV
``objects`` before and after those manifests expire (``cachenode.manifest_ttl_s``).

The anchor for "before" is measured in the same run: the file origin's walking listing
(the interface's default ``iter_level``, rolling up the walk; what every delimiter listing
did before) against its level listing.

    .venv/bin/python bench/scale.py [--dirs 100] [--per-dir 1000] [--reads 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    FAKE_AWS_ENV,
    machine,
    render_table,
    s3_client,
    start_stack,
    stop,
)

from edgecache.common.config import load_config  # noqa: E402
from edgecache.common.runtime import connect_nats  # noqa: E402
from edgecache.origin.base import Origin  # noqa: E402
from edgecache.origin.file import FileOrigin  # noqa: E402

BUCKET = "scale"
RUNS = 5  # each latency is the median of this many
TTL_S = 15  # manifest_ttl_s of the stack under test


def make_bucket(origin_dir: Path, dirs: int, per_dir: int) -> None:
    """``d<i>/f<j>`` files of one byte, written directly (foreign objects)."""
    asyncio.run(_create(origin_dir))
    bucket_dir = origin_dir / BUCKET
    for i in range(dirs):
        d = bucket_dir / f"d{i:03}"
        d.mkdir(exist_ok=True)
        for j in range(per_dir):
            (d / f"f{j:05}").write_bytes(b"x")


async def _create(origin_dir: Path) -> None:
    origin = FileOrigin(origin_dir)
    await origin.start()
    await origin.create_bucket(BUCKET)


def median_ms(fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _first_page(items, n: int = 1000) -> int:  # type: ignore[no-untyped-def]
    count = 0
    async for _ in items:
        count += 1
        if count >= n:
            break
    return count


def origin_anchor(origin_dir: Path) -> list[list[str]]:
    """First page (up to 1,000 entries) read from the file origin in this process."""
    origin = FileOrigin(origin_dir)
    cases = {
        "delimiter /, top, level listing (new)": lambda: origin.iter_level(BUCKET, delimiter="/"),
        "delimiter /, top, rolled-up walk (old)": lambda: Origin.iter_level(
            origin, BUCKET, delimiter="/"
        ),
        "no delimiter, top (walk)": lambda: origin.iter_objects(BUCKET),
        "prefix d042/, delimiter / (level)": lambda: origin.iter_level(
            BUCKET, prefix="d042/", delimiter="/"
        ),
    }
    rows = []
    for name, make in cases.items():
        ms = median_ms(lambda make=make: asyncio.run(_first_page(make())))
        rows.append([name, f"{ms:.1f}"])
    return rows


async def _kv_objects(data_dir: Path) -> tuple[int, int]:
    """(messages, bytes) of KV ``objects``, read as the cache node's NATS identity."""
    config = load_config(data_dir / "services" / "cachenode.toml")
    nc = await connect_nats(config.nats, name="bench-scale")
    try:
        info = await nc.jetstream().stream_info("KV_objects")
        return info.state.messages, info.state.bytes
    finally:
        await nc.close()


def kv_objects(data_dir: Path) -> tuple[int, int]:
    return asyncio.run(_kv_objects(data_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=2000, help="objects HEADed (adopted)")
    args = parser.parse_args()
    total = args.dirs * args.per_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGECACHE_"))}
    env |= FAKE_AWS_ENV | {"EDGECACHE_CACHENODE__MANIFEST_TTL_S": str(TTL_S)}
    with tempfile.TemporaryDirectory(prefix="edgecache-scale-") as tmp:
        work = Path(tmp)
        origin_dir, data_dir = work / "origin", work / "data"
        started = time.perf_counter()
        make_bucket(origin_dir, args.dirs, args.per_dir)
        print(f"made {total} objects in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        print(f"\n{machine()}\n\nFile origin, first page of up to 1,000 ({total} objects), ms:")
        anchor = origin_anchor(origin_dir)
        print(render_table(["listing", "median ms"], anchor))
        walk, level = float(anchor[1][1]), float(anchor[0][1])
        print(f"level listing vs rolled-up walk: {walk / level:.0f}x faster")

        with contextlib.ExitStack() as cleanup:
            started = time.perf_counter()
            stack = start_stack(data_dir, ["--origin-path", str(origin_dir)], env)
            first_start_s = time.perf_counter() - started
            cleanup.callback(stop, stack.process)
            s3 = s3_client(stack.endpoint, stack.access_key, stack.secret_key)
            s3.head_bucket(Bucket=BUCKET)
            cases = {
                "no delimiter, MaxKeys 1000": {},
                "delimiter /, top": {"Delimiter": "/"},
                "prefix d042/, delimiter /, MaxKeys 1000": {"Prefix": "d042/", "Delimiter": "/"},
                "prefix d042/f0001 (10 keys)": {"Prefix": "d042/f0001"},
            }
            rows = []
            for name, kw in cases.items():
                ms = median_ms(lambda kw=kw: s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1000, **kw))
                rows.append([name, f"{ms:.1f}"])
            print(f"\nListObjectsV2 through the gateway ({total} objects), median of {RUNS}, ms:")
            print(render_table(["request", "median ms"], rows))

            empty = kv_objects(data_dir)
            keys = [f"d{i % args.dirs:03}/f{i // args.dirs:05}" for i in range(args.reads)]
            started = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda k: s3.head_object(Bucket=BUCKET, Key=k), keys))
            heads_s = time.perf_counter() - started
            read = kv_objects(data_dir)
            stop(stack.process)
            cleanup.pop_all()

            started = time.perf_counter()
            stack = start_stack(data_dir, ["--origin-path", str(origin_dir)], env)
            restart_s = time.perf_counter() - started
            cleanup.callback(stop, stack.process)
            time.sleep(max(0.0, TTL_S + 2 - restart_s))  # the manifests' TTL runs on the server
            expired = kv_objects(data_dir)
        print("\nKV objects (messages, bytes) and stack start:")
        print(
            render_table(
                ["moment", "messages", "bytes"],
                [
                    ["after start, before reads", str(empty[0]), str(empty[1])],
                    [f"after HEAD of {args.reads} objects", str(read[0]), str(read[1])],
                    [f"{TTL_S + 2} s later (manifest_ttl_s={TTL_S})", *map(str, expired)],
                ],
            )
        )
        print(
            f"HEADs: {args.reads / heads_s:.0f}/s; stack start: first {first_start_s:.1f} s, "
            f"again with {read[0]} manifests in KV {restart_s:.1f} s"
        )


if __name__ == "__main__":
    main()
