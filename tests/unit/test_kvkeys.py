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
