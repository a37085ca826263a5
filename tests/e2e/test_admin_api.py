"""The admin API end to end: the session's `edgecache up` (tests/fixtures/stack.py), driven
over HTTP with its token, by boto3, by the `edgecache warm` / `purge` commands and by headless Chromium.

What proves a purge or a warm worked is the cache node's own counters, read back through the
admin API from its heartbeats: ``fills`` (ranged GETs of the origin) grows when a GET had to
go to the origin, and does not when the GET was a hit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecache.common import subjects, wire
from edgecache.common.config import load_config
from edgecache.common.runtime import connect_nats
from edgecache.launcher import credentials, datadir
from tests.fixtures.stack import MiB, Stack, wait_for

pytestmark = pytest.mark.e2e

BUCKET = "admin-e2e"


@pytest.fixture(scope="module")
def admin_url(stack: Stack) -> str:
    line = next(line for line in stack.output if line.strip().startswith("admin "))
    return line.split()[1].removesuffix("/status")


@pytest.fixture(scope="module")
def token(stack: Stack) -> str:
    path = stack.data_dir / "admin-token"
    assert path.stat().st_mode & 0o077 == 0, "the token file must be private (0600)"
    return path.read_text().strip()


@pytest.fixture(scope="module")
def admin(admin_url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:

        def ready() -> bool:  # `up` is ready when the gateway answers; the federator may lag
            try:
                return client.get("/api/nodes").json() != []
            except httpx.TransportError:
                return False

        wait_for(ready, what="the admin API, with a cache node")
        yield client


@pytest.fixture(scope="module")
def s3(stack: Stack) -> Any:
    client = stack.boto3()
    client.create_bucket(Bucket=BUCKET)
    wait_for(lambda: (stack.origin_dir / BUCKET).is_dir(), what="the bucket in the origin")
    return client


def node_stats(admin: httpx.Client, *, after: float) -> dict[str, int]:
    """The only node's stats from a heartbeat sent after ``after`` (s since the epoch)."""
    found: dict[str, Any] = {}

    def fresh() -> bool:
        cluster = admin.get("/api/cluster").json()
        (node,) = cluster["nodes"]
        found.update(node["stats"])
        return cluster["at"] - node["last_seen_s"] > after

    wait_for(fresh, timeout_s=10, what="a heartbeat newer than the last step")
    return found


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`edgecache <args>` against the stack's data dir, not on a terminal (plain lines)."""
    binary = Path(sys.executable).parent / "edgecache"
    return subprocess.run(
        [str(binary), *args, "--data-dir", str(stack.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGECACHE_LOG__JSON": "true"},
    )


def written_back(stack: Stack, admin: httpx.Client, key: str, data: bytes) -> None:
    path = stack.origin_dir / BUCKET / key
    wait_for(
        lambda: (
            path.exists()
            and path.read_bytes() == data
            and admin.get("/api/writeback").json()["intents"] == 0
        ),
        what=f"{key} written back",
    )


# -- the token ----------------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/api/cluster", None),
    ("GET", "/api/nodes", None),
    ("GET", "/api/cache", None),
    ("GET", "/api/config", None),
    ("GET", "/api/writeback", None),
    ("GET", "/api/uploads", None),
    ("GET", "/api/jobs", None),
    ("GET", "/api/federator", None),
    ("GET", "/api/sites", None),
    ("GET", "/schema/openapi.json", None),
    ("POST", "/api/purge", {"bucket": BUCKET, "prefix": "nothing-here/"}),
    ("POST", "/api/warm", {"bucket": BUCKET, "prefix": "nothing-here/"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS]
)
def test_every_endpoint_needs_the_token(
    admin: httpx.Client, admin_url: str, s3: Any, method: str, path: str, body: Any
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic eDp5"}):
        refused = httpx.request(method, admin_url + path, json=body, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
    ok = admin.request(method, path, json=body)
    assert ok.status_code in (200, 202), ok.text


def test_per_node_paths_need_the_token_too(admin: httpx.Client, admin_url: str) -> None:
    (node,) = admin.get("/api/nodes").json()
    for method, path in (
        ("GET", f"/api/nodes/{node['node_id']}"),
        ("GET", "/api/jobs/x"),
        ("DELETE", f"/api/uploads/{BUCKET}/x?key=k"),
    ):
        assert httpx.request(method, admin_url + path).status_code == 401
    assert admin.get(f"/api/nodes/{node['node_id']}").json()["node_id"] == node["node_id"]
    assert admin.get("/api/nodes/no-such-node").status_code == 404
    assert admin.get("/api/jobs/no-such-job").status_code == 404
    aborted = admin.delete(f"/api/uploads/{BUCKET}/no-such-upload", params={"key": "k"})
    assert aborted.status_code == 404 and aborted.json()["code"] == "NoSuchUpload"


def test_health_and_the_page_are_open(admin_url: str) -> None:
    assert httpx.get(admin_url + "/health/live").json() == {"status": "ok"}
    page = httpx.get(admin_url + "/status")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/api/cluster" in page.text  # the page holds no data: its script asks with the token


def test_openapi_schema_is_served(admin: httpx.Client) -> None:
    schema = admin.get("/schema/openapi.json").json()
    assert {"/api/purge", "/api/warm", "/api/cluster", "/api/uploads"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_config_is_resolved_with_secrets_redacted(
    admin: httpx.Client, stack: Stack, token: str
) -> None:
    config = admin.get("/api/config").json()
    assert config["gateway"]["secret_key"] == "***" and config["nats"]["password"] == "***"
    assert config["admin"]["token"] == "***"
    assert config["cachenode"]["chunk_bytes"] == MiB  # resolved: the env of `up` reached it
    text = admin.get("/api/config").text
    assert stack.secret_key not in text and token not in text


def test_bad_job_requests_are_refused(admin: httpx.Client) -> None:
    assert admin.post("/api/purge", json={"prefix": "x"}).status_code == 400  # no bucket
    assert admin.post("/api/warm", json={"bucket": BUCKET, "colour": "x"}).status_code == 400


# -- purge, warm ----------------------------------------------------------------------------
def test_purge_makes_the_next_get_a_miss_that_fills_from_the_origin(
    stack: Stack, admin: httpx.Client, s3: Any
) -> None:
    # two chunks on the node, and one object small enough for the gateways' memory tiers
    bodies = {"purge/a.bin": os.urandom(MiB + 1000), "purge/small.txt": b"small" * 20}
    for key, body in bodies.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        written_back(stack, admin, key, body)
        for _ in range(2):  # the second one may come from a memory tier
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    before = node_stats(admin, after=time.time())

    done, invalidated = asyncio.run(purge_watching_invalidations(stack, f"s3://{BUCKET}/purge/"))
    assert done.returncode == 0, done.stdout + done.stderr
    # what every gateway drops its memory-tier copy on: a delete of each key (version "")
    assert {(i.bucket, i.key, i.version) for i in invalidated} >= {(BUCKET, k, "") for k in bodies}
    assert "2/2 objects" in done.stdout and "2 objects purged" in done.stdout, done.stdout
    purged = node_stats(admin, after=time.time())
    assert purged["chunks"] <= before["chunks"] - 3, "the purged chunks are still on the node"

    # each GET goes to the origin: neither a node nor a memory tier still holds the object
    for key, body in bodies.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
        after = node_stats(admin, after=time.time())
        assert after["fills"] > purged["fills"], f"the GET of {key} after the purge did not fill"
        assert after["misses"] > purged["misses"]
        purged = after


async def purge_watching_invalidations(
    stack: Stack, url: str
) -> tuple[subprocess.CompletedProcess[str], list[wire.Invalidation]]:
    """`edgecache purge url`, while listening to the invalidation events as a gateway does
    (with the gateway's NATS identity)."""
    shared = load_config(stack.data_dir / datadir.CONFIG_FILE, env={}).nats
    identity = credentials.load_nats_identity(stack.data_dir, "gateway")
    assert identity is not None
    nc = await connect_nats(identity.apply(shared), name="admin-e2e")
    seen: list[wire.Invalidation] = []

    async def on_event(msg: Any) -> None:
        seen.append(wire.decode(msg.data, wire.Invalidation))

    try:
        await nc.subscribe(subjects.EVENTS_INVALIDATE, cb=on_event)
        await nc.flush()
        done = await asyncio.to_thread(cli, stack, "purge", url)
        await nc.flush()  # queued before the purges were answered: here by the PONG
    finally:
        await nc.drain()
    return done, seen


@contextmanager
def writeback_paused(stack: Stack) -> Iterator[None]:
    """SIGSTOP the stack's writeback service: what is written meanwhile stays dirty."""
    pids = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and _cmdline(p).count("edgecache.writeback")
        and str(stack.data_dir) in _cmdline(p)
    ]
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pids[0], signal.SIGCONT)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_dirty_object_is_not_purged(stack: Stack, admin: httpx.Client, s3: Any) -> None:
    data = os.urandom(1000)
    with writeback_paused(stack):
        s3.put_object(Bucket=BUCKET, Key="dirty/a.bin", Body=data)
        job = admin.post("/api/purge", json={"bucket": BUCKET, "key": "dirty/a.bin"}).json()
        wait_for(
            lambda: admin.get(f"/api/jobs/{job['id']}").json()["state"] != "running",
            what="the purge",
        )
        job = admin.get(f"/api/jobs/{job['id']}").json()
        assert (job["state"], job["skipped"], job["purged"], job["failed"]) == ("done", 1, 0, 0), (
            job
        )
        assert s3.get_object(Bucket=BUCKET, Key="dirty/a.bin")["Body"].read() == data
        assert admin.get("/api/writeback").json()["intents"] >= 1  # the backlog shows it
    written_back(stack, admin, "dirty/a.bin", data)


def test_warm_makes_the_next_gets_hits(stack: Stack, admin: httpx.Client, s3: Any) -> None:
    bodies = {"warm/a.bin": os.urandom(2 * MiB + 5), "warm/b.bin": os.urandom(300)}
    for key, body in bodies.items():  # in the origin only: nothing cached
        path = stack.origin_dir / BUCKET / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    before = node_stats(admin, after=time.time())

    done = cli(stack, "warm", f"s3://{BUCKET}/warm/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "2/2 objects" in done.stdout and f"{sum(map(len, bodies.values()))} bytes" in done.stdout
    ), done.stdout
    warmed = node_stats(admin, after=time.time())
    assert warmed["fills"] > before["fills"] and warmed["chunks"] >= before["chunks"] + 4

    for key, body in bodies.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    after = node_stats(admin, after=time.time())
    assert after["fills"] == warmed["fills"], "a GET after the warm went to the origin"
    assert after["misses"] == warmed["misses"] and after["hits"] >= warmed["hits"] + 4


# -- uploads, the backlog -------------------------------------------------------------------
def test_uploads_in_progress_are_listed_and_aborted(admin: httpx.Client, s3: Any) -> None:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/x.bin")["UploadId"]
    listed = admin.get("/api/uploads", params={"bucket": BUCKET}).json()["uploads"]
    assert [(u["key"], u["upload_id"]) for u in listed] == [("mp/x.bin", upload)]
    assert (
        admin.delete(f"/api/uploads/{BUCKET}/{upload}", params={"key": "mp/x.bin"}).status_code
        == 204
    )
    assert admin.get("/api/uploads", params={"bucket": BUCKET}).json()["uploads"] == []


# -- the status page ------------------------------------------------------------------------
def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "headless Chromium is missing: `make deps` installs it (Debian's `chromium`, as "
            "root), or run `apt-get install -y chromium`"
        )
    return found


def test_status_page_shows_the_nodes_in_headless_chromium(
    admin: httpx.Client, admin_url: str, token: str, tmp_path: Path
) -> None:
    chromium = _chromium()
    (node,) = admin.get("/api/nodes").json()
    url = f"{admin_url}/status#token={token}"
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dom.returncode == 0, dom.stderr
    assert f'data-node="{node["node_id"]}"' in dom.stdout, dom.stdout[-2000:]
    assert 'id="state" class="error"' not in dom.stdout, dom.stdout[-2000:]
    shot = tmp_path / "status.png"
    taken = subprocess.run(
        [
            *common,
            "--virtual-time-budget=5000",
            "--window-size=1280,800",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr
    print(f"status page screenshot: {shot}")


def test_status_page_without_the_token_says_so(admin_url: str, tmp_path: Path) -> None:
    chromium = _chromium()
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            f"{admin_url}/status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 'id="state" class="error">not authorized' in dom.stdout, dom.stdout[-2000:]
    assert "data-node=" not in dom.stdout
