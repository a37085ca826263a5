"""Each cache node's own NATS identity under ``edgecache up``: a user nkey (ed25519) per
cache node process, generated on first use and kept in the data dir; the private
nats-server lists the public keys, each with the ``cachenode`` identity's permissions
(:func:`edgecache.launcher.natsauth.authorization_block`), and node *i*'s config names its
seed (``nats.nkey_seed_file``).

Layout: ``<data-dir>/nkeys/<child>.nk`` (the seed, ``SU…``, mode 0600) and
``<data-dir>/nkeys/<child>.pub`` (the public key, ``U…``), where ``<child>`` is the cache
node's child name (``cachenode``, ``cachenode-2``, …).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgecache.launcher.sitekey import SiteKey, load_or_create_user_key

__all__ = ["NODE_KEYS_DIR", "load_or_create_node_keys", "node_key_file"]

NODE_KEYS_DIR = "nkeys"


def node_key_file(data_dir: Path, child: str) -> Path:
    """Where cache node ``child``'s seed is kept: ``<data_dir>/nkeys/<child>.nk``."""
    return data_dir / NODE_KEYS_DIR / f"{child}.nk"


def load_or_create_node_keys(data_dir: Path, children: Iterable[str]) -> dict[str, SiteKey]:
    """The nkey of each cache node in ``children`` (child names), made on first use.

    Raises:
        click.ClickException: a seed file exists but holds no user nkey seed.
    """
    return {c: load_or_create_user_key(node_key_file(data_dir, c))[0] for c in children}
