"""A federated site's identity towards the hub: an nkey (ed25519) that ``edgecache up --site``
generates on first use and keeps in its data dir; the hub's config lists the public key.

Layout: ``<data-dir>/federation/site.nk`` (the seed, ``SU…``, mode 0600) and
``<data-dir>/federation/site.pub`` (the public key, ``U…``, to give the hub operator).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgecache.launcher.datadir import write_private

# nkeys (PyNaCl) is imported inside the functions, as nats-py is in connection.py: every
# `edgecache` command would otherwise pay its import (about 40 ms), only --site uses it.

__all__ = [
    "FEDERATION_DIR",
    "SiteKey",
    "load_or_create_site_key",
    "load_or_create_user_key",
    "public_key",
]

FEDERATION_DIR = "federation"


class SiteKey:
    """A user nkey (a site's, a cache node's): ``seed`` (``SU…``, secret) and ``public``
    (``U…``)."""

    __slots__ = ("public", "seed")

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.public = public_key(seed)


def public_key(seed: str) -> str:
    """The public key (``U…``) of a user nkey seed (``SU…``).

    Raises:
        click.ClickException: ``seed`` is not a user nkey seed.
    """
    import nkeys

    try:
        pair = nkeys.from_seed(bytearray(seed.encode()))
        public = pair.public_key.decode()
    except (nkeys.NkeysError, ValueError) as exc:
        raise click.ClickException(f"not an nkey seed: {exc}") from None
    if not public.startswith("U"):
        raise click.ClickException("not a user nkey seed (its public key must start with U)")
    return public


def load_or_create_user_key(seed_file: Path) -> tuple[SiteKey, bool]:
    """The user nkey whose seed is in ``seed_file``, generated (32 bytes from ``os.urandom``)
    and saved with mode 0600 on first use (its folder made if missing), with its public key
    beside it in ``<seed_file stem>.pub``.

    Returns:
        ``(key, created)``.

    Raises:
        click.ClickException: the file exists but holds no user nkey seed.
    """
    created = not seed_file.exists()
    if created:
        import nkeys

        seed_file.parent.mkdir(parents=True, exist_ok=True)
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        write_private(seed_file, seed + "\n")
    key = SiteKey(seed_file.read_text().strip())
    seed_file.with_suffix(".pub").write_text(key.public + "\n")
    return key, created


def load_or_create_site_key(data_dir: Path) -> tuple[SiteKey, bool]:
    """This site's nkey from ``<data_dir>/federation/site.nk`` (:func:`load_or_create_user_key`).

    Returns:
        ``(key, created)``.

    Raises:
        click.ClickException: the file exists but holds no user nkey seed.
    """
    return load_or_create_user_key(data_dir / FEDERATION_DIR / "site.nk")
