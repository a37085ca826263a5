"""The file origin's key <-> path escaping, and the layout it gives on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecache.common import errors
from edgecache.origin import _keypath as kp
from edgecache.origin.file import FileOrigin

ROOT = "/srv/origin/bucket"
BUCKET = "bkt"

# segments that stress the escaping, and arbitrary text (no lone surrogates: keys are UTF-8)
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_odd = st.sampled_from(
    ["", ".", "..", "...", "%", "%%", "%+", "%25", "%2E", "%2e", "a%", "%.json", "\0", "a\0b",
     "-", "0", "é", "😀", "\uffff", "x" * 249, "y" * 250, "%" * 90, "é" * 130, "😀" * 70]
)  # fmt: skip
_segment = st.one_of(
    _text, _odd, st.text(st.characters(exclude_categories=("Cs",)), min_size=200, max_size=400)
)
keys = st.lists(_segment, min_size=1, max_size=6).map("/".join)


def path_of(key: str) -> str:
    return os.path.join(ROOT, *kp.key_to_parts(key))


# -- the mapping ------------------------------------------------------------------------------
@given(keys)
@settings(max_examples=500)
def test_round_trip(key: str) -> None:
    assert kp.parts_to_key(kp.key_to_parts(key)) == key


@given(keys)
@settings(max_examples=500)
def test_components_are_safe_names(key: str) -> None:
    for part in kp.key_to_parts(key):
        assert part not in ("", ".", "..")
        assert "/" not in part and "\0" not in part
        assert len(part.encode()) <= kp.MAX_NAME_BYTES
        # room for the suffixes of the layout within NAME_MAX
        assert len((part + kp.META_SUFFIX).encode()) <= 255
    resolved = os.path.normpath(path_of(key))
    assert resolved.startswith(ROOT + os.sep)  # containment, whatever the key


@given(keys, keys)
def test_injective(a: str, b: str) -> None:
    if a != b:
        assert kp.key_to_parts(a) != kp.key_to_parts(b)


@given(
    st.lists(st.from_regex(r"[A-Za-z0-9 _.,()é-]{1,40}", fullmatch=True), min_size=1, max_size=5)
)
def test_plain_keys_are_plain_paths(segments: list[str]) -> None:
    if any(s in (".", "..") for s in segments):
        return
    key = "/".join(segments)
    assert kp.key_to_parts(key) == segments


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("photos/2024/cat.jpg", ["photos", "2024", "cat.jpg"]),
        ("a//b", ["a", "%", "b"]),
        ("/lead", ["%", "lead"]),
        ("trail/", ["trail", "%"]),
        ("../../etc/passwd", ["%2E%2E", "%2E%2E", "etc", "passwd"]),
        ("./x", ["%2E", "x"]),
        ("...", ["..."]),
        ("50%off", ["50%25off"]),
        ("nul\0byte", ["nul%00byte"]),
        ("x" * 249, ["x" * 249]),
        ("x" * 250, ["x" * 247 + "%+", "xxx"]),
    ],
)
def test_examples(key: str, parts: list[str]) -> None:
    assert kp.key_to_parts(key) == parts
    assert kp.parts_to_key(parts) == key


def test_long_segments_are_cut_between_characters_and_escapes() -> None:
    key = "é" * 100 + "%" * 100 + "😀" * 100
    parts = kp.key_to_parts(key)
    assert len(parts) > 1
    for part in parts:
        part.encode()  # whole characters only
        assert "%" not in part.replace("%25", "").replace(kp.CONT_SUFFIX, "")  # whole escapes
    assert kp.parts_to_key(parts) == key


@pytest.mark.parametrize(
    "parts",
    [
        ["50%off"],  # a bare % from a hand-made file
        ["%2e"],  # lower-case escape
        ["%2Ea"],  # %2E outside a dot segment
        ["a%+"],  # a continuation with nothing after it
        ["a%+", "b"],  # a cut that key_to_parts would not make
        ["a%"],  # a displaced twin is not a key component
        [],
    ],
)
def test_non_canonical_paths_are_no_key(parts: list[str]) -> None:
    assert kp.parts_to_key(parts) is None


# -- on disk ----------------------------------------------------------------------------------
async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put(origin: FileOrigin, key: str, data: bytes = b"x", **kw: object) -> str:
    return await origin.put_object(BUCKET, key, body(data), size=len(data), **kw)  # type: ignore[arg-type]


async def get(origin: FileOrigin, key: str) -> bytes:
    size = (await origin.head_object(BUCKET, key)).size
    return b"".join([p async for p in origin.get_range(BUCKET, key, 0, max(size - 1, 0))])


async def listed(origin: FileOrigin, **kw: str) -> list[str]:
    return [o.key async for o in origin.iter_objects(BUCKET, **kw)]


async def test_plain_files_and_parallel_metadata(file_origin: FileOrigin) -> None:
    etag = await put(file_origin, "photos/cat.jpg", b"meow", content_type="image/jpeg")
    root = file_origin.root
    assert (root / BUCKET / "photos" / "cat.jpg").read_bytes() == b"meow"
    assert (root / ".edgecache-meta" / BUCKET / "photos" / "cat.jpg%.json").is_file()
    assert etag == hashlib.md5(b"meow").hexdigest()
    assert not os.listdir(root / ".edgecache-tmp")


async def test_a_and_a_slash_b_coexist(file_origin: FileOrigin) -> None:
    bucket_dir = file_origin.root / BUCKET
    await put(file_origin, "a", b"file a")
    await put(file_origin, "a/b", b"file a/b")  # a becomes a directory, the file moves aside
    assert (bucket_dir / "a").is_dir() and (bucket_dir / "a%").read_bytes() == b"file a"
    assert await get(file_origin, "a") == b"file a"
    assert await get(file_origin, "a/b") == b"file a/b"
    await put(file_origin, "a", b"file a, again")  # rewritten beside its directory
    assert await get(file_origin, "a") == b"file a, again"
    assert await listed(file_origin) == ["a", "a/b"]

    await file_origin.delete_object(BUCKET, "a/b")  # the directory goes, a takes its name back
    assert (bucket_dir / "a").read_bytes() == b"file a, again"
    assert await listed(file_origin) == ["a"]

    await put(file_origin, "x/y/z", b"deep")
    await put(file_origin, "x", b"x")  # directory first, then the file
    assert (bucket_dir / "x%").is_file()
    await file_origin.delete_object(BUCKET, "x")
    assert await listed(file_origin) == ["a", "x/y/z"]
    await file_origin.delete_object(BUCKET, "x/y/z")
    await file_origin.delete_object(BUCKET, "a")
    assert os.listdir(bucket_dir) == []  # empty directories are pruned


def all_files_inside(root_dir: Path) -> bool:
    root = os.path.realpath(root_dir)
    return all(
        os.path.commonpath([root, os.path.realpath(os.path.join(path, name))]) == root
        for path, _dirs, files in os.walk(root)
        for name in files
    )


async def test_escaped_keys_stay_inside(file_origin: FileOrigin) -> None:
    evil = ["../../escape", "/abs", "a/../../b", "..", ".", "a//b/", "nul\0"]
    for key in evil:
        await put(file_origin, key, key.encode())
    assert all_files_inside(file_origin.root)
    outside = os.listdir(file_origin.root)
    assert sorted(outside) == [".edgecache-locks", ".edgecache-meta", ".edgecache-tmp", BUCKET]
    for key in evil:
        assert await get(file_origin, key) == key.encode()
    assert await listed(file_origin) == sorted(evil)


async def test_foreign_files(file_origin: FileOrigin) -> None:
    await file_origin.create_bucket(BUCKET)
    bucket_dir = file_origin.root / BUCKET
    (bucket_dir / "docs").mkdir()
    (bucket_dir / "docs" / "readme.txt").write_bytes(b"copied in by hand")
    (bucket_dir / "50%off").write_bytes(b"not a name this origin writes")
    obj = await file_origin.head_object(BUCKET, "docs/readme.txt")
    st = os.stat(bucket_dir / "docs" / "readme.txt")
    assert obj.etag == f"{st.st_size:x}-{st.st_mtime_ns:x}"
    assert obj.content_type == "text/plain"
    assert await get(file_origin, "docs/readme.txt") == b"copied in by hand"
    assert await listed(file_origin) == ["docs/readme.txt"]  # 50%off is skipped

    # an object edited in place loses its metadata: served as foreign, never a stale ETag
    etag = await put(file_origin, "edited", b"one", metadata={"k": "v"})
    (bucket_dir / "edited").write_bytes(b"three")
    obj = await file_origin.head_object(BUCKET, "edited")
    assert obj.etag != etag and obj.size == 5 and obj.metadata == {}
    with pytest.raises(errors.PreconditionFailed):
        [p async for p in file_origin.get_range(BUCKET, "edited", 0, 1, if_match=etag)]


async def test_long_key_layout(file_origin: FileOrigin) -> None:
    long_key = "L" * 600
    await put(file_origin, long_key, b"long")
    await put(file_origin, long_key + "/child", b"child")
    await put(file_origin, "L" * 300, b"shorter")
    assert await get(file_origin, long_key) == b"long"
    assert await listed(file_origin) == sorted(["L" * 300, long_key, long_key + "/child"])
    for key in (long_key, long_key + "/child", "L" * 300):
        await file_origin.delete_object(BUCKET, key)
    assert os.listdir(file_origin.root / BUCKET) == []


@given(
    st.sets(st.lists(st.sampled_from(["a", "b", "a-b", "a.b", "", "0", "%", "é", "😀", "x" * 260]),
                     min_size=1, max_size=3).map("/".join).filter(bool), min_size=1, max_size=12),
    st.sampled_from(["", "a", "a/", "a-", "b", "%", "x"]),
    st.sampled_from(["", "a", "a/", "a.b", "a/b", "b/", "é", "\uffff"]),
)  # fmt: skip
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_listing_matches_a_sorted_model(
    keys: set[str], prefix: str, start_after: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        origin = FileOrigin(tmp)
        await origin.start()
        for key in keys:
            await put(origin, key, key.encode())
        expected = sorted(
            (k for k in keys if k.startswith(prefix) and k > start_after), key=str.encode
        )
        assert await listed(origin, prefix=prefix, start_after=start_after) == expected
        for key in keys:
            assert await get(origin, key) == key.encode()
        for key in keys:
            await origin.delete_object(BUCKET, key)
        assert os.listdir(Path(tmp) / BUCKET) == []


async def test_readers_never_miss_a_key_while_it_is_displaced(file_origin: FileOrigin) -> None:
    """``a`` moves between ``a`` and ``a%`` as ``a/…`` keys come and go; a reader in the
    middle of it still finds ``a`` (a miss is retried under the shared lock)."""
    await put(file_origin, "a", b"steady", metadata={"k": "v"})
    etag = (await file_origin.head_object(BUCKET, "a")).etag
    stop = asyncio.Event()

    async def churn(child: str) -> None:
        for _ in range(40):
            await put(file_origin, child, b"c")
            await file_origin.delete_object(BUCKET, child)
        stop.set()

    async def read() -> int:
        reads = 0
        while not stop.is_set():
            obj = await file_origin.head_object(BUCKET, "a")
            assert (obj.etag, obj.metadata) == (etag, {"k": "v"})
            assert await get(file_origin, "a") == b"steady"
            reads += 1
        return reads

    results = await asyncio.gather(churn("a/b"), churn("a/c/d"), read(), read(), read())
    assert sum(results[2:]) > 0
    assert os.listdir(file_origin.root / BUCKET) == ["a"]


async def test_readers_never_see_data_and_metadata_of_different_writes(
    file_origin: FileOrigin,
) -> None:
    versions = [f"version {i}".encode() * (i + 1) for i in range(30)]
    etags = {hashlib.md5(v).hexdigest(): v for v in versions}
    await put(file_origin, "k", versions[0], etag=hashlib.md5(versions[0]).hexdigest())
    stop = asyncio.Event()

    async def write() -> None:
        for data in versions * 2:
            await put(file_origin, "k", data, etag=hashlib.md5(data).hexdigest())
        stop.set()

    async def read() -> None:
        while not stop.is_set():
            obj = await file_origin.head_object(BUCKET, "k")
            assert obj.etag in etags and obj.size == len(etags[obj.etag])
            try:
                pieces = [
                    p
                    async for p in file_origin.get_range(
                        BUCKET, "k", 0, obj.size - 1, if_match=obj.etag
                    )
                ]
            except errors.PreconditionFailed:
                continue  # replaced since the HEAD: fine
            assert b"".join(pieces) == etags[obj.etag]

    await asyncio.gather(write(), read(), read())
