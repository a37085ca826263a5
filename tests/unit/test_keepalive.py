"""When an answer given before the body was read must close the connection."""

from __future__ import annotations

import pytest

from edgecache.gateway.keepalive import DRAIN_LIMIT_BYTES, must_close

EXPECT = (b"expect", b"100-continue")


def length(n: int | str) -> tuple[bytes, bytes]:
    return (b"content-length", str(n).encode())


@pytest.mark.parametrize(
    ("headers", "called", "read", "done", "close"),
    [
        ([], False, 0, False, False),  # no body at all
        ([length(0), EXPECT], False, 0, False, False),
        ([length(5), EXPECT], False, 0, False, True),  # the client waits for 100 Continue
        ([length(5), EXPECT], True, 0, False, False),  # 100 went out: the body comes, is drained
        ([length(5)], False, 0, False, False),  # on its way: uvicorn drains it
        ([length(DRAIN_LIMIT_BYTES + 1)], False, 0, False, True),  # too much to drain
        ([length(DRAIN_LIMIT_BYTES + 10)], True, 10, False, False),
        ([(b"transfer-encoding", b"chunked")], False, 0, False, True),  # unknown length
        ([length("9" * 5000)], False, 0, False, True),  # nonsense: close, never a 500
        ([length(5), EXPECT], True, 5, True, False),  # all read
    ],
)
def test_must_close(headers, called, read, done, close):
    assert must_close(headers, receive_called=called, body_read=read, body_done=done) is close
