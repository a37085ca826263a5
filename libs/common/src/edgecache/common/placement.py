"""Placement: which cache node owns an object, by rendezvous (highest-random-weight) hashing.

Every node and gateway that knows the same live set (KV ``nodes``, kept by the federator)
computes the same owner, with no coordination. When a node joins or leaves, only the
objects it owns (about 1/N of them) move. The owner fills an object from the origin, so a
cold object is fetched once across the cluster however many nodes are asked for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["owner", "ranked"]


def _weight(node_id: str, name: str) -> int:
    digest = hashlib.blake2b(f"{node_id}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(bucket: str, key: str, nodes: Iterable[str]) -> list[str]:
    """``nodes`` ordered by preference for ``bucket/key``: the owner first, then fallbacks."""
    name = f"{bucket}/{key}"
    return sorted(set(nodes), key=lambda n: (_weight(n, name), n), reverse=True)


def owner(bucket: str, key: str, nodes: Iterable[str]) -> str | None:
    """The node that owns ``bucket/key`` among ``nodes`` (``None`` if there is none)."""
    order = ranked(bucket, key, nodes)
    return order[0] if order else None
