"""The command line, run as a real process: exit codes, output, JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "INGESTD_CONFIG"}


def ingestd(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=300,
        check=False,
    )


def test_validate_edfi_text(edfi_sample: Path) -> None:
    run = ingestd("validate", edfi_sample)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ACCEPTED")
    assert "users.csv line 10 column #19" in run.stdout
    assert "users.csv line 11 column #19" in run.stdout
    assert run.stderr == ""  # not a terminal: no progress line


def test_validate_json_schema(edfi_sample: Path) -> None:
    run = ingestd("validate", "--json", edfi_sample)
    assert run.returncode == 0
    report = json.loads(run.stdout)
    assert report["schema"] == 1
    assert report["verdict"] == "accepted"
    assert report["errors"] == 0 and report["warnings"] == 3
    assert report["files"]["users.csv"] == {
        "entity": "users",
        "name": "users.csv",
        "rows": 10,
        "dropped_rows": 0,
        "mode": "bulk",
    }
    lines = [(i["file"], i["line"], i["code"]) for i in report["issues"] if i["line"]]
    assert ("users.csv", 10, "extra_empty_fields") in lines
    keys = set(report["issues"][0])
    assert keys == {
        "severity",
        "scope",
        "code",
        "message",
        "fix",
        "file",
        "line",
        "column",
        "value",
    }


def test_validate_rejected_exit_1(tmp_path: Path, edfi_sample: Path) -> None:
    bad = tmp_path / "set"
    bad.mkdir()
    for f in edfi_sample.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "users.csv").write_bytes((bad / "users.csv").read_bytes().replace(b"Mary", b"M\xe4ry"))
    run = ingestd("validate", bad)
    assert run.returncode == 1
    assert run.stdout.startswith("REJECTED")
    assert "users.csv is not UTF-8: byte 0xE4 at line 2" in run.stdout


def test_validate_usage_errors(tmp_path: Path) -> None:
    assert ingestd("validate", tmp_path / "missing").returncode == 2
    assert ingestd("validate").returncode == 2
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[ingest]\nmax_invalid_rows_percent = -1\n")
    run = ingestd("--config", cfg, "validate", tmp_path)
    assert run.returncode == 2
    assert f"{cfg}: [ingest] max_invalid_rows_percent" in run.stderr


def test_validate_never_prints_whole_values(tmp_path: Path, edfi_sample: Path) -> None:
    bad = tmp_path / "set"
    bad.mkdir()
    for f in edfi_sample.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    secret = "S" * 30 + "-middle-part-ECRET-TAIL"
    text = (bad / "users.csv").read_text().replace(",student,", f",{secret},", 1)
    (bad / "users.csv").write_text(text)
    run = ingestd("validate", "--json", bad)
    assert "ECRET-TAIL" not in run.stdout
    assert "S" * 30 in run.stdout  # a short excerpt only


def test_sample_is_deterministic_and_valid(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert ingestd("sample", a, "--seed", "7", "--students", "300").returncode == 0
    assert ingestd("sample", b, "--seed", "7", "--students", "300").returncode == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    run = ingestd("validate", "--json", a)
    report = json.loads(run.stdout)
    assert run.returncode == 0
    assert report["errors"] == 0 and report["warnings"] == 0, report["counts"]


@pytest.mark.parametrize("students", [1, 1000])
def test_sample_validates_with_zero_issues(tmp_path: Path, students: int) -> None:
    from ingestd.oneroster.sample import generate
    from ingestd.oneroster.validate import validate_set

    generate(tmp_path / "s", students=students, seed=3)
    result = validate_set(tmp_path / "s")
    assert result.report.counts == {}, result.report.to_text()


def test_sample_zip(tmp_path: Path) -> None:
    z1, z2 = tmp_path / "a.zip", tmp_path / "b.zip"
    assert ingestd("sample", z1, "--zip", "--students", "200").returncode == 0
    assert ingestd("sample", z2, "--zip", "--students", "200").returncode == 0
    assert z1.read_bytes() == z2.read_bytes()
    run = ingestd("validate", z1)
    assert run.returncode == 0, run.stdout


def test_progress_only_on_a_terminal(tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "ingestd", "sample", str(tmp_path / "s"), "--students", "300"],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=ENV,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert run.returncode == 0
    assert b"users" in seen and b"s]" in seen  # "[   0.1s] users" lines on the terminal
    assert b"users" not in run.stdout.split(b":")[0]  # stdout (piped) has only the summary


def test_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text("[ingest]\nsettle_seconds = 30\n")
    (tmp_path / "tenants.d").mkdir()
    (tmp_path / "tenants.d" / "lincoln.toml").write_text("")
    run = ingestd("--config", cfg, "check-config")
    assert run.returncode == 0, run.stderr
    assert "1 tenants" in run.stdout
    cfg.write_text("[ingest]\nsettle_seconds = 'soon'\n")
    run = ingestd("--config", cfg, "check-config")
    assert run.returncode == 2 and "[ingest] settle_seconds" in run.stderr
