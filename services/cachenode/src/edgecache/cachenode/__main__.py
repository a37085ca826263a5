"""``python -m edgecache.cachenode [--config FILE]``."""

from edgecache.cachenode.service import serve
from edgecache.common.runtime import run_service


def main() -> None:
    run_service("cachenode", serve)


if __name__ == "__main__":
    main()
