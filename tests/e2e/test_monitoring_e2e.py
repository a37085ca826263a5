"""`edgecache up` gives every service a metrics port and `edgecache status --json` lists
them: every listed URL answers, as the service it names, through the locked-down NATS (the
session stack's teardown fails on any permission the readiness checks were refused)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from click.testing import CliRunner

from edgecache.launcher import cli
from tests.fixtures.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own URLs
        return response.status, response.read()


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 (the banner waits for the gateway's first worker only:
    the other processes may still be starting)."""
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def test_status_json_lists_every_services_metrics_and_health(stack: Stack) -> None:
    runner = CliRunner()
    result = runner.invoke(cli.main, ["status", "--json", "--data-dir", str(stack.data_dir)])
    assert result.exit_code == 0, result.output
    services = {s["service"]: s for s in json.loads(result.stdout)["services"]}
    assert set(services) == {"gateway", "cachenode", "writeback", "federator"}
    for name, endpoints in services.items():
        assert endpoints["metrics"], name
        for url in endpoints["metrics"]:
            wait_for(lambda url=url: _answers(url), what=url)
            status, body = _get(url)
            assert status == 200
            assert f"edgecache_{name}_nats_connected 1.0".encode() in body, url
        for url in endpoints["ready"] + endpoints["live"]:
            status, body = _get(url)
            assert (status, json.loads(body)["service"]) == (200, name), url
    # the admin API (the federator's) and its status page
    api, page = services["federator"]["admin"]
    status, _ = _get(api.removesuffix("/api") + "/health/live")
    assert status == 200 and page.endswith("/status")
    assert all(not services[n]["admin"] for n in ("gateway", "cachenode", "writeback"))
    # the table lists them too
    table = runner.invoke(cli.main, ["status", "--data-dir", str(stack.data_dir)])
    assert services["cachenode"]["metrics"][0] in table.output
    assert page in table.output
    # and the gateway answers health on its S3 port, unsigned
    status, body = _get(stack.endpoint + "/health/ready")
    assert (status, json.loads(body)["ok"]) == (200, True)
