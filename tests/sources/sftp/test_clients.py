"""Three SFTP clients nobody here wrote, against the real server on 127.0.0.1.

OpenSSH's `sftp` (batch mode, ed25519 key made by ssh-keygen), paramiko (password) and
asyncssh's client (password) each: put, stat right after put, ls, overwrite by put,
by rename and by posix-rename, WinSCP's `name.filepart` then rename over `name`,
a 200 MB random file (sha256 of the inbox file == source == the on_upload callback's),
and the fixed 0640 mode whatever mode the client asks for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from ingestd.config import TenantConfig
from tests.sources.sftp.harness import (
    TEMP_PREFIX,
    ServerThread,
    asyncssh_connect,
    make_config,
    openssh_sftp,
    paramiko_sftp,
    sha256_file,
)

BIG_BYTES = 200 << 20


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """200 MB of random bytes (made once) and their sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with path.open("wb") as f:
        for _ in range(BIG_BYTES >> 20):
            f.write(os.urandom(1 << 20))
    return path, sha256_file(path)


def csv_bytes(tag: str, rows: int = 50) -> bytes:
    lines = ["sourcedId,status,givenName"] + [f"{tag}-{i},active,Name{i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def make_local_files(local: Path) -> dict[str, bytes]:
    """Distinct small CSVs in `local`, made 0777 so a mode-preserving put asks for it."""
    files = {
        "v1.csv": csv_bytes("v1"),
        "v2.csv": csv_bytes("v2", 60),
        "v3.csv": csv_bytes("v3", 70),
        "v4.csv": csv_bytes("v4", 80),
        "v5.csv": csv_bytes("v5", 90),
    }
    for name, data in files.items():
        (local / name).write_bytes(data)
        (local / name).chmod(0o777)
    return files


def assert_inbox(server: ServerThread, expected: dict[str, bytes]) -> None:
    """The inbox holds exactly `expected` (name -> bytes), all mode 0640, no temp file."""
    inbox = server.inbox()
    found = {p.name: p.read_bytes() for p in inbox.iterdir()}
    assert sorted(found) == sorted(expected)
    for name, data in expected.items():
        assert found[name] == data, name
        mode = stat.S_IMODE((inbox / name).stat().st_mode)
        assert mode == 0o640, f"{name}: {oct(mode)}"
    assert server.temp_files() == []


def assert_big(server: ServerThread, name: str, digest: str) -> None:
    path = server.inbox() / name
    assert path.stat().st_size == BIG_BYTES
    assert sha256_file(path) == digest
    reported = [u for u in server.uploads if u.name == f"/{name}"]
    assert len(reported) == 1
    assert reported[0].sha256 == digest
    assert reported[0].size == BIG_BYTES
    assert reported[0].path == path
    assert reported[0].tenant == "alpha"


def assert_client_uploads(
    server: ServerThread, files: dict[str, bytes], digest: str, more: dict[str, bytes]
) -> None:
    """What every client's session leaves: big.bin whole (then removed), the four files
    replaced by put, rename, posix-rename and WinSCP's .filepart rename, and `more`."""
    assert_big(server, "big.bin", digest)
    (server.inbox() / "big.bin").unlink()
    replaced = {
        "put.csv": files["v2.csv"],
        "renamed.csv": files["v3.csv"],
        "posix.csv": files["v4.csv"],
        "data.csv": files["v5.csv"],
    }
    assert_inbox(server, {**replaced, **more})


def test_openssh_sftp_with_key(
    server: ServerThread,
    client_key: tuple[Path, str],
    local: Path,
    big_file: tuple[Path, str],
) -> None:
    files = make_local_files(local)
    big, digest = big_file
    result = openssh_sftp(
        server.port,
        client_key[0],
        f"""
        put v1.csv /put.csv
        ls -l /put.csv
        put v2.csv /put.csv
        put v1.csv /renamed.csv
        put v3.csv /incoming.csv
        rename -l /incoming.csv /renamed.csv
        put v1.csv /posix.csv
        put v4.csv /incoming.csv
        rename /incoming.csv /posix.csv
        put v1.csv /data.csv
        put v5.csv /data.csv.filepart
        rename /data.csv.filepart /data.csv
        put -p v1.csv /preserved.csv
        chmod 4755 /preserved.csv
        put {big} /big.bin
        ls -la /
        """,
        cwd=local,
    )
    assert result.returncode == 0, result.stderr
    # `ls -l` right after the first put: the size is there.
    first_ls = result.stdout.split("sftp> ls -l /put.csv\n", 1)[1].splitlines()[0]
    assert first_ls.split()[4] == str(len(files["v1.csv"]))
    assert first_ls.startswith("-rw-r-----")
    listing = result.stdout.split("sftp> ls -la /\n", 1)[1]
    assert TEMP_PREFIX not in listing
    assert "secret" not in listing
    for name in ("put.csv", "renamed.csv", "posix.csv", "data.csv", "preserved.csv", "big.bin"):
        assert name in listing
    assert_client_uploads(server, files, digest, {"preserved.csv": files["v1.csv"]})


def test_paramiko_with_password(
    server: ServerThread, local: Path, big_file: tuple[Path, str]
) -> None:
    files = make_local_files(local)
    big, digest = big_file
    with paramiko_sftp(server.port) as sftp:
        attrs = sftp.put(str(local / "v1.csv"), "/put.csv")  # paramiko stats after put
        assert attrs.st_size == len(files["v1.csv"])
        assert sftp.stat("/put.csv").st_size == len(files["v1.csv"])
        assert stat.S_IMODE(sftp.stat("/put.csv").st_mode) == 0o640
        sftp.put(str(local / "v2.csv"), "/put.csv")

        sftp.put(str(local / "v1.csv"), "/renamed.csv")
        sftp.put(str(local / "v3.csv"), "/incoming.csv")
        sftp.rename("/incoming.csv", "/renamed.csv")  # SSH_FXP_RENAME over an existing file

        sftp.put(str(local / "v1.csv"), "/posix.csv")
        sftp.put(str(local / "v4.csv"), "/incoming.csv")
        sftp.posix_rename("/incoming.csv", "/posix.csv")

        sftp.put(str(local / "v1.csv"), "/data.csv")  # WinSCP: upload to .filepart, rename
        sftp.put(str(local / "v5.csv"), "/data.csv.filepart")
        sftp.rename("/data.csv.filepart", "/data.csv")

        with sftp.open("/chmod.csv", "w") as f:
            f.chmod(0o4777)  # fsetstat while open
            f.write(files["v1.csv"])
        sftp.chmod("/chmod.csv", 0o4755)  # setstat: accepted
        assert stat.S_IMODE(sftp.stat("/chmod.csv").st_mode) == 0o640

        attrs = sftp.put(str(big), "/big.bin")
        assert attrs.st_size == BIG_BYTES

        names = sftp.listdir("/")
        assert sorted(names) == sorted(
            ["put.csv", "renamed.csv", "posix.csv", "data.csv", "chmod.csv", "big.bin"]
        )
        for entry in sftp.listdir_attr("/"):
            assert stat.S_IMODE(entry.st_mode) == 0o640, entry.filename
    assert_client_uploads(server, files, digest, {"chmod.csv": files["v1.csv"]})


def test_asyncssh_with_password(
    server: ServerThread, local: Path, big_file: tuple[Path, str]
) -> None:
    files = make_local_files(local)
    big, digest = big_file

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(local / "v1.csv"), "/put.csv")
            assert (await sftp.stat("/put.csv")).size == len(files["v1.csv"])
            await sftp.put(str(local / "v2.csv"), "/put.csv")

            await sftp.put(str(local / "v1.csv"), "/renamed.csv")
            await sftp.put(str(local / "v3.csv"), "/incoming.csv")
            await sftp.rename("/incoming.csv", "/renamed.csv")  # SSH_FXP_RENAME

            await sftp.put(str(local / "v1.csv"), "/posix.csv")
            await sftp.put(str(local / "v4.csv"), "/incoming.csv")
            await sftp.posix_rename("/incoming.csv", "/posix.csv")

            await sftp.put(str(local / "v1.csv"), "/data.csv")
            await sftp.put(str(local / "v5.csv"), "/data.csv.filepart")
            await sftp.rename("/data.csv.filepart", "/data.csv")

            # Asks for 0777 (preserve) and setuid 04777 (open attrs), then chmod 4755.
            await sftp.put(str(local / "v1.csv"), "/preserved.csv", preserve=True)
            wanted = asyncssh.SFTPAttrs(permissions=0o4777)
            async with sftp.open("/setuid.csv", "wb", attrs=wanted) as f:
                await f.write(files["v2.csv"])
                # Atomic: while the upload is open the name is neither listed nor stat-able.
                assert "setuid.csv" not in await sftp.listdir("/")
                assert not await sftp.exists("/setuid.csv")
            await sftp.chmod("/setuid.csv", 0o4755)
            for name in ("preserved.csv", "setuid.csv"):
                assert (await sftp.stat(f"/{name}")).permissions & 0o7777 == 0o640

            await sftp.put(str(big), "/big.bin")
            assert (await sftp.stat("/big.bin")).size == BIG_BYTES

            names = await sftp.listdir("/")
            expected = ["put.csv", "renamed.csv", "posix.csv", "data.csv", "preserved.csv"]
            assert sorted(names) == sorted([".", "..", *expected, "setuid.csv", "big.bin"])

    asyncio.run(session())
    assert_client_uploads(
        server, files, digest, {"preserved.csv": files["v1.csv"], "setuid.csv": files["v2.csv"]}
    )


def test_on_upload_reports_every_completed_file(server: ServerThread, local: Path) -> None:
    """One CompletedUpload per closed upload, with the client's name and the bytes' sha256."""
    files = make_local_files(local)
    with paramiko_sftp(server.port) as sftp:
        for name in files:
            sftp.put(str(local / name), f"/{name}")
    reported = {u.name: u for u in server.uploads}
    assert sorted(reported) == sorted(f"/{n}" for n in files)
    for name, data in files.items():
        upload = reported[f"/{name}"]
        assert upload.size == len(data)
        assert upload.sha256 == sha256_file(local / name)
        assert upload.path == server.inbox() / name
        assert upload.tenant == "alpha"


def test_keyboard_interactive_password(server: ServerThread, local: Path) -> None:
    """Some clients only send the password through keyboard-interactive."""
    (local / "k.csv").write_bytes(csv_bytes("k"))

    async def session() -> None:
        connect = asyncssh_connect(server.port, preferred_auth="keyboard-interactive")
        async with connect as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(local / "k.csv"), "/k.csv")

    asyncio.run(session())
    assert_inbox(server, {"k.csv": csv_bytes("k")})


LOAD_TENANTS = 100
LOAD_FILES = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments", "demo")


def test_load_100_tenants_upload_7_files_each(sftp_server: Callable[..., ServerThread]) -> None:
    """100 concurrent sessions, one per tenant, 7 small CSVs each, one client event loop.

    Key auth: 100 argon2id password checks take ~18 s of CPU on 2 vCPU (~0.18 s each,
    `hash_password`'s parameters), which would measure argon2, not the SFTP server.
    """
    keys = {f"school{i:03d}": asyncssh.generate_private_key("ssh-ed25519") for i in range(100)}
    tenants = {
        tenant: TenantConfig(id=tenant, authorized_keys=[key.export_public_key().decode().strip()])
        for tenant, key in keys.items()
    }
    server = sftp_server(make_config(max_connections=400, max_connections_per_ip=400), tenants)
    payload = {
        (tenant, name): csv_bytes(f"{tenant}-{name}", rows=80 + j)
        for tenant in tenants
        for j, name in enumerate(LOAD_FILES)
    }
    started = asyncio.Event()
    active = 0
    peak = 0

    async def one(tenant: str) -> None:
        nonlocal active, peak
        connect = asyncssh_connect(
            server.port,
            username=tenant,
            password=None,
            client_keys=[keys[tenant]],
            preferred_auth="publickey",
            login_timeout=30,
        )
        async with connect as conn, conn.start_sftp_client() as sftp:
            active += 1
            peak = max(peak, active)
            if active == LOAD_TENANTS:
                started.set()
            await asyncio.wait_for(started.wait(), 30)  # all 100 sessions open at once
            for name in LOAD_FILES:
                async with sftp.open(f"/{name}.csv", "wb") as f:
                    await f.write(payload[tenant, name])
            assert sorted(await sftp.listdir("/")) == sorted(
                [".", "..", *(f"{n}.csv" for n in LOAD_FILES)]
            )

    async def everyone() -> list[BaseException | None]:
        return await asyncio.wait_for(
            asyncio.gather(*(one(t) for t in tenants), return_exceptions=True), timeout=60
        )

    results = asyncio.run(everyone())
    errors = [r for r in results if r is not None]
    assert errors == []
    assert peak == LOAD_TENANTS
    assert len(server.uploads) == LOAD_TENANTS * len(LOAD_FILES)
    by_key = {(u.tenant, u.name): u for u in server.uploads}
    assert len(by_key) == len(payload)
    for (tenant, name), data in payload.items():
        path = server.inbox(tenant) / f"{name}.csv"
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        upload = by_key[tenant, f"/{name}.csv"]
        assert upload.sha256 == hashlib.sha256(data).hexdigest()
        assert upload.size == len(data)
    assert server.temp_files() == []
