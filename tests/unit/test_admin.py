"""The admin API's pure parts: redacting the config, the views' arithmetic, and how the
`warm` / `purge` commands read their arguments and find the admin API."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest

from edgecache.common import wire
from edgecache.common.config import load_config
from edgecache.federator import views
from edgecache.federator.membership import Membership
from edgecache.launcher import adminclient, admintoken


def test_redacted_config_hides_every_secret_and_keeps_the_rest() -> None:
    config = load_config(
        env={},
        overrides={
            "nats": {"url": "nats://fed:pw@10.0.0.1:4222", "user": "federator", "password": "pw"},
            "gateway": {"access_key": "AK", "secret_key": "SK"},
            "origin": {"kind": "azure", "connection_string": "AccountKey=xyz"},
            "admin": {"token": "t0k3n-secret"},
        },
    )
    tree = views.redacted_config(config)
    text = msgspec.json.encode(tree).decode()
    for secret in ("pw@", '"pw"', '"SK"', "xyz", "t0k3n-secret"):
        assert secret not in text, secret
    assert tree["nats"]["url"] == "nats://***@10.0.0.1:4222"
    assert tree["gateway"]["secret_key"] == tree["admin"]["token"] == views.REDACTED
    assert tree["gateway"]["access_key"] == "AK" and tree["nats"]["user"] == "federator"
    assert views.redacted_config(load_config(env={}))["admin"]["token"] == ""  # empty stays empty


def _beat(node_id: str, **stats: int) -> wire.Heartbeat:
    return wire.Heartbeat(
        id=node_id,
        at_ns=2_000_000_000,
        node_id=node_id,
        host="h",
        started=1.0,
        stats=wire.NodeStats(**stats),
    )


def test_cache_view_adds_up_the_nodes_and_computes_hit_ratios() -> None:
    membership = Membership(10.0)
    membership.observe(_beat("b", hits=3, misses=1, used_bytes=10, capacity_bytes=100))
    membership.observe(_beat("a", hits=0, misses=0, dirty_bytes=5, capacity_bytes=50))
    cache = views.cache_view(membership)
    assert list(cache.nodes) == ["a", "b"]
    assert cache.nodes["a"].hit_ratio is None and cache.nodes["b"].hit_ratio == 0.75
    t = cache.totals
    assert (t.nodes, t.hits, t.misses, t.hit_ratio) == (2, 3, 1, 0.75)
    assert (t.used_bytes, t.capacity_bytes, t.dirty_bytes) == (10, 150, 5)
    (view,) = [n for n in views.node_views(membership, now=3.0) if n.node_id == "a"]
    assert (view.uptime_s, view.last_seen_s) == (2.0, 1.0)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
        ("s3://b/photos/2024/", "b", "photos/2024/"),
        ("s3://b/a b/c?d", "b", "a b/c?d"),
    ],
)
def test_s3_urls_split_into_bucket_and_prefix(url: str, bucket: str, prefix: str) -> None:
    target = adminclient.parse_s3_url(url)
    assert (target.bucket, target.prefix) == (bucket, prefix)


@pytest.mark.parametrize("url", ["b/prefix", "http://b/p", "s3:///p"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(click.BadParameter):
        adminclient.parse_s3_url(url)


def test_the_commands_find_the_admin_api_in_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(click.ClickException, match="no admin token"):
        adminclient.admin_endpoint(None, None, str(tmp_path))
    token = admintoken.load_or_create_admin_token(tmp_path)
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert admintoken.load_or_create_admin_token(tmp_path) == token  # kept, not regenerated
    (tmp_path / "edgecache.toml").write_text('[admin]\nhost = "0.0.0.0"\nport = 14123\n')
    assert adminclient.admin_endpoint(None, None, str(tmp_path)) == (
        "http://127.0.0.1:14123",
        token,
    )
    assert adminclient.admin_endpoint("http://x:1/", "t", str(tmp_path)) == ("http://x:1", "t")
    (tmp_path / "admin-token").write_text("\n")
    with pytest.raises(click.ClickException, match="is empty"):
        adminclient.admin_endpoint("http://x:1", None, str(tmp_path))
