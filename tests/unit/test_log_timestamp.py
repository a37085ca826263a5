"""The request log's timestamp: the same text structlog's ISO ``TimeStamper`` writes."""

from __future__ import annotations

import datetime
import re
import time

import pytest
import structlog

from edgecache.common.logging import _IsoTimestamp

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_same_shape_and_instant_as_structlogs() -> None:
    ours, theirs = _IsoTimestamp(), structlog.processors.TimeStamper(fmt="iso", utc=True)
    before = time.time()
    mine = ours(None, "info", {})["timestamp"]
    reference = theirs(None, "info", {})["timestamp"]
    after = time.time()
    assert ISO_Z.fullmatch(mine) and ISO_Z.fullmatch(reference)
    at = datetime.datetime.fromisoformat(mine.replace("Z", "+00:00")).timestamp()
    assert before - 1e-6 <= at <= after


def test_each_second_is_formatted_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = _IsoTimestamp()
    for now, text in [
        (1_764_547_199.25, "2025-11-30T23:59:59.250000Z"),
        (1_764_547_199.999999, "2025-11-30T23:59:59.999999Z"),
        (1_764_547_200.000001, "2025-12-01T00:00:00.000001Z"),
    ]:
        monkeypatch.setattr(time, "time", lambda now=now: now)
        got = stamp(None, "info", {})["timestamp"]
        assert got[:20] == text[:20] and abs(float(got[17:-1]) - float(text[17:-1])) < 2e-6
