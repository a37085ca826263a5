from hypothesis import given
from hypothesis import strategies as st

from edgecache.common import kvkeys

KV_KEY_CHARS = set("-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@given(st.text(min_size=1, max_size=300), st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True))
def test_object_key_round_trips_and_is_a_valid_kv_key(key: str, bucket: str) -> None:
    try:
        key.encode()
    except UnicodeEncodeError:  # lone surrogates are not UTF-8: S3 keys cannot hold them
        return
    kv_key = kvkeys.object_key(bucket, key)
    assert set(kv_key) <= KV_KEY_CHARS
    assert kvkeys.parse_object_key(kv_key) == (bucket, key)


@given(
    st.lists(st.sampled_from(["", "a", "b", "a.b", "é", "x" * 40]), min_size=1, max_size=4)
    .map("/".join)
    .filter(bool),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True),
    st.text(st.sampled_from("ab/é"), max_size=6),
)
def test_dirty_index_keys_round_trip_and_filter_by_prefix(
    key: str, bucket: str, prefix: str
) -> None:
    kv_key = kvkeys.dirty_key(bucket, key)
    assert set(kv_key) <= KV_KEY_CHARS
    assert kvkeys.parse_dirty_key(kv_key) == (bucket, key)
    # the filter matches every key under the prefix, and none outside its whole segments
    tokens, pattern = kv_key.split("."), kvkeys.dirty_filter(bucket, prefix).split(".")
    matches = len(tokens) >= len(pattern) and all(
        p in (t, ">") for p, t in zip(pattern, tokens, strict=False)
    )
    head = prefix.rpartition("/")[0] + "/" if "/" in prefix else ""
    assert matches == key.startswith(head)
    if key.startswith(prefix):
        assert matches
