"""Legacy algorithms: a per-tenant opt-in (`legacy_algorithms = true`).

Algorithms are agreed before the username is known, so the opt-in works in two places:
on the main listener a legacy tenant may sign with an `ssh-rsa` (SHA-1) user key, nobody
else may; the optional `legacy_listen` listener also offers diffie-hellman-group14-sha1,
ssh-rsa host key signatures and hmac-sha1, and only legacy tenants may log in there
(the others' right password or key is refused and counts toward a ban).

Clients restricted to the legacy algorithms: asyncssh and OpenSSH `sftp`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from ingestd.config import TenantConfig
from ingestd.sources.sftp.defender import DefenderConfig
from ingestd.sources.sftp.settings import SftpConfig
from tests.sources.sftp.harness import (
    PASSWORD,
    ServerThread,
    asyncssh_connect,
    make_config,
    openssh_sftp,
)

# group14-sha1 is finite-field Diffie-Hellman, which cryptography deprecates (a warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Diffie-Hellman over finite fields:cryptography.utils.CryptographyDeprecationWarning"
)

# Nothing newer than SHA-1 anywhere but the cipher (with AES-CTR the MAC is really used).
LEGACY_ONLY = {
    "kex_algs": ["diffie-hellman-group14-sha1"],
    "server_host_key_algs": ["ssh-rsa"],
    "mac_algs": ["hmac-sha1"],
    "encryption_algs": ["aes128-ctr"],
}
OPENSSH_LEGACY_ONLY = (
    "-o", "KexAlgorithms=diffie-hellman-group14-sha1",
    "-o", "HostKeyAlgorithms=ssh-rsa",
    "-o", "MACs=hmac-sha1",
    "-o", "Ciphers=aes128-ctr",
    "-o", "PubkeyAcceptedAlgorithms=ssh-rsa",  # the user key signs with SHA-1 too
)  # fmt: skip


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, asyncssh.SSHKey]:
    """An RSA user key (an old SIS's), as a file for OpenSSH and as an asyncssh key."""
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    path = tmp_path_factory.mktemp("rsakey") / "id_rsa"
    key.write_private_key(path)
    path.chmod(0o600)
    return path, key


@pytest.fixture
def legacy_server(
    sftp_server: Callable[..., ServerThread],
    password_hash: str,
    rsa_key: tuple[Path, asyncssh.SSHKey],
) -> Callable[..., ServerThread]:
    """A factory: both listeners; `alpha` (modern only) and `old` (legacy_algorithms), both
    with the password and the RSA key."""
    public = rsa_key[1].export_public_key().decode().strip()
    tenants = {
        "alpha": TenantConfig(id="alpha", password_hash=password_hash, authorized_keys=[public]),
        "old": TenantConfig(
            id="old", password_hash=password_hash, authorized_keys=[public], legacy_algorithms=True
        ),
    }

    def start(**overrides: Any) -> ServerThread:
        return sftp_server(make_config(legacy_listen="127.0.0.1:0", **overrides), tenants)

    return start


async def login(port: int, username: str, **options: Any) -> str:
    """'ok' (an SFTP session listed /), 'denied', 'no_algorithms' or 'dropped'."""
    try:
        connect = asyncssh_connect(port, username=username, **options)
        async with connect as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
        return "ok"
    except asyncssh.PermissionDenied:
        return "denied"
    except asyncssh.KeyExchangeFailed:
        return "no_algorithms"
    except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError):
        return "dropped"


def key_options(key: asyncssh.SSHKey, *signature_algs: str) -> dict[str, Any]:
    """asyncssh client options: public-key auth with `key`, signing with `signature_algs`."""
    options: dict[str, Any] = {
        "password": None,
        "client_keys": [key],
        "preferred_auth": "publickey",
    }
    if signature_algs:
        options["signature_algs"] = list(signature_algs)
    return options


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_legacy_listener_is_off_by_default(server: ServerThread) -> None:
    assert server.svc.legacy_port is None


def test_legacy_only_client_cannot_negotiate_with_the_main_listener(
    legacy_server: Callable[..., ServerThread],
    rsa_key: tuple[Path, asyncssh.SSHKey],
    local: Path,
) -> None:
    server = legacy_server()
    with capture_logs() as logs:
        outcomes = [
            asyncio.run(login(server.port, user, **LEGACY_ONLY)) for user in ("old", "alpha")
        ]
    # The client finds no common key exchange; rarely the server's disconnect (it found the
    # same) resets the socket before the client has read the server's KEXINIT: "dropped".
    assert set(outcomes) <= {"no_algorithms", "dropped"}
    assert "no_algorithms" in outcomes or outcomes == ["dropped", "dropped"]
    assert events(logs, "sftp.login") == events(logs, "sftp.login_failed") == []  # no auth
    (local / "u.csv").write_bytes(b"sourcedId\n")
    result = openssh_sftp(
        server.port, rsa_key[0], "put u.csv /u.csv", cwd=local, username="old",
        options=OPENSSH_LEGACY_ONLY,
    )  # fmt: skip
    assert result.returncode == 255, result.stderr  # ssh's own failure, before any login
    assert list(server.inbox("old").iterdir()) == []


def test_legacy_tenant_uploads_over_the_legacy_listener(
    legacy_server: Callable[..., ServerThread],
    rsa_key: tuple[Path, asyncssh.SSHKey],
    local: Path,
) -> None:
    server = legacy_server()
    assert server.svc.legacy_port not in (None, server.port)
    data = b"sourcedId,givenName\nu1,Ann\n"

    async def session() -> None:
        connect = asyncssh_connect(server.svc.legacy_port, username="old", **LEGACY_ONLY)
        async with connect as conn, conn.start_sftp_client() as sftp:
            assert conn.get_extra_info("recv_mac") == "hmac-sha1"
            async with sftp.open("/users.csv", "wb") as f:
                await f.write(data)
            assert (await sftp.stat("/users.csv")).size == len(data)

    with capture_logs() as logs:
        asyncio.run(session())
    assert (server.inbox("old") / "users.csv").read_bytes() == data
    assert [u.name for u in server.uploads] == ["/users.csv"]
    login_events = events(logs, "sftp.login")
    assert len(login_events) == 1
    assert login_events[0]["tenant"] == "old"
    assert login_events[0]["legacy"] is True

    # OpenSSH's sftp, SHA-1 everywhere including the user key's signature.
    (local / "classes.csv").write_bytes(b"sourcedId\nc1\n")
    result = openssh_sftp(
        server.svc.legacy_port, rsa_key[0], "put classes.csv /classes.csv", cwd=local,
        username="old", options=OPENSSH_LEGACY_ONLY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (server.inbox("old") / "classes.csv").read_bytes() == b"sourcedId\nc1\n"
    assert server.temp_files() == []


def test_other_tenants_are_refused_on_the_legacy_listener_and_count_toward_a_ban(
    legacy_server: Callable[..., ServerThread],
    rsa_key: tuple[Path, asyncssh.SSHKey],
    local: Path,
) -> None:
    server = legacy_server(defender=DefenderConfig(max_failures=3))
    legacy_port = server.svc.legacy_port
    (local / "u.csv").write_bytes(b"sourcedId\n")

    with capture_logs() as logs:
        # The right password, the right key: still not this listener's tenant.
        by_password = asyncio.run(login(legacy_port, "alpha", **LEGACY_ONLY))
        by_key = asyncio.run(login(legacy_port, "alpha", **LEGACY_ONLY, **key_options(rsa_key[1])))
        result = openssh_sftp(
            legacy_port, rsa_key[0], "put u.csv /u.csv", cwd=local, options=OPENSSH_LEGACY_ONLY
        )
    assert (by_password, by_key) == ("denied", "denied")
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert events(logs, "sftp.login") == []
    failures = events(logs, "sftp.login_failed")
    assert {e["reason"] for e in failures} == {"legacy_listener_not_allowed"}
    assert list(server.inbox("alpha").iterdir()) == []
    assert server.call(lambda: dict(server.svc.sessions)) == {}
    # Three failures: 127.0.0.1 is banned on both listeners (one defender).
    assert asyncio.run(login(server.port, "alpha", password=PASSWORD)) == "dropped"
    assert asyncio.run(login(legacy_port, "old", **LEGACY_ONLY)) == "dropped"


def test_legacy_tenant_may_also_use_the_main_listener(
    legacy_server: Callable[..., ServerThread],
) -> None:
    server = legacy_server()
    assert asyncio.run(login(server.port, "old")) == "ok"


def test_sha1_user_signature_only_for_the_legacy_tenant_on_the_main_listener(
    legacy_server: Callable[..., ServerThread],
    rsa_key: tuple[Path, asyncssh.SSHKey],
) -> None:
    server = legacy_server()
    key = rsa_key[1]
    with capture_logs() as logs:
        refused = asyncio.run(login(server.port, "alpha", **key_options(key, "ssh-rsa")))
    assert refused == "denied"
    assert events(logs, "sftp.login") == []  # the key was fine when offered: still no login
    assert [e["reason"] for e in events(logs, "sftp.login_failed")] == [
        "sha1_signature_not_allowed"
    ]
    assert server.call(lambda: dict(server.svc.sessions)) == {}

    with capture_logs() as logs:
        accepted = asyncio.run(login(server.port, "old", **key_options(key, "ssh-rsa")))
    assert accepted == "ok"
    [event] = events(logs, "sftp.login")
    assert (event["tenant"], event["method"], event["legacy"]) == ("old", "publickey", True)

    # The same key signing with SHA-2 is fine for everyone, and not a legacy login.
    with capture_logs() as logs:
        modern = asyncio.run(login(server.port, "alpha", **key_options(key, "rsa-sha2-256")))
    assert modern == "ok"
    [event] = events(logs, "sftp.login")
    assert event["tenant"] == "alpha" and "legacy" not in event

    # (OpenSSH clients honour the server-sig-algs the main listener advertises, which has no
    # ssh-rsa, and never send it there: they need the legacy listener. Clients that ignore
    # server-sig-algs, such as SSH.NET before 2023, send ssh-rsa as asyncssh does above.)


def test_legacy_listen_is_checked_like_listen() -> None:
    assert SftpConfig().legacy_address is None
    assert SftpConfig(legacy_listen="[::1]:2223").legacy_address == ("::1", 2223)
    with pytest.raises(ValidationError):
        SftpConfig(legacy_listen="2223")
