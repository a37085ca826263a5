"""The effective config of ``edgecache up``: resolved once from defaults, a TOML file,
``EDGECACHE_*`` variables and flags, then written to ``<data-dir>/edgecache.toml`` as the
services' only source of config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec
import tomli_w

from edgecache.common.config import Config, ConfigError, load_config
from edgecache.launcher.datadir import write_private

__all__ = ["absolute", "dump_toml", "resolve", "write_config"]


def absolute(config: Config) -> Config:
    """``config`` with its directories made absolute, so every child reads them alike."""

    def resolve_path(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if path else path

    return msgspec.structs.replace(
        config,
        data_dir=resolve_path(config.data_dir),
        cachenode=msgspec.structs.replace(
            config.cachenode, data_dir=resolve_path(config.cachenode.data_dir)
        ),
        origin=msgspec.structs.replace(config.origin, path=resolve_path(config.origin.path)),
    )


def resolve(config_file: str | None, overrides: dict[str, Any]) -> Config:
    """Load the config (defaults, then ``config_file``, then the environment, then
    ``overrides``, the flags) with its directories made absolute.

    Raises:
        click.ClickException: the file or a variable is invalid (the message names the key).
    """
    try:
        return absolute(load_config(config_file, overrides=overrides))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _without_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _without_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None
    }


def dump_toml(tree: dict[str, Any]) -> str:
    """TOML text of a config tree (written by ``tomli-w``). ``None`` values are left out:
    they mean "the default".

    Raises:
        TypeError: a value TOML cannot hold (bytes, an arbitrary object).
    """
    return tomli_w.dumps(_without_none(tree))


def write_config(config: Config, path: Path) -> None:
    """Write ``config`` as TOML to ``path`` (mode 0600: it holds the secret key)."""
    write_private(
        path,
        "# written by `edgecache up` on every start: edit a copy and pass it with --config\n"
        + dump_toml(msgspec.to_builtins(config)),
    )
