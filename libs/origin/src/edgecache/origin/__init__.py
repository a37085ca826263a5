"""Origin backends behind one interface; :func:`open_origin` picks one from config.

This is the ``edgecache-origin`` library: only the services that talk to the origin (the
cache node and the writeback service) depend on it, so the gateway and the federator
install neither aiobotocore nor the Azure SDK. The backends live in their own modules
(:mod:`.file`, :mod:`.s3`, :mod:`.azure`) and are imported only when chosen, so a process
using the file origin never loads aiobotocore or the Azure SDK either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.origin.base import Origin, OriginBucket, OriginHoldsNewer, OriginObject

if TYPE_CHECKING:
    from edgecache.common.config import Config

__all__ = ["Origin", "OriginBucket", "OriginHoldsNewer", "OriginObject", "open_origin"]


def open_origin(config: Config) -> Origin:
    """The origin ``config.origin.kind`` names, built but not started.

    ``file``: :class:`~.file.FileOrigin` at :meth:`Config.origin_path`; ``s3``:
    :class:`~.s3.S3Origin` (``endpoint_url``, ``region``, AWS credential chain); ``azure``:
    :class:`~.azure.AzureOrigin` (``connection_string`` or
    ``$AZURE_STORAGE_CONNECTION_STRING``). The caller owns it: ``await origin.start()``
    before use, ``await origin.close()`` after.

    Raises:
        ValueError: an unknown kind (config validation normally prevents it).
    """
    kind = config.origin.kind
    if kind == "file":
        from edgecache.origin.file import FileOrigin

        return FileOrigin(config.origin_path())
    if kind == "s3":
        from edgecache.origin.s3 import S3Origin

        return S3Origin(config.origin)
    if kind == "azure":
        from edgecache.origin.azure import AzureOrigin

        return AzureOrigin(config.origin)
    raise ValueError(f"unknown origin kind {kind!r}")
