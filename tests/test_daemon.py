"""`ingestd run` as a real process: tenants from the CLI, SIGHUP reloads them, SIGTERM stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "INGESTD_CONFIG"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def cli(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", "--config", str(config), *map(str, args)],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )  # fmt: skip


def sftp_put(port: int, user: str, key: Path, source: Path, work: Path) -> bool:
    batch = work / "batch"
    batch.write_text(f"put {source} users.csv\n")
    run = subprocess.run(
        ["sftp", "-b", str(batch), "-i", str(key), "-P", str(port),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return run.returncode == 0


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, int, Path]:
    port = free_port()
    config = tmp_path / "ingestd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n'
        f'[sftp]\nlisten = "127.0.0.1:{port}"\n'
        # wait_port's probes and the logins refused until a SIGHUP lands are failures from
        # 127.0.0.1: on a slow machine they reached the default 5 and banned the test itself
        '[sftp.defender]\nsafe_ips = ["127.0.0.1/32"]\n'
    )
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return config, port, key


def test_sighup_reloads_tenants_and_sigterm_stops(site: tuple[Path, int, Path], tmp_path: Path):
    config, port, key = site
    source = tmp_path / "users.csv"
    source.write_text("sourcedId\nu1\n")
    added = cli(config, "tenant", "add", "alpha", "--public-key", key.with_suffix(".pub"))
    assert added.returncode == 0, added.stderr
    assert f"port:     {port}" in added.stdout and "SHA256:" in added.stdout
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ingestd", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL, stderr=err, env=ENV,
        )  # fmt: skip
    try:
        wait_port(port, daemon)
        assert sftp_put(port, "alpha", key, source, tmp_path)
        inbox = tmp_path / "state" / "inbox"
        assert (inbox / "alpha" / "users.csv").read_text() == "sourcedId\nu1\n"

        assert (
            cli(config, "tenant", "add", "beta", "--public-key", key.with_suffix(".pub")).returncode
            == 0
        )
        assert not sftp_put(port, "beta", key, source, tmp_path)  # not before a reload
        daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not sftp_put(port, "beta", key, source, tmp_path):
            assert time.monotonic() < deadline, "beta never got in after SIGHUP"
            time.sleep(0.2)

        assert cli(config, "tenant", "remove", "alpha").returncode == 0
        daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sftp_put(port, "alpha", key, source, tmp_path):
            assert time.monotonic() < deadline, "alpha still got in after removal and SIGHUP"
            time.sleep(0.2)
        assert (inbox / "alpha" / "users.csv").exists()  # a removed school's data is kept

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line]
    assert "daemon.ready" in events and events.count("daemon.reloaded") == 2
    assert events[-2:] == ["daemon.stopping", "daemon.stopped"]


def test_hostkeys_are_made_once_and_kept(site: tuple[Path, int, Path]) -> None:
    config, _, _ = site
    first = cli(config, "hostkeys")
    second = cli(config, "hostkeys")
    assert first.returncode == 0 and first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ssh-ed25519", "ssh-rsa"]
    keys = Path(config.read_text().split('state_dir = "')[1].split('"')[0]) / "host_keys"
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600


def test_tenant_add_refuses_bad_ids_and_keeps_hashes_only(site: tuple[Path, int, Path]) -> None:
    config, _, _ = site
    bad = cli(config, "tenant", "add", "../etc", "--generate-password")
    assert bad.returncode == 2 and "not a valid tenant id" in bad.stderr
    ok = cli(config, "tenant", "add", "gamma", "--generate-password")
    password = next(
        line.split()[1] for line in ok.stdout.splitlines() if line.strip().startswith("password:")
    )
    text = (config.parent / "tenants.d" / "gamma.toml").read_text()
    assert password not in text and "$argon2id$" in text
    assert (config.parent / "tenants.d" / "gamma.toml").stat().st_mode & 0o777 == 0o640
    listed = cli(config, "tenant", "list")
    assert "gamma" in listed.stdout and "password" in listed.stdout and "never" in listed.stdout
