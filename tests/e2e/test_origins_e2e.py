"""`edgecache up` in front of real S3 (moto) and Azure (Azurite) origins, driven by the AWS
CLI: a 64 MiB (eight-chunk) origin object read through the gateway with identical bytes, the second read
served with no origin GET, and an object put through the gateway landing in the origin."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.fixtures.origins import FAKE_AWS_ENV, _Process, unique_bucket
from tests.fixtures.ports import free_port
from tests.fixtures.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
AWS = Path(__file__).resolve().parents[2] / ".tools" / "awscli" / "bin" / "aws"
SIZE = 64 * MiB  # eight chunks: moto copies the whole object for every ranged GET
HEARTBEAT_S = 0.5  # the stacks' cachenode.heartbeat_s: node stats reach `status` quickly
HEARTBEAT_LAG_S = 1.5  # two heartbeats and a margin
FAST_HEARTBEATS = {"EDGECACHE_CACHENODE__HEARTBEAT_S": str(HEARTBEAT_S)}


def _aws(stack: Stack, tmp_path: Path, *args: str) -> str:
    if not AWS.exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: run `make deps`")
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": stack.access_key, "AWS_SECRET_ACCESS_KEY": stack.secret_key,
           "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_CA_BUNDLE", None)
    done = subprocess.run([str(AWS), "--endpoint-url", stack.endpoint, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"aws {' '.join(args)}: {done.stdout}\n{done.stderr}\n{stack.logs()[-3000:]}"
    return done.stdout


def _node_fills(stack: Stack) -> int:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "edgecache"), "status", "--data-dir", str(stack.data_dir), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return sum(node["stats"].get("fills", 0) for node in json.loads(done.stdout)["nodes"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def _random_file(path: Path, size: int) -> str:
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return _sha256(path)


def _read_twice_through_gateway(stack: Stack, tmp_path: Path, bucket: str, digest: str, origin_gets, *, exact_gets: int | None = None) -> None:
    """The CLI reads the object twice; the second read must cost the origin nothing."""
    first = tmp_path / "first.bin"
    _aws(stack, tmp_path, "s3", "cp", f"s3://{bucket}/big.bin", str(first))
    assert _sha256(first) == digest
    # node stats travel in heartbeats (every 2 s): wait for the cold read's fills to show
    wait_for(lambda: _node_fills(stack) >= SIZE // (8 * MiB), timeout_s=15, what="the cold read's fills in a heartbeat")
    time.sleep(HEARTBEAT_LAG_S)
    fills, gets = _node_fills(stack), origin_gets()
    assert gets > 0, "the cold read shows no origin GET: the counter cannot see them"
    if exact_gets is not None:  # the CLI's concurrent ranged GETs still fetch each chunk once
        assert gets == exact_gets
    second = tmp_path / "second.bin"
    _aws(stack, tmp_path, "s3", "cp", f"s3://{bucket}/big.bin", str(second))
    assert _sha256(second) == digest
    time.sleep(HEARTBEAT_LAG_S)  # any fill of the warm read would show by now
    assert origin_gets() == gets, "the warm read made GET requests to the origin"
    assert _node_fills(stack) == fills


def test_s3_origin_through_the_gateway(tmp_path: Path, tmp_path_factory) -> None:
    port = free_port()
    moto_dir = tmp_path_factory.mktemp("moto-e2e")
    moto = _Process([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                    port=port, log=moto_dir / "moto.log", cwd=moto_dir)
    url = f"http://127.0.0.1:{port}"
    direct = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = unique_bucket("s3e2e")
    direct.create_bucket(Bucket=bucket)
    src = tmp_path / "src.bin"
    digest = _random_file(src, SIZE)
    direct.upload_file(str(src), bucket, "big.bin")
    src.unlink()
    stack = start_stack(tmp_path / "data", args=["--origin", "s3", "--origin-endpoint-url", url], env={**FAKE_AWS_ENV, **FAST_HEARTBEATS})
    try:
        # object GETs, not GetObjectTagging (`?tagging`); moto colours its log lines
        get_line = re.compile(rf"GET /{bucket}/big\.bin(?: |\?(?!tagging))")
        _read_twice_through_gateway(
            stack, tmp_path, bucket, digest,
            origin_gets=lambda: len(get_line.findall((moto_dir / "moto.log").read_text(errors="replace"))),
            exact_gets=SIZE // (8 * MiB),
        )
        (tmp_path / "small.txt").write_bytes(b"written through the edge")
        _aws(stack, tmp_path, "s3", "cp", str(tmp_path / "small.txt"), f"s3://{bucket}/from-edge.txt")

        def landed() -> bool:
            try:
                return direct.get_object(Bucket=bucket, Key="from-edge.txt")["Body"].read() == b"written through the edge"
            except direct.exceptions.NoSuchKey:
                return False

        wait_for(landed, what="the object put through the gateway in moto")
    finally:
        stack.stop()
        moto.stop()
    assert stack.process.returncode == 0, stack.logs()


def test_azure_origin_through_the_gateway(tmp_path: Path, azurite: str) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite)
    bucket = unique_bucket("aze2e")
    container = service.create_container(bucket)
    src = tmp_path / "src.bin"
    digest = _random_file(src, SIZE)
    with src.open("rb") as f:
        container.upload_blob("big.bin", f, length=SIZE, max_concurrency=4)
    src.unlink()
    stack = start_stack(tmp_path / "data", args=["--origin", "azure"], env={"AZURE_STORAGE_CONNECTION_STRING": azurite, **FAST_HEARTBEATS})
    try:
        fills_seen: list[int] = []

        def origin_gets() -> int:  # Azurite keeps no request log here: the node's fills count origin GETs
            fills_seen.append(_node_fills(stack))
            return fills_seen[-1]

        _read_twice_through_gateway(stack, tmp_path, bucket, digest, origin_gets)
        (tmp_path / "small.txt").write_bytes(b"to azure, through the edge")
        _aws(stack, tmp_path, "s3", "cp", str(tmp_path / "small.txt"), f"s3://{bucket}/from-edge.txt")

        def landed() -> bool:
            blob = container.get_blob_client("from-edge.txt")
            return blob.exists() and blob.download_blob().readall() == b"to azure, through the edge"

        wait_for(landed, what="the object put through the gateway in Azurite")
    finally:
        stack.stop()
        container.delete_container()
    assert stack.process.returncode == 0, stack.logs()
