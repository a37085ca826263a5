"""The ``edgecache`` command: help, flag/env/file precedence, credentials, the config file,
the supervisor, ``status`` rendering, and one real ``edgecache up`` run with stand-in
gateway/cachenode/writeback (the real federator and nats-server)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from edgecache.common import wire
from edgecache.common.config import Config, load_config
from edgecache.launcher import cli, configfile, credentials, datadir, render, status
from edgecache.launcher import up as up_mod
from edgecache.launcher.natsserver import free_port
from edgecache.launcher.supervisor import ChildSpec, FatalExit, Supervisor
from edgecache.launcher.supervisor import RestartBackoff as Backoff

EDGECACHE = Path(sys.executable).parent / "edgecache"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner with no EDGECACHE_* variable leaking in from the environment."""
    for name in list(os.environ):
        if name.startswith("EDGECACHE_"):
            monkeypatch.delenv(name)
    return CliRunner()


# == help and the per-service commands =========================================================
@pytest.mark.parametrize(
    "args", [[], ["up"], ["status"], ["gateway"], ["cachenode"], ["writeback"], ["federator"]]
)
def test_help(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli.main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


@pytest.mark.parametrize("service", cli.SERVICES)
def test_service_command_execs_the_module(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    result = runner.invoke(cli.main, [service, "--config", "x.toml"])
    assert result.exit_code == 0, result.output
    assert calls == [
        (sys.executable, [sys.executable, "-m", f"edgecache.{service}", "--config", "x.toml"])
    ]


# == flag / env / file precedence for `up` =====================================================
@pytest.fixture
def captured_up(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the running part of `up` with a recorder of what it was given."""
    seen: dict[str, Any] = {}

    def fake_run_up(config: Config, root: Path, **kwargs: Any) -> int:
        seen.update(config=config, root=root, **kwargs)
        return 0

    monkeypatch.setattr(up_mod, "run", fake_run_up)
    return seen


def test_up_defaults(
    runner: CliRunner, captured_up: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.main, ["up"])
    assert result.exit_code == 0, result.output
    config: Config = captured_up["config"]
    assert config.data_dir == str(tmp_path.resolve() / ".edgecache")
    assert config.gateway.port == 9000
    assert config.origin.kind == "file"
    assert captured_up["external_nats"] is False
    assert Path(config.data_dir).is_dir()


def test_up_precedence_flag_over_env_over_file(
    runner: CliRunner, captured_up: dict[str, Any], tmp_path: Path
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[gateway]\nport = 9300\nregion = "eu-west-1"\n[origin]\nkind = "s3"\n')
    base = ["up", "--data-dir", str(tmp_path / "d"), "--config", str(toml)]

    def port_of(args: list[str], env: dict[str, str]) -> Config:
        result = runner.invoke(cli.main, base + args, env=env)
        assert result.exit_code == 0, result.output
        return captured_up["config"]

    assert port_of([], {}).gateway.port == 9300  # file over default
    assert port_of([], {}).gateway.region == "eu-west-1"
    assert port_of([], {"EDGECACHE_PORT": "9100"}).gateway.port == 9100  # env over file
    assert port_of(["--port", "9200"], {"EDGECACHE_PORT": "9100"}).gateway.port == 9200  # flag
    assert port_of([], {"EDGECACHE_ORIGIN": "azure"}).origin.kind == "azure"
    assert port_of(["--origin", "file"], {"EDGECACHE_ORIGIN": "azure"}).origin.kind == "file"
    assert port_of([], {"EDGECACHE_GATEWAY__MAX_SKEW_S": "60"}).gateway.max_skew_s == 60


def test_up_paths_are_absolute(
    runner: CliRunner, captured_up: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.main, ["up", "--data-dir", "d", "--origin-path", "o"])
    assert result.exit_code == 0, result.output
    config: Config = captured_up["config"]
    assert config.data_dir == str(tmp_path.resolve() / "d")
    assert config.origin.path == str(tmp_path.resolve() / "o")


def test_up_nats_url_means_no_private_server(
    runner: CliRunner, captured_up: dict[str, Any], tmp_path: Path
) -> None:
    env = {"EDGECACHE_NATS_URL": "nats://10.0.0.1:4222"}
    result = runner.invoke(cli.main, ["up", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert captured_up["external_nats"] is True
    assert captured_up["config"].nats.url == "nats://10.0.0.1:4222"


def test_up_rejects_bad_input(
    runner: CliRunner, captured_up: dict[str, Any], tmp_path: Path
) -> None:
    result = runner.invoke(
        cli.main, ["up", "--data-dir", str(tmp_path)], env={"EDGECACHE_ORIGIN": "ftp"}
    )
    assert result.exit_code == 2
    assert "--origin" in result.output
    toml = tmp_path / "c.toml"
    toml.write_text("[gateway]\nprot = 1\n")
    result = runner.invoke(cli.main, ["up", "--data-dir", str(tmp_path), "--config", str(toml)])
    assert result.exit_code == 1
    assert "prot" in result.output
    assert captured_up == {}


# == credentials and the effective config =====================================================
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_generated_once_then_reused(tmp_path: Path) -> None:
    access, secret, created = credentials.load_or_create_credentials(tmp_path)
    assert created
    assert re.fullmatch(r"EC[A-Z0-9]{18}", access)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", secret)
    path = tmp_path / datadir.CREDENTIALS_FILE
    assert _mode(path) == 0o600
    assert f"aws_secret_access_key = {secret}" in path.read_text()
    assert credentials.load_or_create_credentials(tmp_path) == (access, secret, False)


def test_credentials_mode_is_repaired_and_bad_file_is_an_error(tmp_path: Path) -> None:
    access, _, _ = credentials.load_or_create_credentials(tmp_path)
    path = tmp_path / datadir.CREDENTIALS_FILE
    path.chmod(0o644)
    assert credentials.load_or_create_credentials(tmp_path)[0] == access
    assert _mode(path) == 0o600
    path.write_text("[other]\nx = 1\n")
    with pytest.raises(click.ClickException, match="delete the file"):
        credentials.load_or_create_credentials(tmp_path)


def test_each_data_dir_gets_its_own_credentials(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = credentials.load_or_create_credentials(tmp_path / "a")
    b = credentials.load_or_create_credentials(tmp_path / "b")
    assert a[0] != b[0] and a[1] != b[1]


def test_config_file_round_trips(tmp_path: Path) -> None:
    config = msgspec.convert(
        {
            "data_dir": '/tmp/we"ird\\dir\n\x7f é',
            "gateway": {"access_key": "AK", "secret_key": "s3cr=t/+", "port": 9555},
            "cachenode": {"high_watermark": 0.875, "stale_if_error": False},
            "log": {"json": True},
        },
        Config,
    )
    path = tmp_path / "edgecache.toml"
    configfile.write_config(config, path)
    assert _mode(path) == 0o600
    assert msgspec.convert(tomllib.loads(path.read_text()), Config) == config
    assert load_config(path, env={}) == config
    assert load_config(path, env={}).log.json is True
    default = tmp_path / "default.toml"
    configfile.write_config(Config(), default)
    assert load_config(default, env={}) == Config()  # None (log.json) is left out


def test_dump_toml_scalars() -> None:
    tree = {"a": float("inf"), "b": 1e-05, "c": -0.5, "d": 2**40, "e": "", "f": None, "t": {}}
    assert tomllib.loads(configfile.dump_toml(tree)) == {
        "a": float("inf"),
        "b": 1e-05,
        "c": -0.5,
        "d": 2**40,
        "e": "",
        "t": {},
    }
    with pytest.raises(TypeError):
        configfile.dump_toml({"x": b"raw"})


def test_children_get_no_edgecache_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECACHE_PORT", "1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env = up_mod.child_env()
    assert "EDGECACHE_PORT" not in env
    assert env["AWS_REGION"] == "eu-west-1"


# == status ===================================================================================
def test_status_fails_clearly_when_nats_is_unreachable(runner: CliRunner) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = runner.invoke(cli.main, ["status", "--nats-url", url])
    assert result.exit_code == 1
    assert f"cannot reach NATS at {url}" in result.output


def test_status_reads_the_url_up_wrote(runner: CliRunner, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    config = msgspec.convert({"nats": {"url": url}}, Config)
    configfile.write_config(config, tmp_path / datadir.CONFIG_FILE)
    result = runner.invoke(cli.main, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert url in result.output


def test_human_units() -> None:
    assert render.human_bytes(0) == "0 B"
    assert render.human_bytes(1023) == "1023 B"
    assert render.human_bytes(1536) == "1.5 KiB"
    assert render.human_bytes(64 * 1024**3) == "64.0 GiB"
    assert render.human_duration(59) == "59s"
    assert render.human_duration(4000) == "1h06m"
    assert render.human_duration(2 * 86400 + 3600) == "2d01h"


def test_render_status() -> None:
    stats = wire.NodeStats(capacity_bytes=2 * 1024**3, used_bytes=1024**3, hits=7, misses=2)
    node = status.NodeStatus(
        node_id="n1", host="h1", started=0.0, uptime_s=65, last_seen_s=1.2, stats=stats
    )
    failing = status.FailingIntent(bucket="b", key="k", attempts=4, error="AccessDenied: no")
    backlog = status.Backlog(
        intents=3, in_flight=1, redelivered=0, oldest_age_s=12.0, partitions=[], retrying=1,
        failing=[failing],
    )
    text = render.render_status(
        status.ClusterStatus(nats_url="nats://x:1", nodes=[node], writeback=backlog)
    )
    lines = text.splitlines()
    assert lines[0] == "nats nats://x:1: 1 cache node(s)"
    assert lines[1].split()[:4] == ["NODE", "HOST", "UPTIME", "USED/CAPACITY"]
    assert lines[2].split()[:3] == ["n1", "h1", "1m05s"]
    assert "1.0 GiB/2.0 GiB" in lines[2]
    assert "writeback backlog: 3 intent(s), oldest 12s old; 1 in flight" in lines[3]
    assert lines[3].endswith("1 failing")
    assert lines[4] == "  failing: b/k after 4 attempt(s): AccessDenied: no"


# == the supervisor ============================================================================
_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    name, record = sys.argv[1], sys.argv[2]
    def stop(signum, frame):
        with open(record, "a") as f:
            f.write(name + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("started", name, flush=True)
    time.sleep(600)
    """
)


def _spec(tmp_path: Path, name: str) -> ChildSpec:
    argv = [sys.executable, "-c", _CHILD, name, str(tmp_path / "stopped")]
    return ChildSpec(name, argv, tmp_path / "logs" / f"{name}.log")


def _wait(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_supervisor_restarts_and_stops_in_reverse_order(tmp_path: Path) -> None:
    names = ["first", "second", "third"]
    sup = Supervisor(
        [_spec(tmp_path, n) for n in names], backoff=Backoff(base_s=0.05), out=sys.stderr
    )
    logs = [tmp_path / "logs" / f"{n}.log" for n in names]
    sup.start_all()
    try:
        _wait(lambda: all("started" in log.read_text() for log in logs))  # handlers installed
        assert sup.running() == names
        old = sup.pid("second")
        assert old is not None
        os.kill(old, signal.SIGKILL)

        def restarted() -> bool:
            sup.poll()
            return sup.pid("second") not in (None, old)

        _wait(restarted)
        assert sup.restarts("second") == 1
        assert sup.restarts("first") == 0
        _wait(lambda: (tmp_path / "logs" / "second.log").read_text().count("started") == 2)
    finally:
        sup.stop(timeout_s=5)
    assert (tmp_path / "stopped").read_text().split() == ["third", "second", "first"]
    assert sup.running() == []


def test_supervisor_gives_up_on_a_config_error(tmp_path: Path) -> None:
    spec = ChildSpec(
        "bad",
        [sys.executable, "-c", "import sys; print('no such key'); sys.exit(2)"],
        tmp_path / "bad.log",
    )
    sup = Supervisor([spec], out=sys.stderr)
    sup.start_all()
    with pytest.raises(FatalExit) as info:
        _wait(lambda: sup.poll() or False, timeout_s=10)
    assert info.value.code == 2
    assert "no such key" in info.value.log_tail


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base_s=0.5, max_s=4.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


# == one real `edgecache up` ==================================================================
# Stand-ins for the services other people write, so this test pins down `up` itself: a
# gateway that answers 403 to everything, a cache node that only heartbeats, a writeback
# that waits. They shadow the real packages through PYTHONPATH; the federator is real.
_FAKES = {
    "gateway": """
        import asyncio
        from edgecache.common.runtime import run_service

        async def serve(config, stop):
            async def handle(reader, writer):
                await reader.readuntil(b"\\r\\n\\r\\n")
                writer.write(b"HTTP/1.1 403 Forbidden\\r\\nContent-Length: 0\\r\\n\\r\\n")
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(handle, config.gateway.host, config.gateway.port)
            async with server:
                await stop.wait()

        run_service("gateway", serve)
    """,
    "cachenode": """
        import asyncio, time, uuid
        from edgecache.common import subjects, wire
        from edgecache.common.runtime import connect_nats, run_service

        async def serve(config, stop):
            nc = await connect_nats(config.nats, name="fake-cachenode")
            started = time.time()
            while not stop.is_set():
                beat = wire.Heartbeat(
                    id=uuid.uuid4().hex, at_ns=time.time_ns(), node_id="fake-node", host="here",
                    started=started,
                    stats=wire.NodeStats(capacity_bytes=config.cachenode.capacity_bytes))
                await nc.publish(subjects.heartbeat("fake-node"), wire.encode(beat))
                try:
                    await asyncio.wait_for(stop.wait(), config.cachenode.heartbeat_s)
                except TimeoutError:
                    pass
            await nc.drain()

        run_service("cachenode", serve)
    """,
    "writeback": """
        from edgecache.common.runtime import run_service

        async def serve(config, stop):
            await stop.wait()

        run_service("writeback", serve)
    """,
}


@pytest.fixture
def fake_services(tmp_path: Path) -> Path:
    root = tmp_path / "fakes"
    for name, source in _FAKES.items():
        package = root / "edgecache" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text('"""A stand-in for tests."""\n')
        (package / "__main__.py").write_text(textwrap.dedent(source))
    return root


class _Up:
    """``edgecache up`` as a subprocess, the way scripts and the e2e tests run it."""

    def __init__(self, data_dir: Path, fakes: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
        env |= {
            "PYTHONPATH": str(fakes),
            "EDGECACHE_CACHENODE__HEARTBEAT_S": "0.2",
            "EDGECACHE_CACHENODE__CAPACITY_BYTES": str(5 * 1024**3),
        }
        self.process = subprocess.Popen(
            [
                str(EDGECACHE),
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--ready-timeout",
                "60",
                "--admin-port",  # not the default 14000: other stacks on this machine may hold it
                str(free_port()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        self.ready = self.process.stdout.readline()
        if not self.ready.startswith(render.READY_PREFIX):
            self.process.kill()
            pytest.fail(f"no readiness line: {self.ready!r}\n{self.process.communicate()}")
        self.banner = [self.ready]
        while line := self.process.stdout.readline():
            self.banner.append(line)
            if "Ctrl-C" in line:
                break

    def value(self, label: str) -> str:
        for line in self.banner:
            if line.strip().startswith(label):
                return line.strip()[len(label) :].split()[0]
        raise KeyError(label)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return self.process.returncode, err


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_up_runs_supervises_and_stops_the_stack(tmp_path: Path, fake_services: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    up = _Up(data_dir, fake_services, port)
    try:
        assert re.fullmatch(
            rf"{render.READY_PREFIX} endpoint=http://127.0.0.1:{port} nats=nats://\S+\n", up.ready
        )
        access = up.value("access key")
        # the files up leaves behind, and the config the services got
        assert _mode(data_dir / datadir.CREDENTIALS_FILE) == 0o600
        assert _mode(data_dir / datadir.CONFIG_FILE) == 0o600
        config = load_config(data_dir / datadir.CONFIG_FILE, env={})
        assert config.gateway.port == port
        assert config.gateway.access_key == access
        assert config.cachenode.heartbeat_s == 0.2
        assert config.data_dir == str(data_dir.resolve())
        assert (data_dir / "origin").is_dir()
        assert up.value("origin") == "file:"
        assert f"  origin       file: {data_dir.resolve() / 'origin'}\n" in up.banner
        children = _children_of(up.process.pid)
        assert len(children) == 5  # nats-server and four services

        # status finds the NATS through the data dir and sees the (fake) node via the federator
        def node_listed() -> bool:
            result = subprocess.run(
                [str(EDGECACHE), "status", "--data-dir", str(data_dir)],
                capture_output=True,
                text=True,
            )
            return (
                result.returncode == 0
                and "fake-node" in result.stdout
                and "5.0 GiB" in result.stdout
            )

        _wait(node_listed, timeout_s=20)

        # a child killed behind our back is restarted
        gateway = next(
            p for p in children if "edgecache.gateway" in Path(f"/proc/{p}/cmdline").read_text()
        )
        os.kill(gateway, signal.SIGKILL)
        _wait(
            lambda: (
                len(_children_of(up.process.pid)) == 5
                and gateway not in _children_of(up.process.pid)
            )
        )
        code, err = up.stop()
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert code == 0, err
    assert "gateway exited with signal SIGKILL" in err
    assert all(not Path(f"/proc/{p}").exists() for p in children)

    # a second run reuses the credentials
    again = _Up(data_dir, fake_services, free_port())
    try:
        assert again.value("access key") == access
        assert "(new" not in "".join(again.banner)
    finally:
        code, err = again.stop()
    assert code == 0, err


def test_one_ctrl_c_delivered_twice_is_one_clean_stop(tmp_path: Path, fake_services: Path) -> None:
    """Under `make up` a Ctrl-C reaches `up` from the terminal and again from `uv run`."""
    up = _Up(tmp_path / "data", fake_services, free_port())
    try:
        up.process.send_signal(signal.SIGINT)
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=60)
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert up.process.returncode == 0, err
    assert "killing" not in err and "stopped" in err


def test_a_second_ctrl_c_later_kills_at_once(tmp_path: Path, fake_services: Path) -> None:
    up = _Up(tmp_path / "data", fake_services, free_port())
    try:
        for child in _children_of(up.process.pid):  # children that ignore SIGTERM
            if "edgecache.federator" in Path(f"/proc/{child}/cmdline").read_text():
                os.kill(child, signal.SIGSTOP)
        up.process.send_signal(signal.SIGINT)
        time.sleep(up_mod.SECOND_SIGNAL_AFTER_S + 0.3)
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=8)  # well under the 10 s stop timeout
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert "asked to stop at once: killing it" in err


def test_up_refuses_a_busy_port(tmp_path: Path, runner: CliRunner) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = runner.invoke(cli.main, ["up", "--data-dir", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} is in use" in result.output
