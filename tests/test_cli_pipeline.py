"""The pipeline commands run as real processes: ingest, events (--follow), sets, diff."""

from __future__ import annotations

import csv
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.pipeline import sets
from ingestd.pipeline.ingest import Pipeline
from tests.oneroster.corpus import (
    copy_set,
    fields,
    find_line,
    generated,
    join,
    read_lines,
    set_cell,
    write_lines,
)

ENV = {k: v for k, v in os.environ.items() if k not in ("INGESTD_CONFIG", "STATE_DIRECTORY")}
INGESTD = (sys.executable, "-m", "ingestd")
SET_ID = r"[0-9A-HJKMNP-TV-Z]{26}"

Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def base_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "base", 200, 7)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "etc" / "ingestd.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'[daemon]\nstate_dir = "{state}"\nlog_format = "json"\n', encoding="utf-8")
    return cfg


@pytest.fixture
def run(config: Path) -> Run:
    def ingestd(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*INGESTD, "--config", str(config), *map(str, args)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
            check=False,
        )

    return ingestd


def rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def set_id_of(stdout: str) -> str:
    m = re.match(rf"set ({SET_ID}) of ", stdout)
    assert m, stdout
    return m.group(1)


def cut_users_in_half(src: Path, dst: Path) -> tuple[Path, int]:
    """users.csv keeps its first half (staff and students come first: only parents go)."""
    out = copy_set(src, dst)
    lines = read_lines(out / "users.csv")
    keep = 1 + (len(lines) - 1) // 2
    role = fields(lines[0]).index("role")
    assert {fields(x)[role] for x in lines[keep:]} <= {"parent", "guardian"}
    write_lines(out / "users.csv", lines[:keep])
    return out, len(lines) - keep


def edit_emails(src: Path, dst: Path, *students: int) -> tuple[Path, dict[str, str]]:
    """A copy of the set where the n-th students' emails are `n<n>@x.org`: (set, {id: old})."""
    out = copy_set(src, dst)
    users = out / "users.csv"
    all_students = [r for r in csv_rows(users) if r["role"] == "student"]
    old = {}
    for n in students:
        sid = all_students[n]["sourcedId"]
        old[sid] = set_cell(users, find_line(users, "sourcedId", sid), "email", f"n{n}@x.org")
    return out, old


def count_line(entity: str, rows: int, created: int = 0, updated: int = 0, deleted: int = 0):
    """One entity's line of the ingest summary."""
    return f"  {entity:<17} {rows:>9} rows   +{created} ~{updated} -{deleted}"


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_exit_codes_and_summaries(run: Run, base_set: Path, tmp_path: Path) -> None:
    n = {e: rows(base_set / f"{e}.csv") for e in spec.ENTITY_NAMES}
    total = sum(n.values())

    first = run("ingest", "lincoln", base_set)
    assert first.returncode == 0, first.stderr
    set1 = set_id_of(first.stdout)
    lines = first.stdout.splitlines()
    assert lines[0] == f"set {set1} of lincoln: accepted"
    assert lines[1:8] == [count_line(e, n[e], created=n[e]) for e in spec.ENTITY_NAMES]
    assert f"  events 1..{total + 1}" in lines
    assert any(x.endswith(f"/sets/lincoln/{set1}/report.json") for x in lines)
    logs = jsonl(first.stderr)
    assert [(x["event"], x["set_id"], x["events"]) for x in logs] == [
        ("set.accepted", set1, total + 1)
    ]

    again = run("ingest", "lincoln", base_set)
    assert again.returncode == 0
    assert again.stdout.splitlines()[1:] == [
        f"  identical to the current set {set1}: nothing changed"
    ]
    assert again.stdout.startswith("set ") and ": duplicate\n" in again.stdout

    half, removed = cut_users_in_half(base_set, tmp_path / "half")
    held = run("ingest", "lincoln", half)
    assert held.returncode == 3, held.stdout + held.stderr
    set3 = set_id_of(held.stdout)
    assert held.stdout.splitlines()[0] == f"set {set3} of lincoln: held"
    pct = 100 * removed / n["users"]
    assert (
        f"users: {removed} of {n['users']} rows would be deleted ({pct:.1f}% > 10%)" in held.stdout
    )
    assert count_line("users", n["users"] - removed, deleted=removed) in held.stdout.splitlines()
    assert f"  approve: ingestd sets approve {set3}" in held.stdout
    assert f"  reject:  ingestd sets reject {set3}" in held.stdout

    bad = copy_set(base_set, tmp_path / "bad")
    data = (bad / "users.csv").read_bytes().split(b"\n")
    data[3] = data[3].replace(b",", b",\x96", 1)  # line 4: a Windows-1252 dash in `status`
    (bad / "users.csv").write_bytes(b"\n".join(data))
    rejected = run("ingest", "lincoln", bad)
    assert rejected.returncode == 1
    set4 = set_id_of(rejected.stdout)
    assert rejected.stdout.splitlines()[0] == f"set {set4} of lincoln: rejected"
    assert "  not_utf8: users.csv line 4: users.csv is not UTF-8: byte 0x96 at line 4" in (
        rejected.stdout
    )

    as_json = run("ingest", "--json", "other", base_set)
    assert as_json.returncode == 0
    summary = json.loads(as_json.stdout)
    assert (summary["tenant"], summary["status"], summary["base_set_id"]) == (
        "other",
        "accepted",
        None,
    )
    assert summary["counts"]["users"] == {
        "rows": n["users"],
        "prior_rows": 0,
        "created": n["users"],
        "updated": 0,
        "deleted": 0,
    }

    usage = run("ingest", "Not/A/Tenant", base_set)
    assert usage.returncode == 2 and "not a valid tenant id" in usage.stderr
    missing = run("ingest", "lincoln", tmp_path / "nowhere")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_tenant_files_set_thresholds_and_the_enrollment_key(
    run: Run, config: Path, state: Path, base_set: Path, tmp_path: Path
) -> None:
    tenants = config.parent / "tenants.d"
    tenants.mkdir()
    (tenants / "lenient.toml").write_text("[safeguards]\nmax_delete_percent = 60\n")
    (tenants / "natural.toml").write_text('enrollment_key = "natural"\n')
    with EventStore.open(state) as store:  # day 1 in-process: a first set is never held
        pipeline = Pipeline(state, store)
        for tenant in ("lenient", "natural", "plain"):
            assert pipeline.ingest_path(tenant, base_set).status == "accepted"
    half, _ = cut_users_in_half(base_set, tmp_path / "half")
    assert run("ingest", "plain", half).returncode == 3
    assert run("ingest", "lenient", half).returncode == 0

    renumbered = copy_set(base_set, tmp_path / "renumbered")
    lines = read_lines(renumbered / "enrollments.csv")
    out = [lines[0]]
    for i, line in enumerate(lines[1:], start=1):
        row = fields(line)
        row[0] = f"r{i:07d}"
        out.append(join(row))
    write_lines(renumbered / "enrollments.csv", out)
    n = len(lines) - 1
    natural = run("ingest", "natural", renumbered)
    assert natural.returncode == 0, natural.stdout
    assert count_line("enrollments", n) in natural.stdout.splitlines()
    plain = run("ingest", "plain", renumbered)
    assert plain.returncode == 3  # keyed by sourcedId: every enrollment deleted and created
    assert count_line("enrollments", n, created=n, deleted=n) in plain.stdout.splitlines()


def test_ingest_first_finishes_what_a_crash_left(run: Run, state: Path, base_set: Path) -> None:
    set_id, _, digest = sets.claim_copy(state, "alpha", base_set)
    with EventStore.open(state) as store:
        store.add_set(set_id, "alpha", "sftp", digest)
    out = run("ingest", "beta", base_set)
    assert out.returncode == 0, out.stderr
    assert f"set {set_id} of alpha: accepted\n" in out.stderr
    assert out.stdout.splitlines()[0].endswith(" of beta: accepted")
    with EventStore.open(state) as store:
        assert store.get_set(set_id).status == "accepted"
        assert [t for t, *_ in store.tenants()] == ["alpha", "beta"]
        assert [r[3] for r in store.read_events(type_glob="sets.*")] == ["alpha", "beta"]


# --- events -----------------------------------------------------------------------------------


@pytest.fixture
def two_tenants(base_set: Path, tmp_path: Path, state: Path) -> None:
    """In-process: lincoln's day 1, adams' day 1, lincoln's day 2 (student 0's email)."""
    with EventStore.open(state) as store:
        pipeline = Pipeline(state, store)
        assert pipeline.ingest_path("lincoln", base_set).status == "accepted"
        assert pipeline.ingest_path("adams", base_set).status == "accepted"
        day2, _ = edit_emails(base_set, tmp_path / "day2", 0)
        assert pipeline.ingest_path("lincoln", day2).status == "accepted"


@pytest.mark.usefixtures("two_tenants")
def test_events_after_type_tenant_limit(run: Run, base_set: Path) -> None:
    every = run("events")
    assert every.returncode == 0, every.stderr
    events = jsonl(every.stdout)
    n = sum(rows(base_set / f"{e}.csv") for e in spec.ENTITY_NAMES) + 1
    assert len(events) == 2 * n + 2
    ids = [e["id"] for e in events]
    assert ids == list(range(1, 2 * n + 3))
    assert all(list(e) == ["id", "type", "created", "tenant", "set_id", "data"] for e in events)
    assert [e["type"] for e in events[-2:]] == ["users.updated", "sets.accepted"]

    for after in (n, 2 * n + 1):
        got = [e["id"] for e in jsonl(run("events", "--after", after).stdout)]
        assert got == [i for i in ids if i > after], after

    users = jsonl(run("events", "--type", "users.*").stdout)
    assert [e["id"] for e in users] == [e["id"] for e in events if e["type"].startswith("users.")]
    assert {e["type"] for e in users} == {"users.created", "users.updated"}
    sets_ = jsonl(run("events", "--type", "sets.*", "--tenant", "lincoln").stdout)
    assert [(e["id"], e["tenant"]) for e in sets_] == [(n, "lincoln"), (2 * n + 2, "lincoln")]

    adams = jsonl(run("events", "--tenant", "adams").stdout)
    assert [e["id"] for e in adams] == list(range(n + 1, 2 * n + 1))
    assert {e["tenant"] for e in adams} == {"adams"}
    lincoln_after = jsonl(run("events", "--tenant", "lincoln", "--after", n - 2).stdout)
    assert [e["id"] for e in lincoln_after] == [n - 1, n, 2 * n + 1, 2 * n + 2]

    limited = jsonl(run("events", "--after", 10, "--limit", 3, "--type", "*.created").stdout)
    assert [e["id"] for e in limited] == [11, 12, 13]


@pytest.mark.usefixtures("two_tenants")
def test_events_follow_prints_what_another_process_commits(
    run: Run, config: Path, state: Path, base_set: Path, tmp_path: Path
) -> None:
    with EventStore.open(state) as store:
        last = store.last_event_id()
    day3, old = edit_emails(base_set, tmp_path / "day3", 0, 1)  # student 1 is new today
    sid = list(old)[1]
    lines: queue.Queue[str | None] = queue.Queue()
    proc = subprocess.Popen(
        [*INGESTD, "--config", str(config), "events", "--follow", "--after", str(last)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        time.sleep(0.5)  # let it start following (it must not matter, but make it likely)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert lines.empty()  # nothing after `last` yet
        ingest = run("ingest", "lincoln", day3)
        assert ingest.returncode == 0, ingest.stderr
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not got or got[-1]["type"] != "sets.accepted":
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"follow printed only {got}"
            line = lines.get(timeout=remaining)
            assert line is not None, "follow exited"
            got.append(json.loads(line))
        assert [(e["id"], e["type"]) for e in got] == [
            (last + 1, "users.updated"),
            (last + 2, "sets.accepted"),
        ]
        assert got[0]["data"]["object"]["sourcedId"] == sid
        assert got[0]["data"]["previous_attributes"] == {"email": old[sid]}
        assert got[0]["data"]["object"]["email"] == "n1@x.org"
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        for pipe in (proc.stdout, proc.stderr):  # closed here, not by the GC in a later test
            if pipe is not None:
                pipe.close()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# --- sets ---------------------------------------------------------------------------------------


def test_sets_list_approve_reject(run: Run, state: Path, base_set: Path, tmp_path: Path) -> None:
    half, removed = cut_users_in_half(base_set, tmp_path / "half")
    emptied = copy_set(base_set, tmp_path / "emptied")
    write_lines(emptied / "demographics.csv", read_lines(emptied / "demographics.csv")[:1])
    with EventStore.open(state) as store:  # the sets, made in-process
        pipeline = Pipeline(state, store)
        set1 = pipeline.ingest_path("lincoln", base_set).set_id
        held = pipeline.ingest_path("lincoln", half)
        assert held.status == "held"
        set2 = held.set_id
    n_users = rows(base_set / "users.csv")
    total = sum(rows(base_set / f"{e}.csv") for e in spec.ENTITY_NAMES)

    listing = run("sets")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["SET", "TENANT", "STATUS", "RECEIVED", "CHANGES"]
    table = [x.split() for x in lines[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in table] == [
        (set2, "lincoln", "held", str(removed)),
        (set1, "lincoln", "accepted", str(total)),
    ]
    assert [x.split()[0] for x in run("sets", "--status", "held").stdout.splitlines()[1:]] == [set2]

    approved = run("sets", "approve", set2)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.splitlines()[0] == f"set {set2} of lincoln: accepted"
    assert count_line("users", n_users - removed, deleted=removed) in approved.stdout.splitlines()
    with EventStore.open(state) as store:
        assert store.list_sets(status="held") == []
        assert store.snapshot_of("lincoln") == set2
        deleted = store.read_events(type_glob="users.deleted")
        assert len(deleted) == removed and {e[4] for e in deleted} == {set2}
        before = store.last_event_id()
        held = Pipeline(state, store).ingest_path("lincoln", emptied)  # a second hold
        assert held.status == "held"
        set3 = held.set_id

    rejected = run("sets", "reject", set3)
    assert rejected.returncode == 0  # the operator's decision, carried out
    assert rejected.stdout.splitlines()[0] == f"set {set3} of lincoln: rejected"
    assert re.search(r"^  operator: +rejected by an operator$", rejected.stdout, re.M)
    with EventStore.open(state) as store:
        new = [(e[1], e[4]) for e in store.read_events(after=before)]
        assert new == [("sets.held", set3), ("sets.rejected", set3)]
        assert store.snapshot_of("lincoln") == set2
    as_json = jsonl(run("sets", "--json", "--tenant", "lincoln").stdout)
    assert [(s["id"], s["status"]) for s in as_json] == [
        (set3, "rejected"),
        (set2, "accepted"),
        (set1, "accepted"),
    ]
    assert as_json[1]["summary"]["approved"] is True

    for action, target, message in (
        ("approve", set1, f"set {set1} is accepted, not held"),
        ("reject", "01NOSUCHSET00000000000000", "no set 01NOSUCHSET00000000000000"),
    ):
        out = run("sets", action, target)
        assert out.returncode == 2, (action, target)
        assert out.stderr.strip() == f"ingestd: {message}"


# --- diff -------------------------------------------------------------------------------------


def test_diff_summary_and_json(run: Run, base_set: Path, tmp_path: Path) -> None:
    new, old = edit_emails(base_set, tmp_path / "new", 2)
    [(sid, old_email)] = old.items()
    users = new / "users.csv"
    parent = next(r for r in csv_rows(users) if r["role"] == "parent")
    lines = read_lines(users)
    lines.pop(find_line(users, "sourcedId", parent["sourcedId"]) - 1)
    write_lines(users, lines)
    n = {e: rows(base_set / f"{e}.csv") for e in spec.ENTITY_NAMES}

    out = run("diff", base_set, new)
    assert out.returncode == 0, out.stderr
    table = [x.split() for x in out.stdout.splitlines()]
    assert table[0] == ["ENTITY", "OLD", "NEW", "CREATED", "UPDATED", "DELETED"]
    expected = {e: [e, str(n[e]), str(n[e]), "0", "0", "0"] for e in spec.ENTITY_NAMES}
    expected["users"] = ["users", str(n["users"]), str(n["users"] - 1), "0", "1", "1"]
    assert table[1:] == [expected[e] for e in spec.ENTITY_NAMES]

    out = run("diff", "--json", base_set, new)
    assert out.returncode == 0
    events = jsonl(out.stdout)
    assert all(list(e) == ["type", "data"] for e in events)
    student = next(r for r in csv_rows(users) if r["sourcedId"] == sid)
    assert events == [
        {
            "type": "users.updated",
            "data": {"object": student, "previous_attributes": {"email": old_email}},
        },
        {"type": "users.deleted", "data": {"object": parent}},
    ]

    same = run("diff", "--json", base_set, base_set)
    assert (same.returncode, same.stdout) == (0, "")

    broken = copy_set(base_set, tmp_path / "broken")
    (broken / "orgs.csv").unlink()
    out = run("diff", base_set, broken)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("NEW is not a valid set:\n")
