"""``python -m edgecache.gateway [--config FILE]``: the S3 REST gateway."""

from __future__ import annotations

from edgecache.common.runtime import run_service
from edgecache.gateway.service import serve
from edgecache.gateway.workers import freeze_startup


def main() -> None:
    freeze_startup()  # after the imports above
    run_service("gateway", serve)


if __name__ == "__main__":
    main()
