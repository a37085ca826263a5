"""``python -m edgecache.writeback [--config FILE]``: run one writeback replica."""

from __future__ import annotations

from edgecache.common.runtime import run_service
from edgecache.writeback.service import serve


def main() -> None:
    run_service("writeback", serve)


if __name__ == "__main__":
    main()
