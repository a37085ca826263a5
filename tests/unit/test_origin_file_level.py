"""The file origin's delimiter listing: one directory level read, not the whole tree walked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecache.origin.base import Origin, OriginObject
from edgecache.origin.file import FileOrigin

BUCKET = "bkt"


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def names(items: list[OriginObject | str]) -> list[str]:
    """Objects as their key, common prefixes as ``"CP:" + prefix``."""
    return [f"CP:{i}" if isinstance(i, str) else i.key for i in items]


async def level(origin: FileOrigin, **kw: str) -> list[str]:
    """What the file origin's own level listing yields."""
    return names([i async for i in origin.iter_level(BUCKET, delimiter="/", **kw)])


async def rolled_up(origin: FileOrigin, **kw: str) -> list[str]:
    """What the walking implementation (the interface's default, rolling up the walk) yields."""
    return names([i async for i in Origin.iter_level(origin, BUCKET, delimiter="/", **kw)])


def make_tree(bucket_dir: Path, tops: int, subs: int, files: int) -> None:
    """``d<i>/s<j>/f<k>`` for every i, j, k, plus ``top<i>`` files: written by hand."""
    for i in range(tops):
        (bucket_dir / f"top{i:02}").write_bytes(b"t")
        for j in range(subs):
            leaf = bucket_dir / f"d{i:02}" / f"s{j:02}"
            leaf.mkdir(parents=True)
            for k in range(files):
                (leaf / f"f{k}").write_bytes(b"x")


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory ``os.scandir`` opens from now on."""
    opened: list[str] = []
    real = os.scandir

    def counting(path):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return opened


async def test_a_delimiter_listing_reads_one_level(
    file_origin: FileOrigin, scans: list[str]
) -> None:
    await file_origin.create_bucket(BUCKET)
    bucket_dir = file_origin.root / BUCKET
    make_tree(bucket_dir, tops=12, subs=6, files=4)
    scans.clear()

    top = await level(file_origin)
    assert top == [f"CP:d{i:02}/" for i in range(12)] + [f"top{i:02}" for i in range(12)]
    # the bucket's directory, then for each common prefix one directory per deeper level,
    # only until its first object file (no file of the level below is read otherwise)
    opened = [Path(p).relative_to(bucket_dir).parts for p in scans]
    assert opened.count(()) == 1
    assert sorted(o for o in opened if len(o) == 1) == [(f"d{i:02}",) for i in range(12)]
    assert sorted(o[0] for o in opened if len(o) == 2) == [f"d{i:02}" for i in range(12)]
    assert len(scans) == 1 + 12 * 2

    scans.clear()
    assert await level(file_origin, prefix="d03/") == [f"CP:d03/s{j:02}/" for j in range(6)]
    assert {len(Path(p).relative_to(bucket_dir).parts) for p in scans} <= {0, 1, 2}
    assert not any(Path(p).relative_to(bucket_dir).parts[:1] not in ((), ("d03",)) for p in scans)

    # the walk, for comparison, opens every directory of the bucket
    scans.clear()
    assert await rolled_up(file_origin) == top
    assert len(scans) == 1 + 12 + 12 * 6


async def test_pages_resume_after_a_common_prefix(file_origin: FileOrigin) -> None:
    await file_origin.create_bucket(BUCKET)
    make_tree(file_origin.root / BUCKET, tops=3, subs=2, files=2)
    assert await level(file_origin, start_after="d00/") == [
        "CP:d01/",
        "CP:d02/",
        "top00",
        "top01",
        "top02",
    ]
    assert await level(file_origin, start_after="d01/s00/f1") == [
        "CP:d01/",
        "CP:d02/",
        "top00",
        "top01",
        "top02",
    ]
    assert await level(file_origin, start_after="d01/s01/f1") == [
        "CP:d02/",
        "top00",
        "top01",
        "top02",
    ]
    assert await level(file_origin, prefix="d0", start_after="d01/") == ["CP:d02/"]
    assert await level(file_origin, prefix="d01/s01/") == ["d01/s01/f0", "d01/s01/f1"]


async def test_directories_without_objects_are_not_prefixes(file_origin: FileOrigin) -> None:
    await file_origin.create_bucket(BUCKET)
    bucket_dir = file_origin.root / BUCKET
    (bucket_dir / "empty" / "deeper").mkdir(parents=True)  # made by hand, nothing inside
    (bucket_dir / "foreign").mkdir()
    (bucket_dir / "foreign" / "50%off").write_bytes(b"?")  # not a name this origin writes
    (bucket_dir / "deep" / "only").mkdir(parents=True)
    (bucket_dir / "deep" / "only" / "file").write_bytes(b"x")  # found by the walk
    assert await level(file_origin) == ["CP:deep/"]
    assert await rolled_up(file_origin) == ["CP:deep/"]


_segments = st.sampled_from(["a", "b", "a-b", "a.b", "", "0", "%", ".", "é", "😀", "x" * 260])


@given(
    st.sets(st.lists(_segments, min_size=1, max_size=4).map("/".join).filter(bool), min_size=1, max_size=10),
    st.sampled_from(["", "a", "a/", "a/a/", "a-", "b/", "%", "x", "/", "//"]),
    st.sampled_from(["", "a", "a/", "a/a", "a/b/", "a.b", "b/", "é", "\uffff", "/"]),
)  # fmt: skip
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_level_listing_equals_the_rolled_up_walk(
    keys: set[str], prefix: str, start_after: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        origin = FileOrigin(tmp)
        await origin.start()
        for key in keys:
            await origin.put_object(BUCKET, key, body(b"k"), size=1, etag="e")
        (Path(tmp) / BUCKET / "hollow" / "inside").mkdir(parents=True)  # no object under it
        expected = await rolled_up(origin, prefix=prefix, start_after=start_after)
        assert await level(origin, prefix=prefix, start_after=start_after) == expected
        # and the rolled-up walk is S3's answer for these keys
        model: list[str] = []
        for key in sorted((k for k in keys if k.startswith(prefix)), key=str.encode):
            idx = key.find("/", len(prefix))
            item = "CP:" + key[: idx + 1] if idx >= 0 else key
            if item.removeprefix("CP:") == start_after or (idx < 0 and key <= start_after):
                continue
            if idx >= 0 and key <= start_after:
                continue
            if not model or model[-1] != item:
                model.append(item)
        assert expected == model
