"""What a person reads: the banner ``edgecache up`` prints when the stack is ready, the
``edgecache status`` table, and the human units they use."""

from __future__ import annotations

import time
from pathlib import Path

from edgecache.common import wire
from edgecache.common.config import Config
from edgecache.launcher.datadir import NATS_CREDENTIALS_FILE
from edgecache.launcher.endpoints import ServiceEndpoints, service_endpoints
from edgecache.launcher.status import ClusterStatus

__all__ = [
    "READY_PREFIX",
    "human_bytes",
    "human_duration",
    "render_banner",
    "render_endpoints",
    "render_sites",
    "render_status",
]

READY_PREFIX = "edgecache is up:"  # the banner's first line: "<prefix> endpoint=URL nats=URL"


def render_banner(
    config: Config,
    endpoint_url: str,
    data_dir: Path,
    created: bool,
    *,
    nats_users: bool = False,
    admin_url: str = "",
    tls_url: str | None = None,
    ca_file: Path | None = None,
) -> str:
    """What ``up`` prints once the gateway answers: a first line scripts wait for
    (:data:`READY_PREFIX`), then the endpoint, the credentials (``created``: new ones were
    just saved in the data dir), the origin, NATS (``nats_users``: the private server's
    identities are in the data dir), where the logs are, the admin API (``admin_url``, ""
    when off), and how to try it; with ``tls_url``, the HTTPS endpoint too, and with
    ``ca_file`` (a self-signed certificate) the ``AWS_CA_BUNDLE`` that clients need to
    trust it."""
    gw = config.gateway
    origin = config.origin
    where = {
        "file": str(config.origin_path()),
        "s3": origin.endpoint_url or "AWS S3",
        "azure": "Azure Blob Storage",
    }[origin.kind]
    tls_lines = []
    if tls_url:
        tls_lines.append(f"  https        {tls_url}")
    if tls_url and ca_file:
        tls_lines.append(
            f"  CA bundle    {ca_file}   (self-signed: export AWS_CA_BUNDLE={ca_file})"
        )
    return "\n".join(
        [
            f"{READY_PREFIX} endpoint={endpoint_url} nats={config.nats.url}",
            "",
            f"  endpoint     {endpoint_url}   (S3 API, path-style, region {gw.region})",
            *tls_lines,
            f"  access key   {gw.access_key}",
            f"  secret key   {gw.secret_key}"
            + ("   (new, saved in credentials)" if created else ""),
            f"  origin       {origin.kind}: {where}",
            f"  data dir     {data_dir}",
            f"  nats         {config.nats.url}"
            + (f"   (users in {NATS_CREDENTIALS_FILE})" if nats_users else ""),
            f"  logs         {data_dir / 'logs'}/<service>.log",
            *[
                f"  metrics      {line.strip()}"
                for line in render_endpoints(service_endpoints(config))[1:]
            ],
            *(
                [f"  admin        {admin_url}/status   (token in {data_dir / 'admin-token'})"]
                if admin_url
                else []
            ),
            "",
            "  Try it:",
            f"    export AWS_ACCESS_KEY_ID={gw.access_key} AWS_SECRET_ACCESS_KEY={gw.secret_key}"
            f" AWS_DEFAULT_REGION={gw.region}",
            f"    aws --endpoint-url {endpoint_url} s3 mb s3://demo",
            f"    aws --endpoint-url {endpoint_url} s3 ls",
            "",
            "  `edgecache status` shows the cache nodes; Ctrl-C stops everything.",
        ]
    )


def human_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"`` (IEC units; bytes below 1 KiB as ``"512 B"``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``4000`` → ``"1h06m"``; the two largest units."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def render_status(status: ClusterStatus) -> str:
    """The human table printed by ``edgecache status``."""
    header = [
        "NODE",
        "HOST",
        "UPTIME",
        "USED/CAPACITY",
        "DIRTY",
        "CHUNKS",
        "HITS",
        "MISSES",
        "FILLS",
        "EVICTIONS",
        "IN",
        "OUT",
        "SEEN",
    ]
    rows = [header]
    for n in status.nodes:
        st = n.stats
        rows.append(
            [
                n.node_id,
                n.host,
                human_duration(n.uptime_s),
                f"{human_bytes(st.used_bytes)}/{human_bytes(st.capacity_bytes)}",
                human_bytes(st.dirty_bytes),
                str(st.chunks),
                str(st.hits),
                str(st.misses),
                str(st.fills),
                str(st.evictions),
                human_bytes(st.bytes_in),
                human_bytes(st.bytes_out),
                f"{n.last_seen_s:.0f}s ago",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"nats {status.nats_url}: {len(status.nodes)} cache node(s)"]
    if status.nodes:
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
    wb = status.writeback
    oldest = "" if wb.oldest_age_s is None else f", oldest {human_duration(wb.oldest_age_s)} old"
    lines.append(
        f"writeback backlog: {wb.intents} intent(s){oldest}; "
        f"{wb.in_flight} in flight, {wb.redelivered} redelivered, {wb.retrying} failing"
    )
    lines += [
        f"  failing: {f.bucket}/{f.key} after {f.attempts} attempt(s): {f.error}"
        for f in wb.failing
    ]
    lines += render_sites(status.sites)
    lines += render_endpoints(status.services)
    lines += [f"admin API: {' '.join(s.admin)}" for s in status.services if s.admin]
    return "\n".join(lines)


def render_sites(sites: list[wire.SiteHeartbeat]) -> list[str]:
    """The federated sites (from the hub): one line per site, one per node under it."""
    if not sites:
        return []
    now_ns = time.time_ns()
    lines = [f"sites (from the hub): {len(sites)}"]
    for site in sites:
        lag = "?" if site.lag < 0 else str(site.lag)
        backlog = "?" if site.backlog < 0 else str(site.backlog)
        lines.append(
            f"  {site.site}: {len(site.nodes)} cache node(s), cross-site backlog {backlog} "
            f"change(s), lag {lag}, applied {site.applied}, failed applies "
            f"{site.failed_applies}, seen {max(0.0, (now_ns - site.at_ns) / 1e9):.0f}s ago"
        )
        for beat in site.nodes:
            st = beat.stats
            lines.append(
                f"    {beat.node_id} {beat.host}: {human_bytes(st.used_bytes)}/"
                f"{human_bytes(st.capacity_bytes)}, dirty {human_bytes(st.dirty_bytes)}, "
                f"hits {st.hits}, misses {st.misses}, in {human_bytes(st.bytes_in)}, "
                f"out {human_bytes(st.bytes_out)}"
            )
    return lines


def render_endpoints(services: list[ServiceEndpoints]) -> list[str]:
    """One line per service with metrics: its ``/metrics`` URLs (health: same ports)."""
    lines = [f"  {s.service:<10} {' '.join(s.metrics)}" for s in services if s.metrics]
    if lines:
        lines.insert(0, "metrics (and /health/live, /health/ready on the same ports):")
    return lines
