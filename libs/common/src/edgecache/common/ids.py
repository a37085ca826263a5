"""Fresh ids for versions, uploads, streams and events."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_id"]


def new_id() -> str:
    """A fresh id: time-ordered, 26 chars of ``[0-9a-f]`` (16 hex digits of ns since the
    Unix epoch, then 10 random ones). Also sent as ``Nats-Msg-Id`` for de-duplication."""
    return f"{time.time_ns():016x}{secrets.token_hex(5)}"
