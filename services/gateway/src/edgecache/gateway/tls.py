"""The gateway's HTTPS listener, beside its HTTP one.

With ``gateway.tls_cert_file`` and ``gateway.tls_key_file`` set, each worker process serves
the very same ASGI app — the memory-tier fast path and short-circuit reads included, as
they live in the app — a second time on ``gateway.tls_port`` (default 9001) over TLS, in a
second uvicorn server of its own. Every worker binds that port with ``SO_REUSEPORT``, as
it does the HTTP port (:func:`edgecache.gateway.workers.listening_socket`), so the kernel
spreads TLS connections over the workers the same way. uvicorn does the TLS (Python's
``ssl``, TLS 1.2 or newer); the HTTP server's lifespan owns the app's state, so the TLS
server runs without one: it starts after the HTTP server has started and stops before it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from edgecache.common.config import GatewayConfig

__all__ = ["TlsListener", "tls_options", "tls_wanted"]


def tls_wanted(gw: GatewayConfig) -> bool:
    """Whether ``gw`` asks for HTTPS.

    Raises:
        ValueError: only one of ``tls_cert_file`` and ``tls_key_file`` is set.
    """
    if bool(gw.tls_cert_file) != bool(gw.tls_key_file):
        raise ValueError("gateway: set both tls_cert_file and tls_key_file, or neither")
    return bool(gw.tls_cert_file)


def tls_options(gw: GatewayConfig) -> dict[str, Any]:
    """uvicorn's options for the HTTPS server of ``gw``: the PEM files, TLS 1.2 or newer
    (Python's defaults for a server context), no lifespan (the HTTP server owns it)."""
    return {
        "ssl_certfile": gw.tls_cert_file,
        "ssl_keyfile": gw.tls_key_file,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "lifespan": "off",
    }


class TlsListener:
    """The HTTPS server of one worker process.

    Args:
        server: a uvicorn server configured with :func:`tls_options`, for the app that the
            worker's HTTP server serves (and has started).
        sock: its listening socket (``SO_REUSEPORT``, so every worker binds one).
    """

    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the certificate and serve.

        Does nothing once :meth:`stop` was called (a worker stopped while it started).

        Raises:
            OSError: a PEM file cannot be read; ssl.SSLError: they do not form a key pair.
        """
        if self._server.should_exit:  # stopped first: the socket is closed
            return
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                if self._server.should_exit:
                    return
                self._task.result()  # raises why it could not start
                raise RuntimeError("the TLS listener stopped at once")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight (uvicorn's graceful shutdown).
        Idempotent."""
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close()
