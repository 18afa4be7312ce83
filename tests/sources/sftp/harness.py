"""Test harness: the real SFTP server in a thread of its own, and the three clients.

`ServerThread` runs an `SftpService` (127.0.0.1, port 0) on an event loop in a
background thread. Clients run in the test's thread: asyncssh in `asyncio.run`,
paramiko and the OpenSSH binaries synchronously, so client and server never share a
loop (as in production, where the client is another machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import paramiko

from ingestd.config import TenantConfig
from ingestd.sources.sftp.defender import DefenderConfig
from ingestd.sources.sftp.jail import TEMP_PREFIX, CompletedUpload
from ingestd.sources.sftp.server import SftpService
from ingestd.sources.sftp.settings import SftpConfig

PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "Tr0ub4dor&3"
SECRET = b"sourcedId,givenName\nu1,Only-Beta-May-See-This\n"
STATE_SECRET = b"not for any tenant\n"
OUTSIDE_SECRET = b"beside the state dir\n"
OUTSIDE_NAME = "outside.txt"

SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "IdentityAgent=none",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
]  # fmt: skip


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_config(**overrides: Any) -> SftpConfig:
    """An SftpConfig for tests: 127.0.0.1 port 0, no keepalive, no disk floor, a lenient
    defender (each test has its own server; the ban tests set their own), `overrides`."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "min_free_bytes": 0,
        "login_timeout_seconds": 10,
        "keepalive_seconds": 0,
        "defender": DefenderConfig(max_failures=50),
    }
    values.update(overrides)
    return SftpConfig(**values)


@dataclass
class ServerThread:
    """One running SftpService and the thread whose loop runs it."""

    config: SftpConfig
    state_dir: Path
    tenants: dict[str, TenantConfig]
    uploads: list[CompletedUpload] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    svc: SftpService | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="sftp-server", daemon=True)
        self.thread.start()
        self.svc = SftpService(
            config=self.config,
            state_dir=self.state_dir,
            tenants=self.tenants,
            on_upload=self.uploads.append,  # list.append is atomic: safe from the loop thread
        )
        self.run(self.svc.start())

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn(*args)` on the server's loop (the service is not thread-safe)."""

        async def wrapper() -> Any:
            return fn(*args)

        return self.run(wrapper())

    @property
    def port(self) -> int:
        return self.svc.port

    def inbox(self, tenant: str = "alpha") -> Path:
        return self.state_dir / "inbox" / tenant

    def stop(self) -> None:
        """Stop the service, cancel what is left on its loop, end the thread."""
        if self.thread is None:
            return
        try:
            if self.svc is not None and self.loop.is_running():
                self.run(self.svc.stop(grace_seconds=0), timeout=15)
        finally:
            if self.loop.is_running():
                with contextlib.suppress(Exception):
                    self.run(_drain(self.loop), timeout=15)
                self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=15)
            assert not self.thread.is_alive(), "the server thread did not stop"
            self.loop.close()
            self.thread = None

    # --- what lies outside the jail -----------------------------------------------------

    def outside_snapshot(self, tenant: str = "alpha") -> dict[str, tuple]:
        """The state dir (except `tenant`'s inbox) and the file beside it, as they are now.

        Per path: mode, size, mtime, link count, symlink target and (small files) content.
        """
        jail = self.inbox(tenant)
        top = self.state_dir.parent
        beside = top / OUTSIDE_NAME
        snap: dict[str, tuple] = {}
        if beside.exists():
            st = beside.lstat()
            snap[OUTSIDE_NAME] = (st.st_mode, st.st_size, st.st_mtime_ns, beside.read_bytes())
        for folder, dirs, files in os.walk(self.state_dir):
            here = Path(folder)
            if here == jail:
                dirs[:] = []
                continue
            for name in dirs + files:
                path = here / name
                if path == jail:
                    continue
                st = path.lstat()
                link = os.readlink(path) if path.is_symlink() else None
                content = None
                if path.is_file() and not path.is_symlink() and st.st_size < 1 << 16:
                    content = path.read_bytes()
                snap[str(path.relative_to(top))] = (
                    st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, link, content,
                )  # fmt: skip
        return snap

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the server holds no connection (its logout logged, counters released)."""
        return wait_for(lambda: self.call(lambda: not self.svc.connections), timeout)

    def temp_files(self) -> list[Path]:
        """Upload temp files anywhere in the inbox tree."""
        return sorted(self.state_dir.joinpath("inbox").rglob(f"{TEMP_PREFIX}*"))


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Let closing connections finish, then cancel whatever task is left."""
    me = asyncio.current_task()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not pending:
            break
        await asyncio.sleep(0.05)
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


# --- clients ------------------------------------------------------------------------------


def asyncssh_connect(
    port: int, username: str = "alpha", password: str | None = PASSWORD, **kwargs: Any
) -> Any:
    """asyncssh.connect(...) to the test server: password auth only, no host key check."""
    options: dict[str, Any] = {
        "username": username,
        "password": password,
        "known_hosts": None,
        "client_keys": None,
        "agent_path": None,
        "config": None,
        "preferred_auth": "password",
        "login_timeout": 15,
    }
    options.update(kwargs)
    return asyncssh.connect("127.0.0.1", port, **options)


@contextlib.contextmanager
def paramiko_sftp(
    port: int, username: str = "alpha", password: str = PASSWORD
) -> Iterator[paramiko.SFTPClient]:
    """A paramiko SFTP client logged in with a password; closed on exit."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username=username, password=password)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        transport.close()


def openssh_sftp(
    port: int,
    key: Path,
    commands: str,
    *,
    cwd: Path,
    username: str = "alpha",
    timeout: float = 120,
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """OpenSSH `sftp -b` with key auth; commands run from `cwd` (for relative local paths)."""
    batch = cwd / f"batch-{time.monotonic_ns()}.txt"
    batch.write_text("".join(line.strip() + "\n" for line in commands.strip().splitlines()))
    return subprocess.run(
        ["sftp", "-b", str(batch), "-i", str(key), "-P", str(port), *SSH_OPTIONS, *options,
         f"{username}@127.0.0.1"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def ssh_command(
    port: int,
    key: Path,
    options: tuple[str, ...] = (),
    command: tuple[str, ...] = (),
    *,
    username: str = "alpha",
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """The OpenSSH `ssh` client with key auth: `ssh [options] alpha@127.0.0.1 [command]`."""
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), *SSH_OPTIONS, *options,
         f"{username}@127.0.0.1", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
