"""``python -m edgecache.federator [--config FILE]``."""

from __future__ import annotations

from edgecache.common.runtime import run_service
from edgecache.federator.service import serve


def main() -> None:
    run_service("federator", serve)


if __name__ == "__main__":
    main()
