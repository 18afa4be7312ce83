"""A brand-new database opened while another process holds a lock on it (the daemon
starting while an operator runs `ingestd events`): the store waits, it does not fail."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ingestd.events.store import MIGRATIONS, EventStore


def test_first_open_waits_for_a_lock_held_by_someone_else(tmp_path: Path):
    path = tmp_path / "ingestd.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # still a rollback-journal file, write-locked
    other.execute("CREATE TABLE scratch (x)")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        with EventStore(path) as store:
            assert store.schema_version == len(MIGRATIONS)
    finally:
        release.join()
        other.close()
    assert time.monotonic() - started >= 0.4  # it waited for the lock
