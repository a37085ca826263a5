"""Where each service of ``edgecache up`` serves its metrics and health: the ports ``up``
picks, and the URLs ``up`` and ``status`` list."""

from __future__ import annotations

import msgspec

from edgecache.common.config import Config
from edgecache.launcher.natsserver import free_port
from edgecache.launcher.ports import port_in_use

__all__ = ["METRICS_SERVICES", "ServiceEndpoints", "pick_metrics_ports", "service_endpoints"]

#: the services with a metrics port, in ``up``'s order (``<service>.metrics_port``)
METRICS_SERVICES: tuple[str, ...] = ("gateway", "cachenode", "writeback", "federator")
_TRIES = 50


class ServiceEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    """One service's monitoring URLs, as ``status --json`` prints them.

    ``metrics`` and ``ready`` hold one URL per process: a gateway has one per worker
    (``gateway.metrics_port + i``); empty when the service's ``metrics_port`` is 0.
    ``admin``: the admin API's base URL and its status page (the federator serves them;
    empty for the other services, or when ``admin.port`` is 0).
    """

    service: str
    metrics: list[str]
    live: list[str]
    ready: list[str]
    admin: list[str] = []


def _processes(config: Config, service: str, cachenodes: int = 1) -> int:
    if service == "gateway":
        return config.gateway_workers()
    return cachenodes if service == "cachenode" else 1


def _free_run(host: str, count: int) -> int:
    """The first of ``count`` consecutive ports free on ``host`` a moment ago."""
    for _ in range(_TRIES):
        first = free_port(host)
        if first + count <= 65536 and not any(
            port_in_use(host, first + i) for i in range(1, count)
        ):
            return first
    raise OSError(f"no {count} consecutive free ports on {host}")


def pick_metrics_ports(config: Config, *, cachenodes: int = 1) -> Config:
    """``config`` with a free port for every service whose ``metrics_port`` is 0 (for the
    gateway, a run of ``gateway_workers()`` consecutive ones; for the cache node, a run of
    ``cachenodes``: node ``i`` serves on ``metrics_port + i - 1``); ports already set are
    kept.

    Raises:
        OSError: no free ports.
    """
    host = "127.0.0.1" if config.metrics.host in ("", "0.0.0.0", "::") else config.metrics.host
    for service in METRICS_SERVICES:
        section = getattr(config, service)
        if section.metrics_port:
            continue
        port = _free_run(host, _processes(config, service, cachenodes))
        section = msgspec.structs.replace(section, metrics_port=port)
        config = msgspec.structs.replace(config, **{service: section})
    return config


def service_endpoints(config: Config) -> list[ServiceEndpoints]:
    """The monitoring URLs of every service that ``config`` gives a metrics port."""
    host = config.metrics.host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    found = []
    for service in METRICS_SERVICES:
        port = getattr(config, service).metrics_port
        bases = (
            [f"http://{host}:{port + i}" for i in range(_processes(config, service))]
            if port
            else []
        )
        found.append(
            ServiceEndpoints(
                service=service,
                metrics=[f"{b}/metrics" for b in bases],
                live=[f"{b}/health/live" for b in bases],
                ready=[f"{b}/health/ready" for b in bases],
                admin=_admin_urls(config) if service == "federator" else [],
            )
        )
    return found


def _admin_urls(config: Config) -> list[str]:
    """The admin API's base URL and status page, if it is on."""
    if not config.admin.port:
        return []
    host = "127.0.0.1" if config.admin.host in ("", "0.0.0.0", "::") else config.admin.host
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{config.admin.port}"
    return [f"{base}/api", f"{base}/status"]
