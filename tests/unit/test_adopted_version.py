"""An object adopted from the origin is named by what it is: every node that adopts the
same object gives it the same version id, and any change of the object changes it."""

from __future__ import annotations

import re

import msgspec

from edgecache.cachenode.adoption import adopted_version
from edgecache.origin.base import OriginObject

MiB = 1024 * 1024
OBJ = OriginObject(key="k", size=6 * MiB + 7, etag="9b2cf535f27731c974343645a3985328", last_modified=1_764_000_000.25)


def test_the_same_object_has_one_id_shaped_like_new_ids() -> None:
    version = adopted_version("b", OBJ, MiB)
    assert version == adopted_version("b", msgspec.structs.replace(OBJ), MiB)
    assert re.fullmatch(r"[0-9a-f]{26}", version)
    assert int(version[:16], 16) == 1_764_000_000_250_000_000  # its Last-Modified, ns


def test_any_change_of_the_object_or_its_chunking_changes_the_id() -> None:
    version = adopted_version("b", OBJ, MiB)
    others = {
        adopted_version("other", OBJ, MiB),
        adopted_version("b", msgspec.structs.replace(OBJ, key="k2"), MiB),
        adopted_version("b", msgspec.structs.replace(OBJ, etag="0" * 32), MiB),
        adopted_version("b", msgspec.structs.replace(OBJ, size=OBJ.size + 1), MiB),
        adopted_version("b", msgspec.structs.replace(OBJ, last_modified=OBJ.last_modified + 1), MiB),
        adopted_version("b", msgspec.structs.replace(OBJ, hlc=5, site="a"), MiB),
        adopted_version("b", OBJ, 2 * MiB),
    }
    assert version not in others and len(others) == 7
