"""A gateway worker stopped while it starts (``edgecache up`` stopping a slow start) does
not fail with a traceback: its TLS listener, stopped before it started, does not start on
its closed socket (it once raised ``OSError: Bad file descriptor``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn

from edgecache.common.config import GatewayConfig
from edgecache.gateway.service import uvicorn_config
from edgecache.gateway.tls import TlsListener, tls_options
from edgecache.gateway.workers import listening_socket
from edgecache.launcher.tlscert import ensure_self_signed

pytestmark = pytest.mark.asyncio


async def _app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError("no request expected")


async def test_a_listener_stopped_before_it_started_does_not_start(tmp_path: Path) -> None:
    certs = ensure_self_signed(tmp_path, ["127.0.0.1"])
    gw = GatewayConfig(tls_cert_file=str(certs.cert_file), tls_key_file=str(certs.key_file))
    sock = listening_socket("127.0.0.1", 0)
    tls = TlsListener(uvicorn.Server(uvicorn_config(_app, "127.0.0.1", 0, **tls_options(gw))), sock)
    await tls.stop()
    assert sock.fileno() == -1  # closed
    await tls.start()  # returns: nothing to serve
    await tls.stop()
