"""A local cluster of ``nats-server`` processes with clustered JetStream (R3 state).

``edgecache up --nats-cluster 3`` runs one for tests and demos; so do the test fixtures.
Every server gets the same options (users and permissions, ``sync_interval``,
``max_payload``), a ``server_name`` of its own, a client port, a cluster port and routes
to every other server. Clients connect with all the client URLs (:attr:`NatsCluster.url`,
comma-separated: ``nats.url`` takes that form), so they carry on through any one server's
loss; with ``nats.replicas = 3`` every stream and KV bucket keeps a copy on each server
and a write is acknowledged once a majority (2 of 3) holds it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecache.launcher.natsserver import NatsServer, free_port

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ["NatsCluster", "wait_for_jetstream"]


class NatsCluster:
    """``size`` servers under ``root/<server_name>``, routed to each other.

    Args:
        root: each server's store dir is ``root / server_name``.
        size: how many servers (3 for R3 state: any one may be lost).
        host: every server's listen address.
        ports: the client ports (``size`` of them); empty: free ones.
        options: the rest of :class:`~edgecache.launcher.natsserver.NatsServer`'s keyword
            arguments, the same for every server.
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        ports: tuple[int, ...] = (),
        **options: Any,
    ) -> None:
        if size < 1 or (ports and len(ports) != size):
            raise ValueError(f"a cluster of {size} servers with client ports {ports}")
        cluster_ports = [free_port(host) for _ in range(size)]
        names = [f"nats-{i + 1}" for i in range(size)]
        self.servers = [
            NatsServer(
                Path(root) / names[i],
                port=ports[i] if ports else 0,
                host=host,
                server_name=names[i],
                cluster_port=cluster_ports[i],
                routes=tuple(
                    f"nats-route://{host}:{p}" for j, p in enumerate(cluster_ports) if j != i
                ),
                **options,
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (the form ``nats.url`` takes)."""
        return ",".join(s.url for s in self.servers)

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start every server (each logging to ``<store_dir>/nats-server.log``) and wait until
        each accepts connections. JetStream elects its leaders a moment later: see
        :func:`wait_for_jetstream`.

        Raises:
            RuntimeError: a server exited or did not listen within ``timeout_s``.
        """
        for server in self.servers:
            if server.process is None:
                server.store_dir.mkdir(parents=True, exist_ok=True)
                server.start(timeout_s=timeout_s, log_file=server.store_dir / "nats-server.log")

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL)."""
        for server in self.servers:
            server.stop()


async def wait_for_jetstream(js: JetStreamContext, *, timeout_s: float = 20.0) -> None:
    """Wait until JetStream answers API requests (a cluster's meta leader is elected).

    Raises:
        TimeoutError: it did not within ``timeout_s`` seconds.
    """
    import nats.errors  # nats-py is slow to import: `edgecache --help` should not pay for it

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.account_info()
            return
        except nats.errors.Error as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"JetStream did not answer within {timeout_s}s: {exc!r}"
                ) from exc
            await asyncio.sleep(0.1)
