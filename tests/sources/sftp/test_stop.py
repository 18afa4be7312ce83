"""Stopping the server: no new connections, uploads in flight may finish, then all close."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncssh
import pytest

from ingestd.config import TenantConfig
from ingestd.sources.sftp.auth import hash_password
from ingestd.sources.sftp.server import SftpService
from ingestd.sources.sftp.settings import SftpConfig


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password("a long enough password")


def _service(tmp_path: Path, password_hash: str, host_keys: Path | None = None) -> SftpService:
    state = tmp_path / "state"
    if host_keys is not None:
        shutil.copytree(host_keys, state / "host_keys")
    tenants = {"alpha": TenantConfig(id="alpha", password_hash=password_hash)}
    return SftpService(SftpConfig(listen="127.0.0.1:0"), state, tenants)


def _connect(port: int) -> asyncssh.SSHClientConnection:
    return asyncssh.connect(
        "127.0.0.1", port, username="alpha", password="a long enough password",
        known_hosts=None, preferred_auth="password",
    )  # fmt: skip


def test_an_upload_in_flight_finishes_during_stop(tmp_path: Path, password_hash: str) -> None:
    async def scenario() -> None:
        service = _service(tmp_path, password_hash)
        await service.start()
        port = service.port
        try:
            async with _connect(port) as conn, conn.start_sftp_client() as sftp:
                f = await sftp.open("/users.csv", "wb")
                await f.write(b"sourcedId\n")
                stopping = asyncio.create_task(service.stop(grace_seconds=20))
                await asyncio.sleep(0.5)
                assert not stopping.done()  # it waits for the upload
                with pytest.raises((OSError, asyncssh.Error)):
                    async with _connect(port):
                        pass  # no new connections while stopping
                await f.write(b"u1\n", 10)
                await f.close()
            await asyncio.wait_for(stopping, 20)
        finally:
            await service.stop(0)
        inbox = tmp_path / "state" / "inbox" / "alpha"
        assert (inbox / "users.csv").read_bytes() == b"sourcedId\nu1\n"

    asyncio.run(scenario())


def test_stop_cuts_an_upload_after_the_grace_and_leaves_nothing(
    tmp_path: Path, password_hash: str
) -> None:
    async def scenario() -> None:
        service = _service(tmp_path, password_hash)
        await service.start()
        try:
            async with _connect(service.port) as conn:
                sftp = await conn.start_sftp_client()
                f = await sftp.open("/users.csv", "wb")
                await f.write(b"sourcedId\n")
                await service.stop(grace_seconds=0.5)
                await conn.wait_closed()
                del f
        finally:
            await service.stop(0)
        inbox = tmp_path / "state" / "inbox" / "alpha"
        assert sorted(p.name for p in inbox.iterdir()) == []

    asyncio.run(scenario())
