"""Other real S3 clients against `edgecache up`: minio-py, s3cmd (from .tools/s3cmd) and
rclone (Debian's), all installed by `make deps`. Bytes are checked in the origin too."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.fixtures.stack import Stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
S3CMD = REPO / ".tools" / "s3cmd" / "bin" / "s3cmd"


def _run(argv: list[str], env: dict[str, str] | None = None, *, with_stderr: bool = False) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr if with_stderr else done.stdout


def _minio(stack: Stack):
    from minio import Minio

    return Minio(urlparse(stack.endpoint).netloc, access_key=stack.access_key, secret_key=stack.secret_key, secure=False, region="us-east-1")


def _s3cmd(stack: Stack, tmp_path: Path) -> list[str]:
    """The s3cmd command line, configured for the stack."""
    if not S3CMD.exists():
        pytest.fail(f"s3cmd is not installed at {S3CMD}: run `make deps`")
    host = urlparse(stack.endpoint).netloc
    config = tmp_path / "s3cfg"
    config.write_text(
        f"[default]\naccess_key = {stack.access_key}\nsecret_key = {stack.secret_key}\n"
        f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
        "bucket_location = us-east-1\n"
    )
    return [str(S3CMD), "-c", str(config)]


def _rclone(stack: Stack, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The rclone command line with the stack as remote ``edge:``, and its environment."""
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is not installed: run `make deps` (apt-get install rclone)")
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[edge]\ntype = s3\nprovider = Other\nenv_auth = false\n"
        f"access_key_id = {stack.access_key}\nsecret_access_key = {stack.secret_key}\n"
        f"endpoint = {stack.endpoint}\nregion = us-east-1\nforce_path_style = true\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return [rclone, "--config", str(config)], env


def test_minio_py(stack: Stack) -> None:
    client = _minio(stack)
    bucket = f"minio-{secrets.token_hex(5)}"
    client.make_bucket(bucket)
    assert client.bucket_exists(bucket)
    small = os.urandom(1000)
    client.put_object(bucket, "small.bin", io.BytesIO(small), len(small), content_type="application/x-minio", metadata={"k": "v"})
    big = os.urandom(12 * MiB + 1)  # unknown length: minio-py goes multipart, 5 MiB parts
    client.put_object(bucket, "dir/big.bin", io.BytesIO(big), -1, part_size=5 * MiB)
    stat = client.stat_object(bucket, "dir/big.bin")
    assert stat.size == len(big) and stat.etag.endswith("-3")
    assert client.get_object(bucket, "dir/big.bin").read() == big
    assert client.get_object(bucket, "small.bin", offset=10, length=20).read() == small[10:30]
    small_stat = client.stat_object(bucket, "small.bin")
    assert small_stat.content_type == "application/x-minio" and small_stat.metadata["x-amz-meta-k"] == "v"
    assert sorted(o.object_name for o in client.list_objects(bucket, recursive=True)) == ["dir/big.bin", "small.bin"]
    assert sorted(o.object_name for o in client.list_objects(bucket)) == ["dir/", "small.bin"]  # minio-py lists keys, then prefixes
    path = stack.origin_dir / bucket / "dir" / "big.bin"
    wait_for(lambda: path.exists() and path.stat().st_size == len(big) and path.read_bytes() == big, what="minio's upload in the origin")
    client.remove_object(bucket, "small.bin")
    client.remove_object(bucket, "dir/big.bin")
    client.remove_bucket(bucket)
    assert not client.bucket_exists(bucket)


def test_s3cmd(stack: Stack, tmp_path: Path) -> None:
    s3cmd = _s3cmd(stack, tmp_path)
    bucket = f"s3cmd-{secrets.token_hex(5)}"
    _run([*s3cmd, "mb", f"s3://{bucket}"])
    data = os.urandom(20 * MiB + 3)  # above s3cmd's 15 MiB multipart chunk
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    _run([*s3cmd, "put", str(src), f"s3://{bucket}/s3cmd/src.bin"])
    assert "s3cmd/src.bin" in _run([*s3cmd, "ls", "-r", f"s3://{bucket}"])
    _run([*s3cmd, "get", f"s3://{bucket}/s3cmd/src.bin", str(back)])
    assert back.read_bytes() == data
    info = _run([*s3cmd, "info", f"s3://{bucket}/s3cmd/src.bin"])
    assert str(len(data)) in info
    path = stack.origin_dir / bucket / "s3cmd" / "src.bin"
    wait_for(lambda: path.exists() and path.read_bytes() == data, what="s3cmd's upload in the origin")
    _run([*s3cmd, "del", f"s3://{bucket}/s3cmd/src.bin"])
    _run([*s3cmd, "rb", f"s3://{bucket}"])


def test_rclone(stack: Stack, tmp_path: Path) -> None:
    base, env = _rclone(stack, tmp_path)
    bucket = f"rclone-{secrets.token_hex(5)}"
    tree = tmp_path / "tree"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3 * MiB), "sub/deeper/c.txt": b"c" * 10}
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    _run([*base, "mkdir", f"edge:{bucket}"], env)
    _run([*base, "copy", str(tree), f"edge:{bucket}/tree"], env)
    listed = _run([*base, "lsf", "-R", f"edge:{bucket}/tree"], env).split()
    assert {"a.txt", "sub/b.bin", "sub/deeper/c.txt"} <= set(listed)
    _run([*base, "check", str(tree), f"edge:{bucket}/tree"], env)  # sizes and MD5s agree
    back = tmp_path / "back"
    _run([*base, "copy", f"edge:{bucket}/tree", str(back)], env)
    for name, data in files.items():
        assert hashlib.md5((back / name).read_bytes()).digest() == hashlib.md5(data).digest()
        path = stack.origin_dir / bucket / "tree" / name
        wait_for(lambda p=path, d=data: p.exists() and p.read_bytes() == d, what=f"{path} in the origin")
    _run([*base, "purge", f"edge:{bucket}"], env)
    assert _run([*base, "lsf", "edge:"], env).split().count(f"{bucket}/") == 0


# == server-side copies (issue 6) ===============================================================
def _in_origin(stack: Stack, bucket: str, key: str, data: bytes) -> None:
    path = stack.origin_dir / bucket / key
    wait_for(lambda: path.exists() and path.read_bytes() == data, what=f"{bucket}/{key} in the origin")


def test_minio_py_copy_object_and_compose_object(stack: Stack) -> None:
    from minio.commonconfig import ComposeSource, CopySource

    client = _minio(stack)
    bucket, other = f"minio-{secrets.token_hex(5)}", f"minio-{secrets.token_hex(5)}"
    client.make_bucket(bucket)
    client.make_bucket(other)
    head, tail = os.urandom(5 * MiB + 1), os.urandom(1000)  # compose: every source but the last ≥ 5 MiB
    client.put_object(bucket, "head.bin", io.BytesIO(head), len(head))
    client.put_object(bucket, "tail.bin", io.BytesIO(tail), len(tail), metadata={"k": "v"})
    client.copy_object(other, "copied.bin", CopySource(bucket, "tail.bin"))
    assert client.stat_object(other, "copied.bin").metadata["x-amz-meta-k"] == "v"
    # minio-py composes by UploadPartCopy with ranges and x-amz-copy-source-if-match
    client.compose_object(other, "composed.bin", [ComposeSource(bucket, "head.bin"), ComposeSource(bucket, "tail.bin", offset=10, length=100)])
    expected = head + tail[10:110]
    assert client.get_object(other, "composed.bin").read() == expected
    assert client.stat_object(other, "composed.bin").etag.endswith("-2")
    _in_origin(stack, other, "copied.bin", tail)
    _in_origin(stack, other, "composed.bin", expected)


def test_rclone_server_side_copy_between_buckets(stack: Stack, tmp_path: Path) -> None:
    base, env = _rclone(stack, tmp_path)
    s3 = stack.boto3()
    bucket, other = f"rclone-{secrets.token_hex(5)}", f"rclone-{secrets.token_hex(5)}"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(2 * MiB + 1)}
    for b in (bucket, other):
        s3.create_bucket(Bucket=b)
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"tree/{name}", Body=data)
    out = _run([*base, "copy", "-v", f"edge:{bucket}/tree", f"edge:{other}/tree"], env, with_stderr=True)
    assert out.count("(server-side copy)") == len(files), out
    for name, data in files.items():
        assert s3.get_object(Bucket=other, Key=f"tree/{name}")["Body"].read() == data
        _in_origin(stack, other, f"tree/{name}", data)


def test_s3cmd_cp_between_buckets(stack: Stack, tmp_path: Path) -> None:
    s3cmd = _s3cmd(stack, tmp_path)
    s3 = stack.boto3()
    bucket, other = f"s3cmd-{secrets.token_hex(5)}", f"s3cmd-{secrets.token_hex(5)}"
    for b in (bucket, other):
        s3.create_bucket(Bucket=b)
    data = os.urandom(MiB + 5)
    s3.put_object(Bucket=bucket, Key="src.bin", Body=data, ContentType="application/x-s3cmd")
    _run([*s3cmd, "cp", f"s3://{bucket}/src.bin", f"s3://{other}/dst/copy.bin"])
    got = s3.get_object(Bucket=other, Key="dst/copy.bin")
    assert got["Body"].read() == data and got["ContentType"] == "application/x-s3cmd"
    _in_origin(stack, other, "dst/copy.bin", data)
