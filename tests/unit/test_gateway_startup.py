"""What a gateway process does once at its entry point, before it serves."""

from __future__ import annotations

import subprocess
import sys

# run in a process of its own: freezing the collector's view is for a whole process
_PROBE = """
import gc
from edgecache.gateway.service import serve  # what a gateway process imports first
from edgecache.gateway.workers import freeze_startup
before = gc.get_freeze_count()
freeze_startup()
print(before, gc.get_freeze_count(), len(gc.get_objects(2)))
"""


def test_start_up_objects_are_frozen_out_of_the_collectors_sight() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    before, frozen, oldest = map(int, out)
    assert before == 0
    assert frozen > 10_000  # the imported modules, classes and functions
    assert oldest < frozen // 10  # what a full collection still walks
