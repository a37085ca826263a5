"""``python -m edgecache.gateway [--config FILE]``: the S3 REST gateway."""

from __future__ import annotations

from edgecache.common.runtime import run_service
from edgecache.gateway.service import serve


def main() -> None:
    run_service("gateway", serve)


if __name__ == "__main__":
    main()
