"""REST pollers inside `ingestd run`: pulled on schedule beside the SFTP server, through the
same pipeline; a slow vendor delays no other district. A real daemon process, fake vendor
servers speaking real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from ingestd.events.store import EventStore
from ingestd.oneroster.sample import generate
from tests.e2e.site import ENV, Site, free_port
from tests.sources.pollers.fake_oneroster import FakeOneRoster
from tests.sources.pollers.fakehttp import StaticBearer

wait = Site.wait


def statuses(state: Path, tenant: str) -> list[str]:
    """The tenant's sets' statuses, oldest first."""
    if not (state / "ingestd.db").exists():
        return []
    with EventStore.open(state) as store:
        return [s.status for s in reversed(store.list_sets(tenant=tenant))]


def test_districts_are_pulled_on_schedule_and_a_slow_vendor_delays_nobody(tmp_path: Path):
    generate(tmp_path / "fast", students=30, seed=1)
    generate(tmp_path / "slow", students=30, seed=2)
    fast = FakeOneRoster(tmp_path / "fast")
    slow = FakeOneRoster(tmp_path / "slow")
    StaticBearer(fast.server, "fast-token")
    StaticBearer(slow.server, "slow-token")
    slow.server.fail_next(r".", times=10_000, delay=4.0)  # every answer takes 4 s
    with fast, slow:
        state = tmp_path / "state"
        config = tmp_path / "ingestd.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{state}"\nlog_format = "json"\n'
            f'[sftp]\nlisten = "127.0.0.1:{free_port()}"\n'
        )
        tenants = tmp_path / "tenants.d"
        tenants.mkdir()
        for name, fake in (("fast", fast), ("slow", slow)):
            (tmp_path / f"{name}.token").write_text(f"{name}-token\n")
            (tenants / f"{name}.toml").write_text(
                f'source = "oneroster"\nauth = "bearer"\nbase_url = "{fake.url}"\n'
                f'token_file = "{name}.token"\nevery = "2s"\njitter = 0\n'
                f"request_timeout = 30\n"
            )
        with (tmp_path / "daemon.log").open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "--config", str(config), "run"],
                stdout=subprocess.DEVNULL, stderr=log, env=ENV,
            )  # fmt: skip
        try:
            # The fast district is pulled, accepted, then pulled again on schedule (the
            # same data again: a duplicate), all while the slow one's first pull still runs.
            wait(lambda: statuses(state, "fast")[:2] == ["accepted", "duplicate"], 90)
            assert statuses(state, "slow") == []
            with EventStore.open(state) as store:
                created = [e for e in store.read_events(type_glob="users.created")]
            users = len((tmp_path / "fast" / "users.csv").read_text().splitlines()) - 1
            assert len(created) == users  # same pipeline: one created event per user
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    log_events = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    started = [e["tenant"] for e in log_events if e["event"] == "poll.started"]
    assert started.count("fast") >= 2 and started.count("slow") == 1
