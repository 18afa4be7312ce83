"""A real `ingestd run` process as systemd runs it, and what drives it: a notify socket,
OpenSSH `sftp` uploads, the CLI, the database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ingestd.events.store import EventStore

ENV = {k: v for k, v in os.environ.items() if k not in ("INGESTD_CONFIG", "NOTIFY_SOCKET")}
TENANTS = ("alpha", "beta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Notifications:
    """A NOTIFY_SOCKET as systemd offers one: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.state = root / "state"
        self.config = root / "ingestd.toml"
        self.key = root / "key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        (root / "tenants.d").mkdir()
        public = self.key.with_suffix(".pub").read_text().strip()
        for tenant in TENANTS:
            (root / "tenants.d" / f"{tenant}.toml").write_text(
                f'name = "{tenant}"\nauthorized_keys = ["{public}"]\n'
            )
        self.write_config()
        self.procs: list[subprocess.Popen] = []
        self.notify = Notifications(root / "notify.sock")

    def write_config(
        self, stop_grace: float = 30, settle: float = 0.5, incomplete_after: float = 21600
    ) -> None:
        self.config.write_text(
            f'[daemon]\nstate_dir = "{self.state}"\nlog_format = "json"\n'
            f"stop_grace = {stop_grace}\n"
            f"[ingest]\nsettle_seconds = {settle}\nincomplete_after = {incomplete_after}\n"
            f'[sftp]\nlisten = "127.0.0.1:{self.port}"\n'
            # port probes and refused logins are failures from 127.0.0.1: never ban the tests
            '[sftp.defender]\nsafe_ips = ["127.0.0.1/32"]\n'
        )

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """An `ingestd` command against this site, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "ingestd", "--config", str(self.config), *map(str, args)],
            capture_output=True, text=True, env=ENV, timeout=120, check=False,
        )  # fmt: skip

    def upload_one_by_one(self, tenant: str, files: list[Path], pause: float) -> None:
        """One `sftp` session per file with a pause between them, as a scheduler pushing
        reports one after another does."""
        for n, path in enumerate(files):
            if n:
                time.sleep(pause)
            self.upload_files(tenant, [path])

    def start(self, watchdog_usec: int | None = None) -> subprocess.Popen:
        ready = self.notify.lines().count("READY=1")  # earlier starts' count
        env = dict(ENV, NOTIFY_SOCKET=str(self.notify.path))
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with (self.root / "daemon.log").open("a") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "--config", str(self.config), "run"],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )  # fmt: skip
        self.procs.append(proc)
        self.wait(
            lambda: self.notify.lines().count("READY=1") > ready or proc.poll() is not None, 30
        )
        assert proc.poll() is None, f"the daemon exited {proc.returncode}"
        return proc

    def stop(self, proc: subprocess.Popen) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=90)

    def upload(self, tenant: str, folder: Path) -> None:
        self.upload_files(tenant, sorted(folder.iterdir()))

    def upload_files(self, tenant: str, files: list[Path]) -> None:
        batch = self.root / f"batch-{tenant}"
        batch.write_text("".join(f"put {p} {p.name}\n" for p in files))
        run = subprocess.run(
            ["sftp", "-b", str(batch), "-i", str(self.key), "-P", str(self.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{tenant}@127.0.0.1"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr

    def events(self, type_glob: str | None = None) -> list[tuple]:
        if not (self.state / "ingestd.db").exists():
            return []
        with EventStore.open(self.state) as store:
            return store.read_events(type_glob=type_glob)

    def decisions(self) -> list[tuple[str, dict]]:
        return [(e[1], json.loads(e[5])) for e in self.events("sets.*")]

    def log_events(self) -> list[dict]:
        path = self.root / "daemon.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    @staticmethod
    def wait(predicate, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.notify.close()
