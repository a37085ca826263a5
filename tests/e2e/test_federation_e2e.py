"""The federation as a person runs it (docs/operations.md, "Two sites and a hub"):
``edgecache hub`` and two ``edgecache up --site`` stacks on one shared file origin, started
once for the module (tests/fixtures/federation.py ``federated_stacks``). The cross-site read
and overwrite assertions build on this module.

Two whole stacks cost about a minute of wall time (most of it starting them side by side);
`make test` runs the suite in two workers, so this module runs beside the rest of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from edgecache.launcher.render import render_status
from edgecache.launcher.status import nats_config_for, read_status
from tests.fixtures.federation import FederatedStacks

pytestmark = pytest.mark.e2e


def _status(data_dir: Path) -> str:
    """What ``edgecache status --data-dir DATA_DIR`` prints."""
    return render_status(asyncio.run(read_status(nats_config_for(None, None, str(data_dir)))))


def test_each_site_serves_and_status_lists_both_sites(federated_stacks: FederatedStacks) -> None:
    """Both sites joined the hub (``edgecache status`` at a lists both, each with its cache
    node), and each serves S3 on its own."""
    a, b = federated_stacks.sites["a"], federated_stacks.sites["b"]
    deadline = time.monotonic() + 30
    while True:
        text = _status(a.data_dir)
        if (
            "sites (from the hub): 2" in text
            and "  a: 1 cache node(s)" in text
            and "  b: 1 cache node(s)" in text
        ):
            break
        assert time.monotonic() < deadline, f"edgecache status never listed both sites:\n{text}"
        time.sleep(0.25)
    s3_a, s3_b = a.boto3(), b.boto3()
    s3_a.create_bucket(Bucket="fed-e2e")
    s3_a.put_object(Bucket="fed-e2e", Key="hello.txt", Body=b"written at a")
    assert s3_a.get_object(Bucket="fed-e2e", Key="hello.txt")["Body"].read() == b"written at a"
    s3_b.create_bucket(Bucket="fed-e2e-b")
    assert "fed-e2e-b" in [x["Name"] for x in s3_b.list_buckets()["Buckets"]]


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll ``check`` every 50 ms until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except ClientError:
        return False
    return True


def test_tags_copies_and_bucket_deletions_cross_sites(federated_stacks: FederatedStacks) -> None:
    """With boto3 at each site's gateway: a tag change at a is read at b (GetObjectTagging,
    the GET's tag count); b copies a's object; a bucket emptied and deleted at a is gone at b."""
    s3_a, s3_b = federated_stacks.sites["a"].boto3(), federated_stacks.sites["b"].boto3()
    s3_a.create_bucket(Bucket="fed-gaps")
    s3_a.put_object(Bucket="fed-gaps", Key="t.txt", Body=b"tagged at a")
    _eventually(lambda: _answers(lambda: s3_b.head_object(Bucket="fed-gaps", Key="t.txt")), "a's object at b")
    s3_a.put_object_tagging(
        Bucket="fed-gaps", Key="t.txt", Tagging={"TagSet": [{"Key": "team", "Value": "blue"}]}
    )
    _eventually(
        lambda: s3_b.get_object_tagging(Bucket="fed-gaps", Key="t.txt")["TagSet"]
        == [{"Key": "team", "Value": "blue"}],
        "a's tags at b",
    )
    assert s3_b.get_object(Bucket="fed-gaps", Key="t.txt")["TagCount"] == 1

    s3_b.copy_object(Bucket="fed-gaps", Key="copy.txt", CopySource={"Bucket": "fed-gaps", "Key": "t.txt"})
    assert s3_b.get_object(Bucket="fed-gaps", Key="copy.txt")["Body"].read() == b"tagged at a"
    assert s3_b.get_object_tagging(Bucket="fed-gaps", Key="copy.txt")["TagSet"] == [
        {"Key": "team", "Value": "blue"}
    ]  # x-amz-tagging-directive COPY: the source's tags

    _eventually(lambda: _answers(lambda: s3_a.head_object(Bucket="fed-gaps", Key="copy.txt")), "b's copy at a")
    s3_a.delete_objects(
        Bucket="fed-gaps", Delete={"Objects": [{"Key": "t.txt"}, {"Key": "copy.txt"}]}
    )
    s3_a.delete_bucket(Bucket="fed-gaps")
    _eventually(lambda: not _answers(lambda: s3_b.head_bucket(Bucket="fed-gaps")), "a's bucket deletion at b")
    assert "fed-gaps" not in [x["Name"] for x in s3_b.list_buckets()["Buckets"]]
