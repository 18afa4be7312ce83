"""The jail and the door, attacked with real clients against the real server on 127.0.0.1.

Every path test asserts the refusal and that nothing outside alpha's inbox was touched
or disclosed: `ServerThread.outside_snapshot()` (beta's inbox with `secret.csv`, the
state dir with `secret-state.txt` and the host keys, `outside.txt` beside it) is equal
before and after, and no listing ever names anything that lives out there.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from ingestd.config import TenantConfig
from ingestd.sources.sftp import server as server_module
from ingestd.sources.sftp.defender import DefenderConfig
from tests.sources.sftp.harness import (
    OUTSIDE_NAME,
    PASSWORD,
    SECRET,
    STATE_SECRET,
    WRONG_PASSWORD,
    ServerThread,
    asyncssh_connect,
    make_config,
    openssh_sftp,
    paramiko_sftp,
    ssh_command,
    wait_for,
)

# Names that live outside alpha's jail: no listing alpha gets may show one of them.
OUTSIDE_NAMES = {"secret.csv", "secret-state.txt", OUTSIDE_NAME, "beta", "inbox", "host_keys"}

# Errors a refused request may raise on the client: the request reached the server and
# got an SFTP status back (never a dropped session).
REFUSED = (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied, asyncssh.SFTPFailure)


def outside_files(server: ServerThread) -> list[str]:
    """Paths to files outside alpha's jail, relative and absolute, as a client may write them."""
    beta_secret = server.inbox("beta") / "secret.csv"
    return [
        "../beta/secret.csv",
        "/../beta/secret.csv",
        "../../inbox/beta/secret.csv",
        "./../beta/./secret.csv",
        "//..//..//inbox//beta//secret.csv",
        "sub/../../beta/secret.csv",
        "../../secret-state.txt",
        "/../../secret-state.txt",
        f"../../../{OUTSIDE_NAME}",
        "..\\beta\\secret.csv",
        str(beta_secret),
        str(server.state_dir / "secret-state.txt"),
        str(server.state_dir.parent / OUTSIDE_NAME),
        "/etc/passwd",
    ]


def outside_dirs(server: ServerThread) -> list[str]:
    """Paths to folders outside alpha's jail."""
    return [
        "..",
        "/..",
        "../..",
        "../../..",
        "/../../",
        "../beta",
        "/../beta",
        "../../inbox",
        str(server.inbox("beta")),
        str(server.state_dir),
        str(server.state_dir / "host_keys"),
        "/etc",
        "/tmp",
    ]


def jail_tree(server: ServerThread) -> dict[str, str]:
    """alpha's inbox as {relative path: kind}, where kind is file, dir or symlink."""
    out = {}
    for path in sorted(server.inbox().rglob("*")):
        kind = "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"
        out[str(path.relative_to(server.inbox()))] = kind
    return out


def assert_no_secret_in_jail(server: ServerThread) -> None:
    """No file in alpha's inbox holds bytes from outside; no symlink was made there."""
    for path in server.inbox().rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            data = path.read_bytes()
            assert SECRET not in data and STATE_SECRET not in data, path


async def attempt(coro: Any) -> Any:
    """The result of `coro`, or the exception it raised."""
    try:
        return await coro
    except Exception as exc:
        return exc


# --- paths: `..` and absolute paths in every operation ---------------------------------------


def test_dotdot_and_absolute_paths_asyncssh(server: ServerThread, local: Path) -> None:
    before = server.outside_snapshot()
    files = outside_files(server)
    dirs = outside_dirs(server)
    small = local / "small.csv"
    small.write_bytes(b"sourcedId\nmine\n")

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(small), "/mine.csv")
            root = sorted(await sftp.listdir("/"))
            assert root == [".", "..", "mine.csv"]

            # Reading operations first, while the jail holds only mine.csv.
            for path in files:
                for op in (sftp.stat, sftp.lstat):
                    result = await attempt(op(path))
                    assert isinstance(result, asyncssh.SFTPNoSuchFile), (op, path, result)
                result = await attempt(sftp.get(path, str(local / "got")))
                assert isinstance(result, REFUSED), (path, result)
                assert not (local / "got").exists() or (local / "got").read_bytes() == b""
                result = await attempt(sftp.readlink(path))
                assert isinstance(result, asyncssh.SFTPPermissionDenied), (path, result)
            for path in dirs:
                result = await attempt(sftp.listdir(path))
                if isinstance(result, Exception):
                    assert isinstance(result, asyncssh.SFTPNoSuchFile), (path, result)
                else:  # `..` above `/` is `/`: the jail itself, nothing else
                    assert sorted(result) == root, (path, result)
                    assert not OUTSIDE_NAMES & set(result)
            for path in files + dirs:
                virtual = await sftp.realpath(path)
                assert virtual == posixpath.normpath("/" + path.lstrip("/")), (path, virtual)
                assert ".." not in virtual.split("/")
            assert await sftp.realpath("..") == "/"
            assert await sftp.realpath("../../..") == "/"

            # Changing operations that must find nothing (the jail has only mine.csv).
            for path in files:
                result = await attempt(sftp.remove(path))
                assert isinstance(result, asyncssh.SFTPNoSuchFile), (path, result)
                result = await attempt(sftp.rename(path, "/stolen.csv"))
                assert isinstance(result, asyncssh.SFTPNoSuchFile), (path, result)
                result = await attempt(sftp.posix_rename(path, "/stolen.csv"))
                assert isinstance(result, asyncssh.SFTPNoSuchFile), (path, result)
                result = await attempt(sftp.symlink("/mine.csv", path))
                assert isinstance(result, asyncssh.SFTPPermissionDenied), (path, result)
                result = await attempt(sftp.link(path, "/hard.csv"))
                assert isinstance(result, asyncssh.SFTPPermissionDenied), (path, result)
                await attempt(sftp.chmod(path, 0o777))  # setstat: accepted and ignored
                await attempt(sftp.setstat(path, asyncssh.SFTPAttrs(uid=0, gid=0, size=0)))
            for path in dirs:
                result = await attempt(sftp.rmdir(path))
                assert isinstance(result, REFUSED), (path, result)
            assert sorted(await sftp.listdir("/")) == root

            # Writing operations: refused, or clamped inside the jail (`/..` is `/`).
            for path in files:
                await attempt(sftp.put(str(small), path))
                await sftp.put(str(small), "/move.csv")
                await attempt(sftp.rename("/move.csv", path))
                await sftp.put(str(small), "/move.csv")
                await attempt(sftp.posix_rename("/move.csv", path))
            for path in dirs:
                await attempt(sftp.mkdir(posixpath.join(path, "made-here")))

    asyncio.run(session())
    assert server.outside_snapshot() == before
    assert_no_secret_in_jail(server)
    # Whatever was accepted landed inside the jail, at `/` + the path normalized.
    landed = {"mine.csv", "move.csv"}
    landed |= {posixpath.normpath("/" + p.lstrip("/")).lstrip("/") for p in files}
    landed |= {posixpath.normpath("/" + p.lstrip("/") + "/made-here").lstrip("/") for p in dirs}
    tree = jail_tree(server)
    assert set(tree) <= landed, set(tree) - landed
    assert tree["secret-state.txt"] == "file"  # `../../secret-state.txt`: the jail's own
    assert tree[OUTSIDE_NAME] == "file"
    assert tree["made-here"] == "dir"  # `../made-here`
    assert server.temp_files() == []


def test_dotdot_and_absolute_paths_paramiko(server: ServerThread, local: Path) -> None:
    before = server.outside_snapshot()
    small = local / "small.csv"
    small.write_bytes(b"sourcedId\nmine\n")
    with paramiko_sftp(server.port) as sftp:
        sftp.put(str(small), "/mine.csv")
        for path in outside_dirs(server):
            try:
                names = sftp.listdir(path)
            except FileNotFoundError:
                continue
            assert names == ["mine.csv"], (path, names)
        for path in outside_files(server):
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
            with pytest.raises((PermissionError, FileNotFoundError)):  # paramiko stats first
                sftp.get(path, str(local / "got"))
            with pytest.raises(FileNotFoundError):
                sftp.remove(path)
            with pytest.raises(FileNotFoundError):
                sftp.rename(path, "/stolen.csv")
            with pytest.raises(FileNotFoundError):
                sftp.posix_rename(path, "/stolen.csv")
            with pytest.raises(PermissionError):
                sftp.symlink("/mine.csv", path)
            with pytest.raises(PermissionError):
                sftp.readlink(path)
            with pytest.raises(OSError):
                sftp.open(path, "r+")
            assert sftp.normalize(path) == posixpath.normpath("/" + path.lstrip("/"))
        with pytest.raises(OSError):
            sftp.rmdir("..")
        with pytest.raises(OSError):
            sftp.rmdir("../beta")
        sftp.chdir("../../..")
        assert sftp.getcwd() == "/"
        assert sftp.listdir(".") == ["mine.csv"]
    assert server.outside_snapshot() == before
    assert_no_secret_in_jail(server)
    assert sorted(jail_tree(server)) == ["mine.csv"]


def test_dotdot_and_absolute_paths_openssh(
    server: ServerThread, client_key: tuple[Path, str], local: Path
) -> None:
    before = server.outside_snapshot()
    (local / "small.csv").write_bytes(b"sourcedId\nmine\n")
    beta = server.inbox("beta")
    commands = ["put small.csv /mine.csv"]
    for path in ["..", "../beta", "/../..", str(beta), str(server.state_dir)]:
        commands += [f"-ls -la {path}", f"-cd {path}", "pwd", "cd /"]
    for path in ["../beta/secret.csv", str(beta / "secret.csv"), "../../secret-state.txt"]:
        commands += [
            f"-get {path} got.csv",
            f"-put small.csv {path}",
            f"-rm {path}",
            f"-rename {path} stolen.csv",
            f"-rename -l {path} stolen.csv",
            f"-chmod 777 {path}",
            f"-ln -s {path} link.csv",
            f"-ln {path} hard.csv",
            f"-ls -l {path}",
        ]
    commands += ["-rmdir ../beta", f"-rmdir {beta}", "-mkdir ../beta/made", "ls -la /"]
    result = openssh_sftp(server.port, client_key[0], "\n".join(commands), cwd=local)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("Remote working directory:"):
            assert line == "Remote working directory: /", line
        if not line.startswith("sftp>"):  # what the server returned
            assert not OUTSIDE_NAMES & set(line.replace("/", " ").split()), line
    assert not (local / "got.csv").exists() or (local / "got.csv").read_bytes() == b""
    assert server.outside_snapshot() == before
    assert_no_secret_in_jail(server)


# --- symbolic links ---------------------------------------------------------------------------


def test_symlink_rename_escape_from_sftp_md(
    server: ServerThread, client_key: tuple[Path, str], local: Path
) -> None:
    """The stock chroot escape: `d1/d2/L -> ../..`, then rename `d1/d2` to `d2`."""
    before = server.outside_snapshot()

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/d1")
            await sftp.mkdir("/d1/d2")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.symlink("../..", "/d1/d2/L")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.symlink("../../beta", "/d1/d2/L")
            await sftp.rename("/d1/d2", "/d2")
            assert sorted(await sftp.listdir("/d2")) == [".", ".."]
            for path in ("/d2/L", "/d2/L/beta", "/d2/L/beta/secret.csv", "/d1/d2/L"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.stat(path)
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.listdir(path)
            with pytest.raises(REFUSED):
                await sftp.get("/d2/L/beta/secret.csv", str(local / "got.csv"))

    asyncio.run(session())
    # The same with OpenSSH's `ln -s` (symlink@openssh: SSH_FXP_SYMLINK) and `ln` (hardlink).
    result = openssh_sftp(
        server.port,
        client_key[0],
        """
        mkdir /o1
        mkdir /o1/o2
        -ln -s ../.. /o1/o2/L
        -ln -s /../beta /o1/o2/B
        -ln ../beta/secret.csv /o1/o2/H
        rename /o1/o2 /o2
        -ls -la /o2/L
        -ls -la /o2/B
        -get /o2/H got.csv
        ls -la /o2
        """,
        cwd=local,
    )
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if not line.startswith("sftp>")]
    assert not OUTSIDE_NAMES & set(" ".join(replies).replace("/", " ").split())
    assert result.stderr.count("Permission denied") >= 3, result.stderr  # ln -s, ln -s, ln
    assert not (local / "got.csv").exists()
    assert jail_tree(server) == {"d1": "dir", "d2": "dir", "o1": "dir", "o2": "dir"}
    assert server.outside_snapshot() == before


def test_host_made_symlinks_in_the_inbox_are_never_followed(
    server: ServerThread, local: Path
) -> None:
    """Symlinks someone on the host left in the inbox, pointing out: not followed by any op."""
    jail = server.inbox()
    (jail / "sub").mkdir()
    links = {
        "escape": str(server.inbox("beta")),  # absolute, to another tenant's inbox
        "up": "..",  # relative, to the inbox root
        "state": "../..",  # relative, to the state dir
        "secret-link.csv": "../beta/secret.csv",  # to another tenant's file
        "sub/deep": "../../beta",  # one level down
    }
    for name, target in links.items():
        (jail / name).symlink_to(target)
    before = server.outside_snapshot()
    small = local / "small.csv"
    small.write_bytes(b"sourcedId\nmine\n")
    through = ["/escape", "/up/beta", "/state/inbox/beta", "/sub/deep", "/escape/."]

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(small), "/mine.csv")
            names = await sftp.listdir("/")  # the links' own names are inside the jail
            assert not OUTSIDE_NAMES & set(names)
            for folder in through:
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.listdir(folder)
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.stat(f"{folder}/secret.csv")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.put(str(small), f"{folder}/new.csv")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.put(str(small), f"{folder}/secret.csv")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.mkdir(f"{folder}/made")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(f"{folder}/secret.csv")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.rename(f"{folder}/secret.csv", "/stolen.csv")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.rename("/mine.csv", f"{folder}/mine.csv")
                with pytest.raises(REFUSED):
                    await sftp.get(f"{folder}/secret.csv", str(local / "got.csv"))
            for name in links:
                for op in (sftp.stat, sftp.lstat, sftp.listdir, sftp.remove, sftp.rmdir):
                    with pytest.raises(REFUSED):
                        await op(f"/{name}")
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.put(str(small), f"/{name}")  # not through the link
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.posix_rename("/mine.csv", f"/{name}")  # nor over it
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.rename(f"/{name}", "/moved")
                with pytest.raises(REFUSED):
                    await sftp.get(f"/{name}", str(local / "got.csv"))
                await attempt(sftp.chmod(f"/{name}", 0o777))
            assert await sftp.exists("/mine.csv")

    asyncio.run(session())
    assert not (local / "got.csv").exists() or (local / "got.csv").read_bytes() == b""
    assert server.outside_snapshot() == before
    for name, target in links.items():  # the host's links are untouched
        assert os.readlink(jail / name) == target
    assert server.inbox("beta").joinpath("secret.csv").read_bytes() == SECRET


def test_symlink_link_readlink_refused_by_every_client(server: ServerThread, local: Path) -> None:
    (local / "a.csv").write_bytes(b"sourcedId\na\n")
    with paramiko_sftp(server.port) as sftp:
        sftp.put(str(local / "a.csv"), "/a.csv")
        with pytest.raises(PermissionError):
            sftp.symlink("/a.csv", "/s.csv")
        with pytest.raises(PermissionError):
            sftp.readlink("/a.csv")

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.symlink("/a.csv", "/s.csv")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.link("/a.csv", "/h.csv")  # hardlink@openssh.com
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.readlink("/a.csv")

    asyncio.run(session())
    assert jail_tree(server) == {"a.csv": "file"}
    assert (server.inbox() / "a.csv").stat().st_nlink == 1


# --- reading, modes, other tenants -------------------------------------------------------------


def test_reading_an_upload_is_refused(
    server: ServerThread, client_key: tuple[Path, str], local: Path
) -> None:
    data = b"sourcedId,givenName\nu1,Alpha\n"
    (local / "a.csv").write_bytes(data)
    with paramiko_sftp(server.port) as sftp:
        sftp.put(str(local / "a.csv"), "/a.csv")
        with pytest.raises(PermissionError):
            sftp.get("/a.csv", str(local / "p.csv"))
        with pytest.raises(PermissionError):
            sftp.open("/a.csv", "r")
        with pytest.raises(PermissionError):
            sftp.open("/a.csv", "r+")

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.get("/a.csv", str(local / "a2.csv"))
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.open("/a.csv", "r+b")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.remote_copy("/a.csv", "/copy.csv")  # copy-data extension
            assert not await sftp.exists("/copy.csv")

    asyncio.run(session())
    result = openssh_sftp(server.port, client_key[0], "get /a.csv o.csv", cwd=local)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    for name in ("p.csv", "a2.csv", "o.csv"):
        path = local / name
        assert not path.exists() or path.read_bytes() == b"", name
    assert jail_tree(server) == {"a.csv": "file"}


def test_setuid_chmod_accepted_without_effect(
    server: ServerThread, client_key: tuple[Path, str], local: Path
) -> None:
    (local / "a.csv").write_bytes(b"sourcedId\na\n")
    result = openssh_sftp(
        server.port,
        client_key[0],
        "put a.csv /o.csv\nchmod 4755 /o.csv\nchmod 6777 /o.csv\nmkdir /dir\nchmod 4777 /dir",
        cwd=local,
    )
    assert result.returncode == 0, result.stderr
    with paramiko_sftp(server.port) as sftp:
        sftp.put(str(local / "a.csv"), "/p.csv")
        sftp.chmod("/p.csv", 0o4755)
        sftp.chown("/p.csv", 12345, 12345)
        assert stat.S_IMODE(sftp.stat("/p.csv").st_mode) == 0o640

    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(local / "a.csv"), "/a.csv")
            await sftp.chmod("/a.csv", 0o4755)
            await sftp.setstat("/a.csv", asyncssh.SFTPAttrs(permissions=0o6777, uid=0, gid=0))
            await sftp.mkdir("/made", asyncssh.SFTPAttrs(permissions=0o7777))
            assert (await sftp.stat("/a.csv")).permissions & 0o7777 == 0o640

    asyncio.run(session())
    for name in ("o.csv", "p.csv", "a.csv"):
        st = (server.inbox() / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o640, name
        assert st.st_uid == os.getuid()
    for name in ("dir", "made"):
        mode = stat.S_IMODE((server.inbox() / name).stat().st_mode)
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o007), oct(mode)


def test_another_tenants_files_are_invisible(server: ServerThread, local: Path) -> None:
    (local / "b.csv").write_bytes(b"sourcedId\nbeta-upload\n")
    (local / "a.csv").write_bytes(b"sourcedId\nalpha-upload\n")

    async def session() -> None:
        async with (
            asyncssh_connect(server.port, username="beta") as beta_conn,
            beta_conn.start_sftp_client() as beta,
            asyncssh_connect(server.port, username="alpha") as alpha_conn,
            alpha_conn.start_sftp_client() as alpha,
        ):
            await beta.put(str(local / "b.csv"), "/b.csv")
            await alpha.put(str(local / "a.csv"), "/a.csv")
            assert sorted(await beta.listdir("/")) == [".", "..", "b.csv", "secret.csv"]
            assert sorted(await alpha.listdir("/")) == [".", "..", "a.csv"]
            for path in ("/b.csv", "/secret.csv", "../beta/b.csv", "/../beta/secret.csv"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await alpha.stat(path)
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await beta.stat("../alpha/a.csv")
            await alpha.put(str(local / "a.csv"), "/b.csv")  # same name: alpha's own file

    asyncio.run(session())
    assert (server.inbox("beta") / "b.csv").read_bytes() == b"sourcedId\nbeta-upload\n"
    assert (server.inbox("alpha") / "b.csv").read_bytes() == b"sourcedId\nalpha-upload\n"
    assert (server.inbox("beta") / "secret.csv").read_bytes() == SECRET


# --- the door: bans, tenants, addresses, channels, timeouts ------------------------------------


async def login_outcome(port: int, username: str = "alpha", password: str = PASSWORD) -> str:
    """'ok', 'denied' (auth reached and refused) or 'dropped' (cut before auth)."""
    try:
        async with asyncssh_connect(port, username=username, password=password) as conn:
            async with conn.start_sftp_client() as sftp:
                await sftp.listdir("/")
            return "ok"
    except asyncssh.PermissionDenied:
        return "denied"
    except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError):
        return "dropped"


def banner(port: int, timeout: float = 5.0) -> bytes:
    """What the server sends a raw TCP client before it closes (or until `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
                if b"\n" in received:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def test_banned_ip_is_dropped_before_auth_even_with_the_right_password(
    sftp_server: Callable[..., ServerThread], client_key: tuple[Path, str]
) -> None:
    """max_failures=3 wrong passwords from 127.0.0.1 (loopback is not exempt): banned."""
    server = sftp_server(make_config(defender=DefenderConfig(max_failures=3)))

    async def scenario() -> list[str]:
        outcomes = []
        for _ in range(3):
            outcomes.append(await login_outcome(server.port, password=WRONG_PASSWORD))
            if outcomes[-1] == "dropped":
                break
        outcomes.append(await login_outcome(server.port))  # the right password
        outcomes.append(await login_outcome(server.port, username="beta"))  # another tenant
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == "denied"
    assert set(outcomes[:-2]) <= {"denied", "dropped"}
    assert outcomes[-2:] == ["dropped", "dropped"]
    assert banner(server.port) == b""  # not even the SSH version string
    result = ssh_command(server.port, client_key[0], options=("-s",), command=("sftp",))
    assert result.returncode == 255
    assert server.call(lambda: dict(server.svc.sessions)) == {}


def test_connections_that_never_try_to_log_in_do_not_ban_by_default(
    sftp_server: Callable[..., ServerThread],
) -> None:
    """A load balancer's TCP health check (connect, read the banner, leave) from the address
    every school's traffic comes through must not get that address banned (SFTPGo's
    score_no_auth = 0)."""
    server = sftp_server(make_config(defender=DefenderConfig(max_failures=3)))
    for _ in range(6):
        assert banner(server.port).startswith(b"SSH-2.0-")
    assert wait_for(lambda: server.call(lambda: sum(server.svc.connections.values())) == 0)
    assert not server.call(lambda: server.svc.defender.is_banned("127.0.0.1"))
    assert asyncio.run(login_outcome(server.port)) == "ok"


def test_score_no_auth_bans_an_address_that_only_connects(
    sftp_server: Callable[..., ServerThread],
) -> None:
    server = sftp_server(make_config(defender=DefenderConfig(max_failures=3, score_no_auth=1)))
    for _ in range(3):
        assert banner(server.port).startswith(b"SSH-2.0-")
    assert wait_for(lambda: server.call(lambda: server.svc.defender.is_banned("127.0.0.1")))
    assert banner(server.port) == b""  # dropped before the SSH version string
    assert asyncio.run(login_outcome(server.port)) == "dropped"


def test_each_wrong_password_counts_once_toward_a_ban(
    sftp_server: Callable[..., ServerThread],
) -> None:
    server = sftp_server(make_config(defender=DefenderConfig(max_failures=3)))

    async def scenario() -> list[str]:
        outcomes = [await login_outcome(server.port, password=WRONG_PASSWORD) for _ in range(3)]
        return [*outcomes, await login_outcome(server.port)]

    assert asyncio.run(scenario()) == ["denied", "denied", "denied", "dropped"]


def test_slow_password_check_is_not_a_failed_login(
    sftp_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sftp_server(
        make_config(login_timeout_seconds=1, defender=DefenderConfig(max_failures=3))
    )
    real_verify = server_module.verify_password_async

    async def slow_verify(stored_hash: str | None, password: str) -> bool:
        await asyncio.sleep(1.5)  # as when 100 schools log in at once: ~0.18 s of CPU each
        return await real_verify(stored_hash, password)

    monkeypatch.setattr(server_module, "verify_password_async", slow_verify)
    assert [asyncio.run(login_outcome(server.port)) for _ in range(3)] == ["dropped"] * 3
    monkeypatch.setattr(server_module, "verify_password_async", real_verify)
    assert asyncio.run(login_outcome(server.port)) == "ok"  # the load is gone: not banned


def test_removed_tenant_cannot_log_in_after_reload(
    server: ServerThread, client_key: tuple[Path, str], local: Path
) -> None:
    """reload() without alpha: alpha is refused; beta's session opened before keeps working."""
    (local / "b.csv").write_bytes(b"sourcedId\nb\n")

    async def scenario() -> None:
        async with (
            asyncssh_connect(server.port, username="beta") as beta_conn,
            beta_conn.start_sftp_client() as beta,
        ):
            await beta.put(str(local / "b.csv"), "/before.csv")
            server.call(server.svc.reload, {"beta": server.tenants["beta"]})
            assert await login_outcome(server.port, username="alpha") == "denied"
            result = await asyncio.to_thread(
                openssh_sftp, server.port, client_key[0], "ls /", cwd=local
            )
            assert result.returncode != 0  # alpha's key is gone too
            await beta.put(str(local / "b.csv"), "/after.csv")  # the open session
            assert sorted(await beta.listdir("/")) == [
                ".", "..", "after.csv", "before.csv", "secret.csv",
            ]  # fmt: skip
            assert await login_outcome(server.port, username="beta") == "ok"

    asyncio.run(scenario())
    assert sorted(p.name for p in server.inbox("beta").iterdir()) == [
        "after.csv", "before.csv", "secret.csv",
    ]  # fmt: skip


def test_reload_keeps_open_sessions_of_a_removed_tenant(server: ServerThread, local: Path) -> None:
    """As documented in SftpService.reload: removed tenants cannot log in, sessions stay."""
    (local / "a.csv").write_bytes(b"sourcedId\na\n")

    async def scenario() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            server.call(server.svc.reload, {"beta": server.tenants["beta"]})
            assert await login_outcome(server.port) == "denied"
            await sftp.put(str(local / "a.csv"), "/a.csv")

    asyncio.run(scenario())
    assert (server.inbox() / "a.csv").exists()


def test_login_from_a_disallowed_ip_is_refused(
    sftp_server: Callable[..., ServerThread],
    tenants: dict[str, TenantConfig],
    client_key: tuple[Path, str],
    local: Path,
) -> None:
    fenced = tenants["alpha"].model_copy(update={"allow_ips": ["10.0.0.0/8"]})
    server = sftp_server(tenants_={"alpha": fenced, "beta": tenants["beta"]})
    assert asyncio.run(login_outcome(server.port)) == "denied"
    result = openssh_sftp(server.port, client_key[0], "ls /", cwd=local)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert asyncio.run(login_outcome(server.port, username="beta")) == "ok"
    assert server.call(lambda: dict(server.svc.sessions)) == {}


def test_exec_shell_and_forwarding_are_refused(
    server: ServerThread, client_key: tuple[Path, str]
) -> None:
    async def scenario() -> None:
        hits = []

        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hits.append(1)
            writer.close()

        listener = await asyncio.start_server(target, "127.0.0.1", 0)
        target_port = listener.sockets[0].getsockname()[1]
        try:
            async with asyncssh_connect(server.port) as conn:
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.run("ls", check=True)
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.create_process()  # a shell
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.create_process(subsystem="scp")
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.open_connection("127.0.0.1", target_port)  # direct-tcpip
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.open_unix_connection("/run/anything.sock")
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", target_port)
                # -L: the local end opens, but the server refuses the channel behind it.
                forward = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", target_port)
                reader, writer = await asyncio.open_connection("127.0.0.1", forward.get_port())
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
                forward.close()
                async with conn.start_sftp_client() as sftp:  # the session still works
                    assert await sftp.listdir("/") == [".", ".."]
        finally:
            listener.close()
            await listener.wait_closed()
        assert hits == []

    asyncio.run(scenario())
    for options, command in [
        ((), ("ls",)),
        ((), ("cat /etc/passwd",)),
        (("-T",), ()),  # shell
        (("-W", f"127.0.0.1:{server.port}"), ()),  # stdio forward
        (("-s",), ("scp",)),
    ]:
        result = ssh_command(server.port, client_key[0], options=options, command=command)
        assert result.returncode == 255, (options, command, result.stdout)
        assert "root:" not in result.stdout


def test_unauthenticated_connection_dropped_at_login_timeout(
    sftp_server: Callable[..., ServerThread],
) -> None:
    server = sftp_server(make_config(login_timeout_seconds=1))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        received = b""
        while chunk := sock.recv(4096):  # banner, KEXINIT, then EOF
            received += chunk
        elapsed = time.monotonic() - started
    assert received.startswith(b"SSH-2.0-ingestd\r\n")
    assert 0.5 < elapsed < 5, elapsed
    assert wait_for(lambda: server.call(lambda: sum(server.svc.connections.values())) == 0)


def test_max_sessions_per_tenant(sftp_server: Callable[..., ServerThread]) -> None:
    server = sftp_server(make_config(max_sessions_per_tenant=2))

    async def scenario() -> list[str]:
        async with (
            asyncssh_connect(server.port) as _one,
            asyncssh_connect(server.port) as _two,
        ):
            third = await login_outcome(server.port)
            other = await login_outcome(server.port, username="beta")
        return [third, other, await login_outcome(server.port)]

    assert asyncio.run(scenario()) == ["denied", "ok", "ok"]


# --- uploads that must not land -----------------------------------------------------------------


def upload_too_big(client: str, server: ServerThread, key: Path, local: Path) -> Any:
    """Upload 2 MB to /big.csv with `client`; the exception or CompletedProcess it ended with."""
    source = local / "two.csv"
    source.write_bytes(os.urandom(2 << 20))
    if client == "openssh":
        result = openssh_sftp(server.port, key, f"put {source} /big.csv", cwd=local)
        server.wait_idle()
        return result
    if client == "paramiko":
        try:
            with paramiko_sftp(server.port) as sftp:
                sftp.put(str(source), "/big.csv")
        except (OSError, paramiko.SSHException) as exc:
            return exc
        finally:
            server.wait_idle()
        return None

    async def session() -> Any:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            return await attempt(sftp.put(str(source), "/big.csv"))

    try:
        return asyncio.run(session())
    finally:
        server.wait_idle()


@pytest.mark.parametrize("client", ["openssh", "paramiko", "asyncssh"])
def test_upload_over_max_file_bytes_fails(
    sftp_server: Callable[..., ServerThread],
    client_key: tuple[Path, str],
    local: Path,
    client: str,
) -> None:
    server = sftp_server(make_config(max_file_bytes=1 << 20))
    before = server.outside_snapshot()
    outcome = upload_too_big(client, server, client_key[0], local)
    if client == "openssh":
        assert outcome.returncode != 0
    elif client == "paramiko":
        assert isinstance(outcome, OSError)  # paramiko: "size mismatch in put"
    else:
        assert isinstance(outcome, asyncssh.SFTPFailure)  # QUOTA_EXCEEDED, v3: FX_FAILURE
        assert "file too large" in str(outcome)
    assert server.temp_files() == []
    assert server.outside_snapshot() == before


@pytest.mark.parametrize("client", ["openssh", "paramiko", "asyncssh"])
def test_upload_over_max_file_bytes_leaves_no_file(
    sftp_server: Callable[..., ServerThread],
    client_key: tuple[Path, str],
    local: Path,
    client: str,
) -> None:
    server = sftp_server(make_config(max_file_bytes=1 << 20))
    upload_too_big(client, server, client_key[0], local)
    assert list(server.inbox().iterdir()) == []
    assert server.uploads == []


def abort_mid_upload(server: ServerThread) -> None:
    """Open /cut.csv, write 64 KiB, then abort the connection without closing the file."""

    async def session() -> None:
        conn = await asyncssh_connect(server.port)
        try:
            sftp = await conn.start_sftp_client()
            f = await sftp.open("/cut.csv", "wb")
            await f.write(os.urandom(64 << 10))
            assert len(server.temp_files()) == 1  # the upload is in progress
            assert not await sftp.exists("/cut.csv")
        finally:
            conn.abort()
        await conn.wait_closed()

    asyncio.run(session())
    assert wait_for(lambda: server.call(lambda: dict(server.svc.sessions)) == {})


def test_connection_cut_mid_upload_leaves_no_temp_file(server: ServerThread) -> None:
    before = server.outside_snapshot()
    abort_mid_upload(server)
    assert wait_for(lambda: server.temp_files() == [])
    assert server.outside_snapshot() == before


def test_connection_cut_mid_upload_leaves_no_file(server: ServerThread) -> None:
    abort_mid_upload(server)
    time.sleep(0.3)
    assert list(server.inbox().iterdir()) == []
    assert server.uploads == []


def test_folder_renamed_during_upload_leaves_no_temp_file(server: ServerThread) -> None:
    async def session() -> None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/d")
            f = await sftp.open("/d/x.csv", "wb")
            await f.write(b"sourcedId\n" * 100)
            await attempt(sftp.rename("/d", "/e"))  # refused while the upload is open
            await attempt(f.close())
            await attempt(sftp.rmdir("/e"))

    asyncio.run(session())
    assert server.temp_files() == []


def test_write_at_offset_into_existing_file_keeps_or_refuses(server: ServerThread) -> None:
    """SFTPv3 open without TRUNC keeps the file's bytes: a resume writes the rest after them."""
    data = b"".join(b"u%06d,Name\n" % i for i in range(10_000))
    half = len(data) // 2

    async def session() -> Exception | None:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/r.csv", "wb") as f:
                await f.write(data[:half])
            try:
                async with sftp.open("/r.csv", asyncssh.FXF_WRITE, encoding=None) as f:
                    await f.write(data[half:], half)
            except asyncssh.SFTPError as exc:
                return exc
            return None

    refused = asyncio.run(session())
    got = (server.inbox() / "r.csv").read_bytes()
    if refused is None:
        assert got == data  # the existing half kept, the rest written after it
    else:
        assert got == data[:half]  # refused: the first upload untouched


def test_a_session_may_hold_only_so_many_uploads_open(
    sftp_server: Callable[..., ServerThread],
) -> None:
    server = sftp_server(make_config(max_open_files_per_session=2))

    async def session() -> str:
        async with asyncssh_connect(server.port) as conn, conn.start_sftp_client() as sftp:
            first = await sftp.open("/a.csv", "wb")
            second = await sftp.open("/b.csv", "wb")
            with pytest.raises(asyncssh.SFTPFailure) as refused:
                await sftp.open("/c.csv", "wb")
            await first.write(b"a\n")
            await first.close()
            third = await sftp.open("/c.csv", "wb")  # a slot is free again
            for f in (second, third):
                await f.write(b"x\n")
                await f.close()
            return str(refused.value)

    message = asyncio.run(session())
    assert "at most 2 files" in message
    assert sorted(p.name for p in server.inbox().iterdir()) == ["a.csv", "b.csv", "c.csv"]
