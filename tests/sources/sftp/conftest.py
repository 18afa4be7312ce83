"""Fixtures: the real SFTP server on 127.0.0.1 (a thread with its own loop), keys, tenants.

`sftp_server(config=None, tenants_=None)` starts an `SftpService` on port 0 with a fresh
state dir under tmp_path and stops it (service, loop, thread) when the test ends,
whatever happened. Around the jail it lays sentinels the tests check afterwards:
another tenant's file (`inbox/beta/secret.csv`), a file in the state dir itself and
one beside it; `ServerThread.outside_snapshot()` records them and everything else
outside alpha's inbox.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.config import TenantConfig
from ingestd.sources.sftp.auth import hash_password
from ingestd.sources.sftp.hostkeys import HOST_KEY_DIR, load_host_keys
from ingestd.sources.sftp.settings import SftpConfig
from tests.sources.sftp.harness import (
    OUTSIDE_NAME,
    OUTSIDE_SECRET,
    PASSWORD,
    SECRET,
    STATE_SECRET,
    ServerThread,
    make_config,
)


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture(scope="session")
def host_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host keys made once (RSA 3072 is slow to generate) and copied into each state dir."""
    state = tmp_path_factory.mktemp("hostkeys")
    load_host_keys(state)
    return state / HOST_KEY_DIR


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An ed25519 key pair made by OpenSSH's ssh-keygen: (private key path, .pub line)."""
    folder = tmp_path_factory.mktemp("clientkey")
    key = folder / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sis@school", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return key, key.with_name("id_ed25519.pub").read_text().strip()


@pytest.fixture
def tenants(password_hash: str, client_key: tuple[Path, str]) -> dict[str, TenantConfig]:
    """alpha (password and the ssh-keygen key) and beta (password)."""
    return {
        "alpha": TenantConfig(
            id="alpha", password_hash=password_hash, authorized_keys=[client_key[1]]
        ),
        "beta": TenantConfig(id="beta", password_hash=password_hash),
    }


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The client side's folder (files to upload, batch files), apart from the state dir."""
    folder = tmp_path / "local"
    folder.mkdir()
    return folder


@pytest.fixture
def sftp_server(
    tmp_path: Path, host_key_dir: Path, tenants: dict[str, TenantConfig]
) -> Iterator[Callable[..., ServerThread]]:
    """A factory: `sftp_server(config=None, tenants_=None)` starts a server; all stop after."""
    servers: list[ServerThread] = []

    def start(
        config: SftpConfig | None = None, tenants_: dict[str, TenantConfig] | None = None
    ) -> ServerThread:
        state_dir = tmp_path / f"state{len(servers) or ''}"
        shutil.copytree(host_key_dir, state_dir / HOST_KEY_DIR)
        # Sentinels: another tenant's file, a file in the state dir, one beside it.
        (state_dir / "inbox" / "beta").mkdir(parents=True)
        (state_dir / "inbox" / "beta" / "secret.csv").write_bytes(SECRET)
        (state_dir / "secret-state.txt").write_bytes(STATE_SECRET)
        (tmp_path / OUTSIDE_NAME).write_bytes(OUTSIDE_SECRET)
        server = ServerThread(
            config=config or make_config(),
            state_dir=state_dir,
            tenants=tenants if tenants_ is None else tenants_,
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        errors = []
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # stop every server first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def server(sftp_server: Callable[..., ServerThread]) -> ServerThread:
    """The default server: tenants alpha and beta, make_config()."""
    return sftp_server()
