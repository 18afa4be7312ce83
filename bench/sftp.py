"""Benchmark: upload throughput into ingestd's SFTP server against OpenSSH's internal-sftp.

    python bench/sftp.py [--mb 500] [--dir bench/out/sftp]

Uploads one random file with the OpenSSH `sftp` client (default settings, key
auth) for aes128-gcm and chacha20-poly1305: into `ingestd run`, and, where an
`sshd` binary can run on a loopback port, into OpenSSH's internal-sftp in the
same run, and prints MB/s and the ratio (target: ingestd >= 75% of OpenSSH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def upload(port: int, key: Path, user: str, source: Path, cipher: str, work: Path) -> float:
    """Seconds for one `sftp put` of `source`."""
    batch = work / "batch"
    batch.write_text(f"put {source} upload.bin\n")
    cmd = [
        "sftp", "-q", "-b", str(batch), "-i", str(key), "-P", str(port), "-c", cipher,
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def start_ingestd(work: Path, key: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "ingestd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{work / "state"}"\nlog_format = "json"\n'
        f'[sftp]\nlisten = "127.0.0.1:{port}"\nmax_file_bytes = {8 << 30}\n'
    )
    (work / "tenants.d").mkdir(exist_ok=True)
    (work / "tenants.d" / "bench.toml").write_text(
        f'authorized_keys = ["{key.with_suffix(".pub").read_text().strip()}"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "ingestd.log", "w"),  # noqa: SIM115
    )
    wait_port(port)
    return proc, port


def start_sshd(work: Path, key: Path) -> tuple[subprocess.Popen, int] | None:
    if not os.path.exists(SSHD):
        return None
    port = free_port()
    host_key = work / "sshd_host_key"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                       check=True)  # fmt: skip
    upload_dir = work / "sshd_uploads"
    upload_dir.mkdir(exist_ok=True)
    authorized = work / "authorized_keys"
    shutil.copy(key.with_suffix(".pub"), authorized)
    os.chmod(authorized, 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nUsePAM no\n"
        f"StrictModes no\nSubsystem sftp internal-sftp -d {upload_dir}\nPidFile none\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, 10)
    except RuntimeError:
        proc.kill()
        return None
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path("bench/out/sftp"))
    args = parser.parse_args()
    work = args.dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "source.bin"
    with source.open("wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(1 << 20))
    key = work / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    user = os.environ.get("USER") or "root"
    procs = []
    try:
        ingestd, ingestd_port = start_ingestd(work, key)
        procs.append(ingestd)
        sshd = start_sshd(work, key)
        if sshd:
            procs.append(sshd[0])
        print(f"{args.mb} MB, OpenSSH sftp client defaults, loopback")
        for cipher in CIPHERS:
            ours = args.mb / upload(ingestd_port, key, "bench", source, cipher, work)
            line = f"  {cipher:<32} ingestd {ours:7.1f} MB/s"
            if sshd:
                theirs = args.mb / upload(sshd[1], key, user, source, cipher, work)
                line += f"   OpenSSH internal-sftp {theirs:7.1f} MB/s   ratio {ours / theirs:.2f}"
            print(line, flush=True)
        if not sshd:
            print("  (no sshd binary could run here: OpenSSH not measured)")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
