"""The AWS CLI (v1, from .tools/awscli, installed by `make deps`) against `edgecache up`:
cp of 100 MiB up and down, ls, sync of a small tree, rm — bytes checked in the origin."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from edgecache.common import errors
from tests.fixtures.stack import Stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
AWS = Path(__file__).resolve().parents[2] / ".tools" / "awscli" / "bin" / "aws"


@pytest.fixture
def aws(stack: Stack, tmp_path: Path):
    """Run ``aws --endpoint-url <gateway> …`` (path-style addressing); returns stdout."""
    if not AWS.exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: run `make deps`")
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    env.pop("AWS_CA_BUNDLE", None)

    def run(*args: str, empty_ok: bool = False) -> str:
        done = subprocess.run(
            [str(AWS), "--endpoint-url", stack.endpoint, *args],
            env=env, capture_output=True, text=True, timeout=300,
        )
        if empty_ok and done.returncode == 1 and not done.stdout and not done.stderr:
            return ""  # `aws s3 ls` exits 1 when nothing matched
        assert done.returncode == 0, f"aws {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.stdout

    return run


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def test_cp_100_mib_up_and_down(stack: Stack, aws, tmp_path: Path) -> None:
    bucket = f"cli-{secrets.token_hex(5)}"
    aws("s3", "mb", f"s3://{bucket}")
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    aws("s3", "cp", str(src), f"s3://{bucket}/data/big.bin")
    back = tmp_path / "back.bin"
    aws("s3", "cp", f"s3://{bucket}/data/big.bin", str(back))
    assert _digest(back) == _digest(src)
    listing = aws("s3", "ls", f"s3://{bucket}/data/")
    assert "big.bin" in listing and str(100 * MiB) in listing
    in_origin = stack.origin_dir / bucket / "data" / "big.bin"
    wait_for(lambda: in_origin.exists() and in_origin.stat().st_size == 100 * MiB, timeout_s=60, what="the 100 MiB object in the origin")
    assert _digest(in_origin) == _digest(src)
    aws("s3", "rm", f"s3://{bucket}/data/big.bin")
    assert "big.bin" not in aws("s3", "ls", f"s3://{bucket}/data/", empty_ok=True)
    wait_for(lambda: not in_origin.exists(), what="the object deleted from the origin")


def test_sync_ls_rm_of_a_small_tree(stack: Stack, aws, tmp_path: Path) -> None:
    bucket = f"cli-{secrets.token_hex(5)}"
    aws("s3", "mb", f"s3://{bucket}")
    tree = tmp_path / "tree"
    files = {"a.txt": b"alpha", "sub/b.txt": b"beta" * 1000, "sub/deeper/c.bin": os.urandom(300_000), "with space.txt": b"s"}
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    aws("s3", "sync", str(tree), f"s3://{bucket}/tree")
    listed = aws("s3", "ls", "--recursive", f"s3://{bucket}/")
    for name in files:
        assert f"tree/{name}" in listed
    assert "upload:" not in aws("s3", "sync", str(tree), f"s3://{bucket}/tree")  # nothing changed
    for name, data in files.items():
        path = stack.origin_dir / bucket / "tree" / name
        wait_for(lambda p=path, d=data: p.exists() and p.read_bytes() == d, what=f"{path} in the origin")
    aws("s3", "rm", "--recursive", f"s3://{bucket}/tree")
    assert aws("s3", "ls", "--recursive", f"s3://{bucket}/", empty_ok=True).strip() == ""
    aws("s3", "rb", f"s3://{bucket}")


def test_cp_and_mv_between_keys_and_buckets(stack: Stack, aws) -> None:
    """Server-side copies: `aws s3 cp/mv s3://… s3://…` (CopyObject; UploadPartCopy above the
    CLI's 8 MiB multipart threshold), the copies landing in the origin. Objects are put and
    read back with boto3, and each CLI run copies two objects: a run costs seconds of start-up."""
    s3 = stack.boto3()
    bucket, other = f"cli-{secrets.token_hex(5)}", f"cli-{secrets.token_hex(5)}"
    objects = {"small.bin": os.urandom(1000), "big.bin": os.urandom(10 * MiB + 1)}
    for b in (bucket, other):
        s3.create_bucket(Bucket=b)
    for name, data in objects.items():
        s3.put_object(Bucket=bucket, Key=f"src/{name}", Body=data)
    aws("s3", "cp", "--recursive", f"s3://{bucket}/src/", f"s3://{other}/copied/")
    aws("s3", "mv", "--recursive", f"s3://{bucket}/src/", f"s3://{bucket}/moved/")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["moved/big.bin", "moved/small.bin"]  # mv deleted the sources
    assert s3.head_object(Bucket=other, Key="copied/big.bin")["ETag"].endswith('-2"')  # UploadPartCopy
    for name, data in objects.items():
        for b, key in ((other, f"copied/{name}"), (bucket, f"moved/{name}")):
            assert s3.get_object(Bucket=b, Key=key)["Body"].read() == data, key
            path = stack.origin_dir / b / key
            wait_for(lambda p=path, d=data: p.exists() and p.read_bytes() == d, what=f"{path} in the origin")


def _origin_tags(stack: Stack, bucket: str, key: str) -> dict[str, str] | None:
    """The tags the file origin's sidecar holds for ``bucket/key`` (``None``: no object)."""
    from edgecache.origin.file import FileOrigin

    async def read() -> dict[str, str] | None:
        origin = FileOrigin(stack.origin_dir)
        try:
            return await origin.get_tags(bucket, key)
        except errors.NoSuchKey:
            return None

    return asyncio.run(read())


def test_object_tagging_with_s3api(stack: Stack, aws) -> None:
    """`aws s3api put-object-tagging` and `get-object-tagging` (a CLI run costs seconds of
    start-up: the rest goes through boto3), and the tags written back to the origin (the
    file origin's sidecar)."""
    bucket = f"cli-{secrets.token_hex(5)}"
    s3 = stack.boto3()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="tagged file", Body=b"x", Tagging="from=put")
    aws("s3api", "put-object-tagging", "--bucket", bucket, "--key", "tagged file",
        "--tagging", "TagSet=[{Key=team,Value=edge cache},{Key=tier,Value=gold}]")  # fmt: skip
    got = json.loads(aws("s3api", "get-object-tagging", "--bucket", bucket, "--key", "tagged file"))
    assert got["TagSet"] == [{"Key": "team", "Value": "edge cache"}, {"Key": "tier", "Value": "gold"}]
    assert s3.get_object(Bucket=bucket, Key="tagged file")["TagCount"] == 2
    wait_for(lambda: _origin_tags(stack, bucket, "tagged file") == {"team": "edge cache", "tier": "gold"},
             what="the tags in the origin")  # fmt: skip
    s3.delete_object_tagging(Bucket=bucket, Key="tagged file")
    wait_for(lambda: _origin_tags(stack, bucket, "tagged file") == {}, what="the tags removed in the origin")


def test_presign_then_curl(stack: Stack, aws) -> None:
    """`aws s3 presign` (the CLI v1 signs the link with SigV2: AWSAccessKeyId, Signature,
    Expires), then curl fetches it; a tampered link is refused."""
    bucket = f"cli-{secrets.token_hex(5)}"
    s3 = stack.boto3()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="shared/link ü.txt", Body=b"shared body")
    url = aws("s3", "presign", f"s3://{bucket}/shared/link ü.txt", "--expires-in", "60").strip()
    assert "AWSAccessKeyId=" in url and "Signature=" in url and "Expires=" in url, url

    def curl(link: str) -> tuple[int, bytes]:
        done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", link], capture_output=True, timeout=60)
        body, _, status = done.stdout.rpartition(b"\n")
        return int(status), body

    assert curl(url) == (200, b"shared body")
    status, body = curl(url.replace("Expires=", "Expires=1"))
    assert status == 403 and b"<Code>" in body
