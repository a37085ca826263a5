"""Which host (and which view of its files) a process runs on, for short-circuit reads.

Two processes may read each other's files by path only when they run on the same machine
since the same boot and see the same mounts. :func:`host_id` names that: the kernel's boot
id, the host name and the mount namespace. A requester sends it (``wire.GetObject``'s
``local_host``); a cache node compares it with its own. Equal ids are necessary, not
sufficient: the reader still falls back to the byte stream when a file is missing or fails
its check.
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["host_id"]


@functools.cache
def host_id() -> str:
    """``<boot id>/<host name>/<mount namespace>`` of this process (parts that cannot be
    read are left empty; with no boot id the result is ``""``: never local)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return ""
    try:
        mounts = os.readlink("/proc/self/ns/mnt")
    except OSError:
        mounts = ""
    return f"{boot}/{socket.gethostname()}/{mounts}" if boot else ""
