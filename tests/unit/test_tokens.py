"""Continuation tokens (edgecache.common.tokens): round trips, and tokens we did not make."""

from __future__ import annotations

import pytest

from edgecache.common import errors
from edgecache.common.tokens import decode_token, encode_token


@pytest.mark.parametrize("name", ["", "a/b", "ü\x01\r\n", "\udc80 lone surrogate", "x" * 1024])
def test_round_trip(name: str) -> None:
    assert decode_token(encode_token(name)) == name


@pytest.mark.parametrize(
    "token",
    [
        "",
        "AAAA",  # base64 of three NULs: once a listing from there, silently
        "abc",  # bad padding
        "ZWMxOg",  # our tag, padding dropped
        encode_token("x") + "=",
        encode_token("x")[:-2],
        "ZWMxOv8=",  # our tag, then a byte that is not UTF-8
        "not base64 at all!",
        "ünicode",
    ],
)
def test_tokens_we_did_not_make_are_invalid_argument(token: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        decode_token(token)
