"""``edgecache warm`` / ``edgecache purge``: start a job on the admin API and follow its
progress — a ``rich`` progress bar on a terminal, one plain line per change otherwise.

The admin API's URL and token are found as ``status`` finds NATS: ``--admin-url`` /
``--token`` (``EDGECACHE_ADMIN_URL`` / ``EDGECACHE_ADMIN_TOKEN``), else the ``[admin]``
section of the config ``up`` wrote in the data dir and ``<data-dir>/admin-token``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import click
import httpx

from edgecache.common.config import ConfigError, load_config
from edgecache.launcher.admintoken import load_admin_token
from edgecache.launcher.datadir import CONFIG_FILE

__all__ = ["Target", "admin_endpoint", "parse_s3_url", "run_job"]

POLL_S = 0.2  # how often a job's progress is read


class Target:
    """``s3://bucket/prefix``, split: ``bucket`` and ``prefix`` (``""``: the whole bucket)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> Target:
    """``s3://bucket/prefix`` → :class:`Target`.

    Raises:
        click.BadParameter: not an ``s3://`` URL with a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise click.BadParameter(f"{url!r} is not s3://bucket/prefix")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.query:  # a '?' belongs to the key: urlsplit took it for a query
        path += "?" + parts.query
    return Target(parts.netloc, path)


def admin_endpoint(admin_url: str | None, token: str | None, data_dir: str) -> tuple[str, str]:
    """``(base URL, token)`` of the admin API (see the module docstring).

    Raises:
        click.ClickException: no token found, or the data dir's config is invalid.
    """
    root = Path(data_dir)
    written = root / CONFIG_FILE
    if not admin_url:
        try:
            admin = load_config(written if written.exists() else None).admin
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        host = "127.0.0.1" if admin.host in ("", "0.0.0.0", "::") else admin.host
        admin_url = f"http://{host}:{admin.port}"
        token = token or admin.token or None
    token = token or load_admin_token(root)
    if not token:
        raise click.ClickException(
            f"no admin token: pass --token (EDGECACHE_ADMIN_TOKEN), or the --data-dir of the "
            f"`edgecache up` whose {root / 'admin-token'} holds it"
        )
    return admin_url.rstrip("/"), token


def _fail(response: httpx.Response) -> click.ClickException:
    try:
        body = response.json()
        detail = body.get("message") or body.get("detail") or response.text
    except ValueError:
        detail = response.text
    if response.status_code == 401:
        detail += " (is the token the one in <data-dir>/admin-token?)"
    return click.ClickException(f"the admin API answered {response.status_code}: {detail}")


def run_job(
    kind: Literal["purge", "warm"],
    target: Target,
    base_url: str,
    token: str,
    *,
    key: bool = False,
    tty: bool | None = None,
    echo: Callable[[str], None] = click.echo,
) -> dict[str, Any]:
    """Start a purge or warm of ``target`` (``key``: exactly the object ``bucket/prefix``)
    and follow it to the end.

    Returns:
        The finished job (:class:`edgecache.federator.jobs.Job` as JSON).

    Raises:
        click.ClickException: the admin API is unreachable or refused the job.
    """
    tty = sys.stdout.isatty() if tty is None else tty
    body: dict[str, Any] = {"bucket": target.bucket}
    if key:
        body["key"] = target.prefix
    else:
        body["prefix"] = target.prefix
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as http:
            response = http.post(f"/api/{kind}", json=body)
            if response.status_code != 202:
                raise _fail(response)
            job = response.json()
            follow = _follow_rich if tty else _follow_plain
            return follow(http, job, kind, target, echo)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the admin API at {base_url}: {exc}") from exc


def _poll(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(POLL_S)
    response = http.get(f"/api/jobs/{job['id']}")
    if response.status_code != 200:
        raise _fail(response)
    return response.json()


def _summary(job: dict[str, Any]) -> str:
    verb = "purged" if job["kind"] == "purge" else "warmed"
    done = job["purged"] if job["kind"] == "purge" else job["warmed"]
    parts = [f"{done} objects {verb}, {job['bytes']} bytes"]
    if job["kind"] == "purge":
        parts.append(f"{job['skipped']} dirty skipped, {job['absent']} not cached")
    parts.append(f"{job['failed']} failed")
    return "; ".join(parts)


def _follow_plain(
    http: httpx.Client, job: dict[str, Any], kind: str, target: Target, echo: Callable[[str], None]
) -> dict[str, Any]:
    echo(f"{kind} {target}: job {job['id']}")
    last = None
    while True:
        line = f"{kind} {target}: {job['done']}/{job['objects']}{'' if job['listed'] else '+'} objects, {job['bytes']} bytes"
        if line != last:
            echo(line)
            last = line
        if job["state"] != "running":
            break
        job = _poll(http, job)
    for error in job["errors"]:
        echo(f"  {error}")
    echo(f"{kind} {target}: {job['state']}: {_summary(job)}")
    return job


def _follow_rich(
    http: httpx.Client, job: dict[str, Any], kind: str, target: Target, echo: Callable[[str], None]
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"{kind} {target}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("objects  {task.fields[bytes]} bytes"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task(kind, total=None, bytes=0)
        while True:
            progress.update(
                task,
                completed=job["done"],
                total=job["objects"] if job["listed"] else None,
                bytes=job["bytes"],
            )
            if job["state"] != "running":
                break
            job = _poll(http, job)
    for error in job["errors"]:
        echo(f"  {error}")
    echo(f"{job['state']}: {_summary(job)}")
    return job
