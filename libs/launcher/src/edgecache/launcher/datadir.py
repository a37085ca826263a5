"""The data directory ``edgecache up`` runs in: its files, private writes and its lock.

Layout of ``<data-dir>`` (default ``./.edgecache``)::

    admin-token      the admin API's bearer token (mode 0600)
    credentials      the gateway's keys, an AWS shared-credentials file (mode 0600)
    nats-credentials.toml
                     the private nats-server's identities: user, password and inbox
                     prefix of each service, ``platform`` and ``admin`` (mode 0600)
    edgecache.toml   the effective config (mode 0600) ...
    services/<service>.toml
                     ... and what each service reads: the same with its own NATS
                     identity (mode 0600)
    up.lock          held by the running ``up``
    logs/<child>.log each child's stdout and stderr
    nats/            the private nats-server's config and JetStream store
    origin/          the file origin (unless ``--origin-path`` says otherwise)
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

__all__ = [
    "ADMIN_TOKEN_FILE",
    "CONFIG_FILE",
    "CREDENTIALS_FILE",
    "LOCK_FILE",
    "LOGS_DIR",
    "NATS_CREDENTIALS_FILE",
    "NATS_DIR",
    "SERVICES_DIR",
    "lock_data_dir",
    "write_private",
]

ADMIN_TOKEN_FILE = "admin-token"
CONFIG_FILE = "edgecache.toml"
CREDENTIALS_FILE = "credentials"
LOCK_FILE = "up.lock"
LOGS_DIR = "logs"
NATS_DIR = "nats"
NATS_CREDENTIALS_FILE = "nats-credentials.toml"
SERVICES_DIR = "services"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (it may hold secrets)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/up.lock`` so that two ``up`` do not share one data dir.

    Raises:
        click.ClickException: another process holds the lock.
    """
    with open(data_dir / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise click.ClickException(f"another `edgecache up` is using {data_dir}") from None
        yield
