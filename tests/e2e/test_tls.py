"""HTTPS: boto3 and the AWS CLI against the session's `edgecache up --tls-self-signed`,
trusting its CA (``verify=`` / ``AWS_CA_BUNDLE``); a client that does not trust it is
refused (boto3, and so the CLI, which verifies with the same botocore). One CLI run only:
each costs seconds of Python start on a loaded box. Over HTTPS boto3 sends PutObject and UploadPart bodies as
``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (aws-chunked with a CRC32 trailer): checked here
by recording what it sent."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from edgecache.launcher.tlscert import ensure_self_signed
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
AWS = Path(__file__).resolve().parents[2] / ".tools" / "awscli" / "bin" / "aws"


def recording(client: Any) -> list[tuple[str, str]]:
    """``(operation, x-amz-content-sha256)`` of every request ``client`` sends from now on."""
    sent: list[tuple[str, str]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        value = request.headers.get("x-amz-content-sha256", b"")
        text = value.decode() if isinstance(value, bytes) else value
        sent.append((event_name.rsplit(".", 1)[-1], text))  # before-send.s3.<Operation>

    client.meta.events.register("before-send.s3.*", record)
    return sent


def test_boto3_over_https_put_get_and_multipart(stack: Stack) -> None:
    assert stack.tls_endpoint.startswith("https://") and Path(stack.ca_file).is_file()
    s3 = stack.boto3_tls()
    sent = recording(s3)
    bucket = f"tls-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=bucket)

    small = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    assert ("PutObject", "STREAMING-UNSIGNED-PAYLOAD-TRAILER") in sent
    got = s3.get_object(Bucket=bucket, Key="small", ChecksumMode="ENABLED")
    assert got["Body"].read() == small
    assert got["ChecksumCRC32"]  # the trailer's checksum was kept and is served back
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == small  # a warm hit

    parts = [os.urandom(5 * MiB), os.urandom(MiB + 7)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(
                Bucket=bucket, Key="multi", UploadId=upload, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in enumerate(parts, 1)
    ]
    assert ("UploadPart", "STREAMING-UNSIGNED-PAYLOAD-TRAILER") in sent
    s3.complete_multipart_upload(
        Bucket=bucket, Key="multi", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert s3.get_object(Bucket=bucket, Key="multi")["Body"].read() == b"".join(parts)
    ranged = s3.get_object(Bucket=bucket, Key="multi", Range=f"bytes={5 * MiB - 3}-{5 * MiB + 2}")
    assert ranged["Body"].read() == b"".join(parts)[5 * MiB - 3 : 5 * MiB + 3]


def test_a_client_that_does_not_trust_the_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = ensure_self_signed(tmp_path, ["127.0.0.1"])  # another CA, for the same name
    for verify in (str(other.ca_file), True):  # a wrong CA; the system's CAs
        with pytest.raises(botocore.exceptions.SSLError) as caught:
            stack.boto3_tls(verify=verify).list_buckets()
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    # the same check with nothing but Python's ssl: the served chain verifies with the CA
    host, port = stack.tls_endpoint.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=stack.ca_file)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_aws_cli_over_https_with_aws_ca_bundle(stack: Stack, tmp_path: Path) -> None:
    if not AWS.exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: run `make deps`")
    config = tmp_path / "aws-config"
    config.write_text(
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n    multipart_threshold = 5MB\n    multipart_chunksize = 5MB\n"
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CA_BUNDLE": stack.ca_file,
    }
    bucket = f"tlscli-{secrets.token_hex(5)}"
    stack.boto3_tls().create_bucket(Bucket=bucket)
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(11 * MiB))  # three parts of at most 5 MiB

    def aws(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AWS), "--endpoint-url", stack.tls_endpoint, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = aws("s3", "cp", str(src), f"s3://{bucket}/up.bin")  # multipart: 5 + 5 + 1 MiB
    assert done.returncode == 0, done.stderr
    assert (
        stack.boto3_tls().get_object(Bucket=bucket, Key="up.bin")["Body"].read() == src.read_bytes()
    )
