"""``connect_nats`` against a real nats-server with authorization (the users of ``edgecache
up``, one cache node nkey): refused credentials raise at once with a message naming the
credential, an unreachable server is still waited for, and a service given refused
credentials exits with that message instead of retrying for ever."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.common.config import NatsConfig
from edgecache.common.runtime import NatsCredentialsError, connect_nats
from edgecache.launcher.natsauth import IDENTITIES, authorization_block
from edgecache.launcher.natsserver import NatsServer, free_port
from edgecache.launcher.sitekey import SiteKey, load_or_create_user_key

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORDS = {name: secrets.token_hex(16) for name in IDENTITIES}
REFUSED_WITHIN_S = 2.0  # at once: one round trip, no retry (retries come every 0.5 s)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SiteKey, Path]]:
    """A node key the server lists and one it does not, with their seed files."""
    root = tmp_path_factory.mktemp("nkeys")
    out = {}
    for name in ("listed", "unlisted"):
        seed_file = root / f"{name}.nk"
        out[name] = (load_or_create_user_key(seed_file)[0], seed_file)
    return out


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[SiteKey, Path]]
) -> Iterator[NatsServer]:
    root = tmp_path_factory.mktemp("auth-nats")
    block = authorization_block(PASSWORDS, nkeys={"cachenode": [keys["listed"][0].public]})
    srv = NatsServer(root, authorization=block)
    srv.start(log_file=root / "nats-server.log")
    yield srv
    srv.stop()


async def _refused(config: NatsConfig) -> str:
    """Connect with ``config``; the message of the ``NatsCredentialsError`` it raises."""
    started = time.perf_counter()
    with pytest.raises(NatsCredentialsError) as caught:
        await connect_nats(config, name="test-credentials")
    assert time.perf_counter() - started < REFUSED_WITHIN_S
    return str(caught.value)


async def test_the_right_credentials_connect(
    server: NatsServer, keys: dict[str, tuple[SiteKey, Path]]
) -> None:
    for config in (
        NatsConfig(url=server.url, user="gateway", password=PASSWORDS["gateway"]),
        NatsConfig(url=server.url, nkey_seed_file=str(keys["listed"][1])),
    ):
        nc = await connect_nats(config, name="test-credentials")
        assert nc.is_connected
        await nc.close()


async def test_a_wrong_password_raises_at_once_naming_the_user(server: NatsServer) -> None:
    message = await _refused(NatsConfig(url=server.url, user="gateway", password="guess"))
    assert "user 'gateway'" in message and "Authorization Violation" in message
    assert "guess" not in message
    message = await _refused(NatsConfig(url=server.url))
    assert "anonymous" in message


async def test_an_unlisted_nkey_raises_at_once_naming_the_key_and_its_file(
    server: NatsServer, keys: dict[str, tuple[SiteKey, Path]]
) -> None:
    key, seed_file = keys["unlisted"]
    message = await _refused(NatsConfig(url=server.url, nkey_seed_file=str(seed_file)))
    assert key.public in message and str(seed_file) in message
    assert key.seed not in message


async def test_a_missing_or_broken_seed_file_raises_naming_it(
    server: NatsServer, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.nk"
    assert str(missing) in await _refused(NatsConfig(url=server.url, nkey_seed_file=str(missing)))
    broken = tmp_path / "broken.nk"
    broken.write_text("SUnotaseed\n")
    message = await _refused(NatsConfig(url=server.url, nkey_seed_file=str(broken)))
    assert str(broken) in message and "no nkey seed" in message


async def test_an_unreachable_server_is_still_waited_for(tmp_path: Path) -> None:
    """No server on the port: connect_nats keeps trying (each refused TCP connection is
    reported to the watchers); once a server listens there, it connects."""
    port = free_port()
    failures = asyncio.Queue[Exception]()

    class Watcher:
        def disconnected(self) -> None: ...

        def reconnected(self) -> None: ...

        def error(self, exc: Exception) -> None:
            failures.put_nowait(exc)

    config = NatsConfig(url=f"nats://127.0.0.1:{port}", connect_timeout_s=1.0)
    connecting = asyncio.ensure_future(
        connect_nats(config, name="test-credentials", watchers=[Watcher()])
    )
    srv = NatsServer(tmp_path / "late", port=port)
    try:
        for _ in range(2):  # two refused attempts: it is retrying, not giving up
            exc = await asyncio.wait_for(failures.get(), 10)
            assert isinstance(exc, OSError | asyncio.TimeoutError), repr(exc)
        assert not connecting.done()
        srv.start(log_file=tmp_path / "late.log")
        nc = await asyncio.wait_for(connecting, 10)
        assert nc.is_connected
        await nc.close()
    finally:
        connecting.cancel()
        srv.stop()


async def test_a_service_refused_by_nats_exits_with_a_message_naming_the_credential(
    server: NatsServer, tmp_path: Path
) -> None:
    config = tmp_path / "edgecache.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[nats]\nurl = "{server.url}"\nuser = "cachenode"\npassword = "stale"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgecache.cachenode",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, stderr.decode()[-2000:]
    last = stderr.decode().strip().splitlines()[-1]
    print(f"\n{last}")
    assert last.startswith("edgecache cachenode: NATS at ") and "user 'cachenode'" in last, last
    assert "stale" not in last
