"""Benchmark: upload throughput into ingestd's SFTP server against OpenSSH's internal-sftp.

    python bench/sftp.py [--mb 500] [--runs 3] [--dir bench/out/sftp]

Uploads one random file with the OpenSSH `sftp` client (default settings, key
auth) for aes128-gcm and chacha20-poly1305: into `ingestd run`, and, where an
`sshd` binary can run on a loopback port, into OpenSSH's internal-sftp in the
same run, and prints MB/s and the ratio (target: ingestd >= 75% of OpenSSH).

Each upload is repeated `--runs` times, ingestd and OpenSSH alternating, and the
median is printed (the best in brackets): on a small shared machine single runs
vary by +-30%. "cpu" is the server's CPU time per upload (user + system, all
threads; for sshd its per-connection child), which noise changes much less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
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


def cpu_seconds(pid: int, children: bool = False) -> float:
    """user + system CPU seconds of `pid` (all its threads), or of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = fields[11:13] if not children else fields[13:15]  # utime stime | cutime cstime
    return sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")


def measure(
    server: subprocess.Popen,
    children: bool,
    port: int,
    key: Path,
    user: str,
    source: Path,
    cipher: str,
    work: Path,
) -> tuple[float, float]:
    """(seconds, server CPU seconds) of one upload."""
    before = cpu_seconds(server.pid, children)
    seconds = upload(port, key, user, source, cipher, work)
    time.sleep(0.3)  # sshd reaps the session's child (its CPU shows in cutime then)
    return seconds, cpu_seconds(server.pid, children) - before


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
    parser.add_argument("--runs", type=int, default=3)
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
        print(f"{args.mb} MB, OpenSSH sftp client defaults, loopback, median of {args.runs}")
        for cipher in CIPHERS:
            ours: list[tuple[float, float]] = []
            theirs: list[tuple[float, float]] = []
            for _ in range(args.runs):
                ours.append(measure(ingestd, False, ingestd_port, key, "bench", source, cipher,
                                    work))  # fmt: skip
                if sshd:
                    theirs.append(measure(sshd[0], True, sshd[1], key, user, source, cipher,
                                          work))  # fmt: skip
            line = f"  {cipher:<30} ingestd {summary(args.mb, ours)}"
            if sshd:
                ratio = statistics.median(args.mb / s for s, _ in ours) / statistics.median(
                    args.mb / s for s, _ in theirs
                )
                line += f"   OpenSSH {summary(args.mb, theirs)}   ratio {ratio:.2f}"
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


def summary(mb: int, runs: list[tuple[float, float]]) -> str:
    """'median MB/s (best) cpu median s' of some uploads."""
    speeds = [mb / seconds for seconds, _ in runs]
    cpu = statistics.median(c for _, c in runs)
    return f"{statistics.median(speeds):6.1f} MB/s ({max(speeds):6.1f}) cpu {cpu:4.2f}s"


if __name__ == "__main__":
    main()
