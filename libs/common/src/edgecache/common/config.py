"""Configuration: frozen msgspec Structs, loaded once in each service's ``__main__``.

Sources, later ones winning: the defaults below, a TOML file (``--config`` /
``EDGECACHE_CONFIG``), then environment variables ``EDGECACHE_<SECTION>__<FIELD>``
(e.g. ``EDGECACHE_CACHENODE__CHUNK_BYTES=4194304``), then the short aliases in
:data:`ENV_ALIASES` (``EDGECACHE_PORT``, ``EDGECACHE_NATS_URL``, …). Unknown keys are an
error that names the key. Units are in the field names (``_s`` seconds, ``_bytes`` bytes).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from edgecache.common import subjects

__all__ = [
    "ENV_ALIASES",
    "AdminConfig",
    "CacheNodeConfig",
    "Config",
    "ConfigError",
    "FederatorConfig",
    "GatewayConfig",
    "LogConfig",
    "MetricsConfig",
    "NatsConfig",
    "OriginConfig",
    "WritebackConfig",
    "load_config",
]

MiB = 1024 * 1024
_OPTS = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}


class ConfigError(ValueError):
    """A config file or variable is invalid; the message names the key."""


DEFAULT_INBOX_PREFIX = "_INBOX"  # nats-py's


class NatsConfig(msgspec.Struct, **_OPTS):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0  # a whole request/reply, or one wait for stream credit
    # this service's NATS identity (docs/security.md); empty: connect without credentials
    user: str = ""
    password: str = ""
    # a file holding this service's nkey seed ("SU…", docs/security.md); when set the
    # service authenticates with it (nats-py nkeys_seed=) instead of user/password
    nkey_seed_file: str = ""
    # reply subjects are <inbox_prefix>.<id>: a locked-down NATS lets each identity
    # subscribe only under its own prefix (`edgecache up` uses _INBOX.<identity>, and
    # _INBOX.site.<site>.<identity> at a federated site). At a federated site the default
    # becomes _INBOX.site.<site> (Config): the hub lets a site's replies reach it only there.
    inbox_prefix: str = DEFAULT_INBOX_PREFIX
    # Every download stream on one connection together: bytes granted to the senders and not
    # yet read. At most a quarter of the server's max_pending (64 MiB by default: the server
    # can count up to twice this as pending), or the server cuts the connection off as a slow
    # consumer and every stream on it breaks.
    download_credit_bytes: int = 16 * MiB
    # Every upload stream into one cache node together (PutObject, UploadPart): bytes
    # granted to the uploaders and not yet read. Replica streams from other nodes have a
    # budget of the same size of their own (a node's uploads wait on its peers' replica
    # budgets, never the other way round, so two nodes cannot wait on each other). With
    # the download budget: 32 MiB in all, half the server's default max_pending.
    upload_credit_bytes: int = 8 * MiB
    # Fail fast (edgecache.common.heartbeats): a requester asks the node working on its
    # request for an idle heartbeat every idle_heartbeat_s, and takes a node silent for
    # heartbeat_timeout_s for dead (503 in about that time, not request_timeout_s).
    idle_heartbeat_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    # copies of every JetStream stream and KV bucket: 1 on one nats-server, 3 on a 3-server
    # cluster (docs/operations.md "Running a 3-server site"); an existing stream is updated
    # to it, an existing KV bucket is used as it is
    replicas: int = 1

    def servers(self) -> list[str]:
        """The server URLs of ``url``: one, or several separated by commas (a cluster's
        servers, any of which may be down), e.g. ``["nats://h1:4222", "nats://h2:4222"]``.

        Raises:
            ConfigError: ``url`` names no server.
        """
        found = [u.strip() for u in self.url.split(",") if u.strip()]
        if not found:
            raise ConfigError(f"nats.url: no server in {self.url!r}")
        return found


class GatewayConfig(msgspec.Struct, **_OPTS):
    host: str = "127.0.0.1"
    port: int = 9000
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    max_skew_s: int = 900  # allowed clock difference for signed requests (S3: 15 min)
    window_frames: int = 8  # most frames in flight per download stream (nats.download_credit_bytes bounds them all)
    memory_tier_bytes: int = 128 * MiB  # the memory tier's capacity, all workers together (0: off)
    memory_tier_gate_bytes: int = MiB  # largest object it holds
    workers: int = 0  # processes sharing the port (SO_REUSEPORT); 0: one per core
    # read cache hits straight from a cache node's chunk files on this host (docs/protocol.md)
    short_circuit: bool = True
    short_circuit_buffers: int = 4  # chunk buffers (<= chunk_bytes each) per worker process
    # metrics and health (docs/operations.md): worker i of gateway.workers serves them on
    # metrics_port + i; 0: none (the S3 port still answers /health/*)
    metrics_port: int = 0
    # HTTPS beside HTTP (docs/security.md, TLS): served on tls_port when both PEM files are
    # set; every worker process listens on it too (SO_REUSEPORT), same app and fast paths
    tls_port: int = 9001
    tls_cert_file: str = ""  # the certificate chain, leaf first (PEM)
    tls_key_file: str = ""  # its private key (PEM, unencrypted)
    # virtual-hosted-style addressing: "Host: <bucket>.<domain>" names the bucket (e.g.
    # "s3.localhost"); empty: path-style only
    domain: str = ""
    header_timeout_s: float = 10.0  # a request's head must arrive within this (else 400 RequestTimeout)
    body_idle_timeout_s: float = 20.0  # longest wait for more of a body the gateway is reading


class CacheNodeConfig(msgspec.Struct, **_OPTS):
    node_id: str = ""  # empty: derived from host name and data dir
    data_dir: str = ""  # empty: <data_dir>/cachenode
    chunk_bytes: int = 8 * MiB
    replicas: int = 2  # copies of each dirty chunk (this node and peers) before a write is acknowledged
    capacity_bytes: int = 64 * 1024 * MiB
    high_watermark: float = 0.90  # evict above this fraction of capacity_bytes ...
    low_watermark: float = 0.80  # ... down to this one
    heartbeat_s: float = 2.0
    fill_concurrency: int = 4  # parallel ranged GETs per object being filled
    fill_run_bytes: int = 32 * MiB  # one ranged GET fills up to this many bytes of consecutive chunks
    revalidate_after_s: float = 60.0  # a clean cached object is checked against the origin after this
    stale_if_error: bool = True  # serve a cached object when the origin is unreachable
    window_frames: int = 8  # frames in flight per upload stream
    stream_idle_timeout_s: float = 30.0
    lease_s: float = 30.0  # a short-circuit read plan pins its chunks at most this long
    metrics_port: int = 0  # /metrics and /health/* (docs/operations.md); 0: none
    # fewest copies of each dirty chunk (this node's included) a write may be acknowledged
    # with: fewer live peers, and the write is refused (503 ServiceUnavailable) and nothing
    # is kept; 1: always acknowledge (with up to `replicas` copies)
    min_replicas: int = 1
    manifest_ttl_s: float = 86400.0  # a clean manifest not rewritten for this long expires (0: never)
    multipart_max_age_s: float = 7 * 86400.0  # an upload not completed by then is aborted


class WritebackConfig(msgspec.Struct, **_OPTS):
    # JetStream redelivers an intent not acked (nor reported in progress) by then: a dead
    # replica's intents move on after at most this long. A replica working on an intent
    # reports progress every ack_wait_s / 4 and gives the intent up if it could not.
    ack_wait_s: float = 4.0
    # origin uploads at once per replica; each holds at most one single-PUT buffer
    # (origin.multipart_threshold_bytes) or a few part buffers (origin.part_bytes)
    max_uploads: int = 2
    backoff_base_s: float = 0.5  # retry delay: base * 2**attempt, capped, with full jitter
    backoff_max_s: float = 30.0
    metrics_port: int = 0  # /metrics and /health/* (docs/operations.md); 0: none


class FederatorConfig(msgspec.Struct, **_OPTS):
    node_ttl_s: float = 10.0  # a node without a heartbeat for this long leaves KV ``nodes``
    metrics_port: int = 0  # /metrics and /health/* (docs/operations.md); 0: none
    # federation (docs/operations.md, "Two sites and a hub")
    role: Literal["site", "hub"] = "site"  # hub: the hub's federator (edgecache hub)
    site_heartbeat_s: float = 1.0  # a site federator's heartbeat to the hub
    site_ttl_s: float = 10.0  # a site without a heartbeat for this long leaves KV ``sites``
    apply_in_flight: int = 64  # other sites' changes being applied at once (FED_APPLY)
    apply_timeout_s: float = 5.0  # one FED_APPLY request; then retried with backoff


class FederationConfig(msgspec.Struct, **_OPTS):
    """This site's place in a federation of sites over NATS leaf nodes (docs/operations.md,
    "Two sites and a hub"). ``site`` empty: a lone site, nothing is federated."""

    site: str = ""  # this site's name: [a-z0-9-], also its JetStream domain
    hub_url: str = ""  # the hub's leaf node URL (nats-leaf://host:7422); empty: no hub
    route_ttl_s: float = 5.0  # a cache node trusts its cached owner site of a key this long


class OriginConfig(msgspec.Struct, **_OPTS):
    kind: Literal["file", "s3", "azure"] = "file"
    path: str = ""  # file: the directory; empty: <data_dir>/origin
    endpoint_url: str = ""  # s3: for S3-compatible origins; empty: AWS
    region: str = ""  # s3: empty: from the AWS chain
    connection_string: str = ""  # azure: empty: AZURE_STORAGE_CONNECTION_STRING
    multipart_threshold_bytes: int = 16 * MiB  # writeback uploads larger objects in parts
    part_bytes: int = 8 * MiB
    timeout_s: float = 30.0


class LogConfig(msgspec.Struct, **_OPTS):
    level: str = "info"
    json: bool | None = None  # None: JSON unless stderr is a TTY


class MetricsConfig(msgspec.Struct, **_OPTS):
    """Where every service's metrics and health server listens (the ports are per service:
    ``<service>.metrics_port``)."""

    host: str = "127.0.0.1"  # 0.0.0.0 in containers, so that Prometheus can scrape


class AdminConfig(msgspec.Struct, **_OPTS):
    """The admin API (served by the federator; docs/operations.md)."""

    host: str = "127.0.0.1"
    port: int = 14000  # 0: no admin API
    # bearer token every route but /health/* requires; `edgecache up` generates it in
    # <data-dir>/admin-token. Empty: the admin API does not start (it never runs open).
    token: str = ""
    request_timeout_s: float = 300.0  # one purge or warm of one object by a cache node


class Config(msgspec.Struct, **_OPTS):
    data_dir: str = ".edgecache"
    nats: NatsConfig = NatsConfig()
    gateway: GatewayConfig = GatewayConfig()
    cachenode: CacheNodeConfig = CacheNodeConfig()
    writeback: WritebackConfig = WritebackConfig()
    federator: FederatorConfig = FederatorConfig()
    federation: FederationConfig = FederationConfig()
    origin: OriginConfig = OriginConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()

    def __post_init__(self) -> None:
        # a federated site's connections take their replies under the site's own inboxes
        # (subjects.site_inboxes), the only ones the hub lets reach it
        if self.federation.site and self.nats.inbox_prefix == DEFAULT_INBOX_PREFIX:
            nats = msgspec.structs.replace(
                self.nats, inbox_prefix=subjects.site_inboxes(self.federation.site)
            )
            msgspec.structs.force_setattr(self, "nats", nats)

    def origin_path(self) -> Path:
        """The file origin's directory."""
        return Path(self.origin.path or Path(self.data_dir) / "origin")

    def cachenode_dir(self) -> Path:
        """The cache node's chunk store directory."""
        return Path(self.cachenode.data_dir or Path(self.data_dir) / "cachenode")

    def gateway_workers(self) -> int:
        """How many gateway worker processes ``gateway.workers`` asks for (0: one per core)."""
        return self.gateway.workers or os.cpu_count() or 1


# short names from the README and `edgecache up --help` -> (section, field)
ENV_ALIASES: dict[str, tuple[str | None, str]] = {
    "EDGECACHE_DATA_DIR": (None, "data_dir"),
    "EDGECACHE_PORT": ("gateway", "port"),
    "EDGECACHE_NATS_URL": ("nats", "url"),
    "EDGECACHE_ACCESS_KEY": ("gateway", "access_key"),
    "EDGECACHE_SECRET_KEY": ("gateway", "secret_key"),
    "EDGECACHE_ORIGIN": ("origin", "kind"),
    "EDGECACHE_ORIGIN_ENDPOINT_URL": ("origin", "endpoint_url"),
    "EDGECACHE_ORIGIN_PATH": ("origin", "path"),
    "EDGECACHE_ADMIN_PORT": ("admin", "port"),
}


def _set(tree: dict[str, Any], section: str | None, field: str, value: Any) -> None:
    target = tree if section is None else tree.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"config: {section} is not a section")
    target[field] = value


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the config from defaults, the TOML file at ``path``, ``env`` and ``overrides``.

    ``env`` defaults to ``os.environ``; ``overrides`` is a nested dict applied last (the
    CLI's flags). Raises :class:`ConfigError` naming the bad key or value.
    """
    env = dict(os.environ if env is None else env)
    tree: dict[str, Any] = {}
    path = path or env.get("EDGECACHE_CONFIG")
    if path:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    for name, value in env.items():
        if not name.startswith("EDGECACHE_") or name in ENV_ALIASES or name == "EDGECACHE_CONFIG":
            continue
        rest = name[len("EDGECACHE_") :].lower()
        if "__" in rest:
            section, field = rest.split("__", 1)
            _set(tree, section, field, value)
    for name, (section, field) in ENV_ALIASES.items():
        if env.get(name):
            _set(tree, section, field, env[name])
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            for field, value in values.items():
                if value is not None:
                    _set(tree, section, field, value)
        elif values is not None:
            _set(tree, None, section, values)
    try:
        return msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {exc}") from exc
