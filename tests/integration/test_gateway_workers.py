"""Gateway workers: processes that share the port, started, restarted and stopped by the
service's own process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from edgecache.common.config import Config
from edgecache.gateway.service import serve
from edgecache.launcher.natsserver import free_port

AK, SK = "AKIAWORKERS", "workers-secret"


def _workers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("gateway-")]


def _listening_on(port: int) -> set[int]:
    """The pids holding a socket that listens on ``port`` (Linux /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    pids = set()
    for pid in [os.getpid(), *(w.pid for w in _workers())]:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                pids.add(pid)
    return pids


async def _until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_two_workers_share_the_port_and_a_dead_one_comes_back(
    cachenode: Any, make_config: Callable[..., Config], bucket_name: str
) -> None:
    port = free_port()
    config = make_config(gateway={"access_key": AK, "secret_key": SK, "port": port, "workers": 2})
    stop = asyncio.Event()
    service = asyncio.create_task(serve(config, stop))
    try:
        await _until(lambda: len(_workers()) == 1 and _workers()[0].is_alive(), 30)
        [worker] = _workers()
        # both processes hold a socket of their own on the one port (a spawned worker
        # imports the gateway first: seconds on a loaded machine)
        await _until(lambda: _listening_on(port) == {os.getpid(), worker.pid}, 60)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 5, "mode": "standard"},
                max_pool_connections=1,
            ),
        )

        def use() -> None:  # new connections land on either worker
            s3.create_bucket(Bucket=bucket_name)
            for i in range(20):
                s3.put_object(Bucket=bucket_name, Key=f"k{i}", Body=b"x" * i)
                assert s3.get_object(Bucket=bucket_name, Key=f"k{i}")["Body"].read() == b"x" * i
                s3._endpoint.http_session.close()  # type: ignore[attr-defined]  # a new connection

        await asyncio.to_thread(use)
        assert _workers() == [worker] and worker.is_alive()
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await _until(lambda: any(w.is_alive() and w.pid != worker.pid for w in _workers()), 30)
    finally:
        stop.set()
        await asyncio.wait_for(service, 60)
    assert not any(w.is_alive() for w in _workers())
