"""`ingestd demo`, the README's first command, as a newcomer runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if k not in ("INGESTD_CONFIG", "NOTIFY_SOCKET")}


def test_demo_plays_three_days_and_leaves_explorable_state(tmp_path: Path):
    folder = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "ingestd", "demo", "--dir", str(folder), "--students", "60"],
        capture_output=True, text=True, env=ENV, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.count("claimed and accepted") == 2 and "claimed and held" in out
    assert "users.updated" in out and '"previous_attributes": {"email":' in out
    assert "held: users:" in out
    sets = subprocess.run(
        [sys.executable, "-m", "ingestd", "--config", str(folder / "ingestd.toml"), "sets"],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )  # fmt: skip
    assert sets.returncode == 0
    assert sorted(line.split()[2] for line in sets.stdout.splitlines()[1:] if line.strip()) == [
        "accepted",
        "accepted",
        "held",
    ], sets.stdout
    tenants = subprocess.run(
        [sys.executable, "-m", "ingestd", "--config", str(folder / "ingestd.toml"), "tenant",
         "list"],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )  # fmt: skip
    (row,) = tenants.stdout.splitlines()[1:]
    assert row.split()[0] == "lincoln-high" and len(row.split()[2]) == 26  # the set's ULID


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path):
    (tmp_path / "something").write_text("mine")
    run = subprocess.run(
        [sys.executable, "-m", "ingestd", "demo", "--dir", str(tmp_path)],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "not empty" in run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["something"]
