"""Origin backends behind one interface; :func:`open_origin` picks one from config."""

from __future__ import annotations

from edgecache.common.origin.base import Origin, OriginBucket, OriginObject

__all__ = ["Origin", "OriginBucket", "OriginObject"]
