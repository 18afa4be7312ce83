"""The whole path through `Pipeline`: a real EventStore and real files in tmp_path, no mocks."""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ingestd.errors import UsageError
from ingestd.events.feed import event_json
from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.oneroster.sample import generate
from ingestd.pipeline import sets, snapshot
from ingestd.pipeline.ingest import Pipeline, TenantPolicy
from ingestd.pipeline.safeguards import SafeguardPolicy
from ingestd.pipeline.snapshot import SNAPSHOTS, load_snapshot, read_snapshot, write_snapshot
from tests.oneroster.corpus import (
    copy_set,
    fields,
    find_line,
    generated,
    join,
    read_lines,
    set_cell,
    write_lines,
    zip_dir,
)

TENANT = "lincoln-high"
EVENT_KEYS = ["id", "type", "created", "tenant", "set_id", "data"]
CREATED_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FALL = "f79f1508-78dc-4862-aa74-47705ea6c127"  # terms of generate(students=300, seed=7)
SPRING = "bdd45563-7ac7-4412-b43d-0d14c9d1d5cc"


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "base", 300, 7)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> Iterator[EventStore]:
    with EventStore.open(state) as s:
        yield s


@pytest.fixture
def pipeline(state: Path, store: EventStore) -> Pipeline:
    return Pipeline(state, store)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The file's rows as dicts in header order, read by the csv module."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def by_id(path: Path) -> dict[str, dict[str, str]]:
    return {r["sourcedId"]: r for r in csv_rows(path)}


def events(store: EventStore, after: int = 0) -> list[dict[str, Any]]:
    """Every event after `after` as a consumer sees it (the JSON of event_json)."""
    return [json.loads(event_json(row)) for row in store.read_events(after=after)]


def record_events(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if not e["type"].startswith("sets.")]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def remove_rows(path: Path, column: str, values: set[str]) -> list[dict[str, str]]:
    """Drop the rows whose `column` is in `values`; returns them (as dicts)."""
    lines = read_lines(path)
    head = fields(lines[0])
    i = head.index(column)
    kept, removed = [lines[0]], []
    for line in lines[1:]:
        row = fields(line)
        if row[i] in values:
            removed.append(dict(zip(head, row, strict=True)))
        else:
            kept.append(line)
    write_lines(path, kept)
    return removed


def append_rows(path: Path, rows: list[dict[str, str]]) -> None:
    lines = read_lines(path)
    head = fields(lines[0])
    write_lines(path, [*lines, *(join([r[h] for h in head]) for r in rows)])


def quote_empty_fields(path: Path, *, eol: str = "\n") -> None:
    """Rewrite every empty field as "" (`,,` -> `,"",`), with the given line endings."""
    lines = read_lines(path)
    out = [lines[0]]
    for line in lines[1:]:
        out.append(",".join('""' if v == "" else join([v]) for v in fields(line)))
    assert out != lines
    write_lines(path, out, eol=eol)


def counts(rows: int, created: int = 0, updated: int = 0, deleted: int = 0, prior: int = 0):
    return {
        "rows": rows,
        "prior_rows": prior,
        "created": created,
        "updated": updated,
        "deleted": deleted,
    }


def no_change_counts(base: Path) -> dict[str, dict[str, int]]:
    n = {e: len(csv_rows(base / f"{e}.csv")) for e in spec.ENTITY_NAMES}
    return {e: counts(n[e], prior=n[e]) for e in spec.ENTITY_NAMES}


# --- 1. first set, duplicate, equivalent copy ---------------------------------------------


def test_first_set_creates_every_row_then_duplicates_change_nothing(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    day1 = copy_set(base_set, tmp_path / "day1")
    outcome = pipeline.ingest_path(TENANT, day1)
    assert (outcome.status, outcome.exit_code, outcome.tenant) == ("accepted", 0, TENANT)
    evs = events(store)
    files = {e: csv_rows(day1 / f"{e}.csv") for e in spec.ENTITY_NAMES}
    total = sum(len(rows) for rows in files.values())
    assert len(evs) == total + 1
    assert (outcome.events.first, outcome.events.last) == (1, total + 1)
    assert [e["id"] for e in evs] == list(range(1, total + 2))

    # one created event per row, parents first, then sets.accepted last
    expected_types = [f"{e}.created" for e in spec.ENTITY_NAMES for _ in files[e]]
    assert [e["type"] for e in evs] == [*expected_types, "sets.accepted"]
    for ev in evs:
        assert list(ev) == EVENT_KEYS
        assert (ev["tenant"], ev["set_id"]) == (TENANT, outcome.set_id)
        assert CREATED_RE.match(ev["created"]), ev["created"]
    for entity, rows in files.items():
        objects = [e["data"] for e in evs if e["type"] == f"{entity}.created"]
        assert all(list(d) == ["object"] for d in objects)
        head = header(day1 / f"{entity}.csv")
        for d in objects:
            assert list(d["object"]) == head
            assert all(isinstance(v, str) for v in d["object"].values())
        as_items = sorted(tuple(d["object"].items()) for d in objects)
        assert as_items == sorted(tuple(r.items()) for r in rows)
        assert "" in {v for d in objects for v in d["object"].values()}  # empty is "", not null

    accepted = evs[-1]["data"]
    assert accepted["status"] == "accepted"
    assert (accepted["set_id"], accepted["tenant"], accepted["source"]) == (
        outcome.set_id,
        TENANT,
        "cli",
    )
    assert accepted["base_set_id"] is None
    assert accepted["counts"] == {
        e: counts(len(rows), created=len(rows)) for e, rows in files.items()
    }
    assert accepted["files"] == {f"{e}.csv": len(rows) for e, rows in sorted(files.items())}
    assert (accepted["errors"], accepted["warnings"], accepted["kept_invalid_rows"]) == (0, 0, {})
    assert store.snapshot_of(TENANT) == outcome.set_id
    assert store.get_set(outcome.set_id).status == "accepted"
    snap = read_snapshot(state, TENANT, outcome.set_id)
    assert {e: f.height for e, f in snap.items()} == {e: len(r) for e, r in files.items()}

    # the same files again: a duplicate, no event at all
    again = pipeline.ingest_path(TENANT, day1)
    assert (again.status, again.exit_code, again.events) == ("duplicate", 0, None)
    assert again.summary["base_set_id"] == outcome.set_id
    assert store.last_event_id() == total + 1
    assert store.get_set(again.set_id).status == "duplicate"
    assert store.snapshot_of(TENANT) == outcome.set_id

    # byte-different but equivalent: "" for empty fields and CRLF line endings in users.csv
    day1b = copy_set(base_set, tmp_path / "day1b")
    quote_empty_fields(day1b / "users.csv", eol="\r\n")
    assert (day1b / "users.csv").read_bytes() != (base_set / "users.csv").read_bytes()
    third = pipeline.ingest_path(TENANT, day1b)
    assert (third.status, third.exit_code) == ("accepted", 0)
    evs = events(store, after=total + 1)
    assert [e["type"] for e in evs] == ["sets.accepted"]
    assert evs[0]["data"]["counts"] == no_change_counts(base_set)
    assert evs[0]["data"]["base_set_id"] == outcome.set_id
    assert store.snapshot_of(TENANT) == third.set_id


# --- 2. a day of ordinary changes ----------------------------------------------------------


def test_day_two_changes_make_exactly_these_events(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    assert first.status == "accepted"
    mark = store.last_event_id()

    day2 = copy_set(base_set, tmp_path / "day2")
    users, demographics, enrollments, classes = (
        day2 / f"{e}.csv" for e in ("users", "demographics", "enrollments", "classes")
    )
    old_users = by_id(users)
    old_classes = by_id(classes)
    students = [r for r in old_users.values() if r["role"] == "student"]

    def guardians_of(sid: str) -> list[str]:
        return sorted(
            u["sourcedId"]
            for u in old_users.values()
            if sid in u["agentSourcedIds"].split(",") and u["role"] != "student"
        )

    emailed = [students[0]["sourcedId"], students[1]["sourcedId"]]
    gone_a, gone_b = students[2]["sourcedId"], students[3]["sourcedId"]
    template = students[4]
    # A's guardians drop A from their agentSourcedIds; B's keep pointing at the removed B.
    g_a, g_b = guardians_of(gone_a), guardians_of(gone_b)
    assert g_a and g_b and not set(g_a) & set(g_b)

    # two emails edited
    new_emails = {emailed[0]: "first.changed@example.org", emailed[1]: "second.changed@example.org"}
    for sid, email in new_emails.items():
        set_cell(users, find_line(users, "sourcedId", sid), "email", email)
    # two students removed with their demographics and enrollments
    removed_users = remove_rows(users, "sourcedId", {gone_a, gone_b})
    removed_demographics = remove_rows(demographics, "sourcedId", {gone_a, gone_b})
    removed_enrollments = remove_rows(enrollments, "userSourcedId", {gone_a, gone_b})
    assert len(removed_users) == 2 and len(removed_demographics) == 2
    assert len(removed_enrollments) >= 2
    for gid in g_a:
        line = find_line(users, "sourcedId", gid)
        agents = old_users[gid]["agentSourcedIds"].split(",")
        set_cell(users, line, "agentSourcedIds", ",".join(a for a in agents if a != gone_a))
    # one new student: users row, demographics row, two enrollments
    newcomer = {
        **template,
        "sourcedId": "new-student-1",
        "username": "nnewcomer0001",
        "userIds": "{SIS:0099001},{LDAP:nnewcomer0001}",
        "givenName": "Nora",
        "familyName": "Newcomer",
        "identifier": "0099001",
        "email": "nnewcomer0001@students.riverbend.example.org",
        "agentSourcedIds": "",
    }
    append_rows(users, [newcomer])
    new_demo = {**by_id(demographics)[template["sourcedId"]], "sourcedId": "new-student-1"}
    append_rows(demographics, [new_demo])
    template_enr = [r for r in csv_rows(enrollments) if r["userSourcedId"] == template["sourcedId"]]
    new_enr = [
        {**r, "sourcedId": f"new-enr-{i}", "userSourcedId": "new-student-1"}
        for i, r in enumerate(template_enr[:2], start=1)
    ]
    append_rows(enrollments, new_enr)
    # one class moved from the fall to the spring term
    moved = next(c for c in old_classes.values() if c["termSourcedIds"] == FALL)
    set_cell(classes, find_line(classes, "sourcedId", moved["sourcedId"]), "termSourcedIds", SPRING)
    # a teacher's orgSourcedIds reordered: the same set, not an update
    teacher = next(
        u for u in old_users.values() if u["role"] == "teacher" and "," in u["orgSourcedIds"]
    )
    line = find_line(users, "sourcedId", teacher["sourcedId"])
    set_cell(users, line, "orgSourcedIds", ",".join(reversed(teacher["orgSourcedIds"].split(","))))
    # quoting style of empty fields changed in one file: no update
    quote_empty_fields(day2 / "courses.csv")

    outcome = pipeline.ingest_path(TENANT, day2)
    assert (outcome.status, outcome.exit_code) == ("accepted", 0)
    evs = events(store, after=mark)
    assert all(e["set_id"] == outcome.set_id for e in evs)
    new_users = by_id(users)
    new_enrollments = by_id(enrollments)

    # one run of events per type, in apply order (the order within a run is not specified)
    gone = sorted([gone_a, gone_b])
    expected = [
        ("classes.updated", [moved["sourcedId"]]),
        ("users.created", ["new-student-1"]),
        ("users.updated", sorted([*emailed, *g_a])),
        ("demographics.created", ["new-student-1"]),
        ("enrollments.created", ["new-enr-1", "new-enr-2"]),
        ("enrollments.deleted", sorted(r["sourcedId"] for r in removed_enrollments)),
        ("demographics.deleted", gone),
        ("users.deleted", gone),
    ]
    recs = record_events(evs)
    runs = [
        (kind, sorted(e["data"]["object"]["sourcedId"] for e in group))
        for kind, group in itertools.groupby(recs, key=lambda e: e["type"])
    ]
    assert runs == expected
    assert [e["type"] for e in evs[len(recs) :]] == ["sets.accepted"]
    assert Counter(e["type"] for e in recs) == {
        "classes.updated": 1,
        "users.created": 1,
        "users.updated": 2 + len(g_a),
        "demographics.created": 1,
        "enrollments.created": 2,
        "enrollments.deleted": len(removed_enrollments),
        "demographics.deleted": 2,
        "users.deleted": 2,
    }

    # every update: the exact previous attributes and the record as it is now
    updates = {
        (e["type"], e["data"]["object"]["sourcedId"]): e["data"]
        for e in recs
        if "updated" in e["type"]
    }
    expected_updates = {("classes.updated", moved["sourcedId"]): {"termSourcedIds": FALL}}
    for sid in emailed:
        expected_updates["users.updated", sid] = {"email": old_users[sid]["email"]}
    for gid in g_a:
        expected_updates["users.updated", gid] = {
            "agentSourcedIds": old_users[gid]["agentSourcedIds"]
        }
    assert {k: d["previous_attributes"] for k, d in updates.items()} == expected_updates
    for (kind, sid), d in updates.items():
        now = new_users[sid] if kind == "users.updated" else by_id(classes)[sid]
        assert d["object"] == now
        assert list(d) == ["object", "previous_attributes"]
    assert updates["users.updated", emailed[0]]["object"]["email"] == "first.changed@example.org"
    assert updates["classes.updated", moved["sourcedId"]]["object"]["termSourcedIds"] == SPRING

    # creates carry the new rows, deletes the rows as last seen; neither has previous_attributes
    objects = {(e["type"], e["data"]["object"]["sourcedId"]): e["data"] for e in recs}
    assert objects["users.created", "new-student-1"] == {"object": newcomer}
    assert objects["demographics.created", "new-student-1"] == {"object": new_demo}
    for r in new_enr:
        assert objects["enrollments.created", r["sourcedId"]] == {
            "object": new_enrollments[r["sourcedId"]]
        }
    for r in removed_users:
        assert objects["users.deleted", r["sourcedId"]] == {"object": r}
    for r in removed_demographics:
        assert objects["demographics.deleted", r["sourcedId"]] == {"object": r}
    for r in removed_enrollments:
        assert objects["enrollments.deleted", r["sourcedId"]] == {"object": r}

    # the summary counts, and the validator's word on B's guardians (a warning, rows kept)
    n = {e: len(csv_rows(base_set / f"{e}.csv")) for e in spec.ENTITY_NAMES}
    summary = evs[-1]["data"]
    assert summary["counts"] == {
        **no_change_counts(base_set),
        "classes": counts(n["classes"], updated=1, prior=n["classes"]),
        "users": counts(
            n["users"] - 1, created=1, updated=2 + len(g_a), deleted=2, prior=n["users"]
        ),
        "demographics": counts(
            n["demographics"] - 1, created=1, deleted=2, prior=n["demographics"]
        ),
        "enrollments": counts(
            n["enrollments"] + 2 - len(removed_enrollments),
            created=2,
            deleted=len(removed_enrollments),
            prior=n["enrollments"],
        ),
    }
    assert summary["kept_invalid_rows"] == {}
    assert (summary["errors"], summary["warnings"]) == (0, len(g_b))
    report = json.loads(Path(summary["report"]).read_text(encoding="utf-8"))
    assert [c for c in report["counts"] if c["severity"] == "warning"] == [
        {
            "severity": "warning",
            "code": "dangling_reference",
            "file": "users.csv",
            "column": "agentSourcedIds",
            "count": len(g_b),
        }
    ]
    # the new snapshot is day 2, B's guardians included and unchanged
    snap = read_snapshot(state, TENANT, outcome.set_id)
    assert sorted(snap["users"]["sourcedId"].to_list()) == sorted(new_users)
    guardian_b = snap["users"].filter(snap["users"]["sourcedId"] == g_b[0])
    assert guardian_b["agentSourcedIds"].item() == old_users[g_b[0]]["agentSourcedIds"]


# --- 3. safeguards ---------------------------------------------------------------------------


def cut_users_in_half(src: Path, dst: Path) -> tuple[Path, list[dict[str, str]]]:
    """users.csv with the header and the first half of its rows (the rest are all parents)."""
    out = copy_set(src, dst)
    lines = read_lines(out / "users.csv")
    rows = len(lines) - 1
    kept = lines[: 1 + rows // 2]
    head = fields(lines[0])
    removed = [dict(zip(head, fields(x), strict=True)) for x in lines[1 + rows // 2 :]]
    write_lines(out / "users.csv", kept)
    # only parents and guardians go: no enrollment or demographics row loses its user
    assert {r["role"] for r in removed} <= {"parent", "guardian"}
    return out, removed


def test_half_of_the_users_gone_holds_the_set_until_approved(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    snaps_before = tree(state / SNAPSHOTS)
    mark = store.last_event_id()
    half, removed = cut_users_in_half(base_set, tmp_path / "half")
    prior = len(csv_rows(base_set / "users.csv"))

    held = pipeline.ingest_path(TENANT, half)
    assert (held.status, held.exit_code) == ("held", 3)
    reason = {
        "entity": "users",
        "rule": "too_many_deletes",
        "count": len(removed),
        "prior_rows": prior,
        "percent": round(100 * len(removed) / prior, 2),
        "limit": 10.0,
        "message": f"users: {len(removed)} of {prior} rows would be deleted "
        f"({100 * len(removed) / prior:.1f}% > 10%)",
    }
    assert held.summary["reasons"] == [reason]
    evs = events(store, after=mark)
    assert [e["type"] for e in evs] == ["sets.held"]
    assert evs[0]["data"]["status"] == "held"
    assert evs[0]["data"]["reasons"] == [reason]
    assert evs[0]["data"]["counts"]["users"] == counts(
        prior - len(removed), deleted=len(removed), prior=prior
    )
    assert store.get_set(held.set_id).status == "held"
    assert store.snapshot_of(TENANT) == first.set_id
    assert tree(state / SNAPSHOTS) == snaps_before
    assert [r.id for r in store.list_sets(status="held")] == [held.set_id]

    with pytest.raises(UsageError, match="not held"):
        pipeline.approve(first.set_id)

    approved = pipeline.approve(held.set_id)
    assert (approved.status, approved.exit_code, approved.set_id) == ("accepted", 0, held.set_id)
    assert approved.summary["approved"] is True
    evs = events(store, after=mark + 1)
    assert [e["type"] for e in evs] == ["users.deleted"] * len(removed) + ["sets.accepted"]
    assert sorted(e["data"]["object"]["sourcedId"] for e in evs[:-1]) == sorted(
        r["sourcedId"] for r in removed
    )
    assert {e["data"]["object"]["sourcedId"]: e["data"]["object"] for e in evs[:-1]} == {
        r["sourcedId"]: r for r in removed
    }
    assert store.get_set(held.set_id).status == "accepted"
    assert store.snapshot_of(TENANT) == held.set_id
    assert read_snapshot(state, TENANT, held.set_id)["users"].height == prior - len(removed)
    with pytest.raises(UsageError, match="not held"):
        pipeline.reject(held.set_id)


def test_a_held_set_rejected_by_an_operator_changes_nothing(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    half, _ = cut_users_in_half(base_set, tmp_path / "half")
    held = pipeline.ingest_path(TENANT, half)
    assert held.status == "held"
    snaps_before = tree(state / SNAPSHOTS)
    mark = store.last_event_id()

    rejected = pipeline.reject(held.set_id)
    assert (rejected.status, rejected.exit_code) == ("rejected", 1)
    assert store.get_set(held.set_id).status == "rejected"
    evs = events(store, after=mark)
    assert [e["type"] for e in evs] == ["sets.rejected"]
    assert evs[0]["data"]["status"] == "rejected"
    assert evs[0]["data"]["reasons"] == [{"code": "operator", "message": "rejected by an operator"}]
    assert store.snapshot_of(TENANT) == first.set_id
    assert tree(state / SNAPSHOTS) == snaps_before
    assert (half / "users.csv").exists()  # nothing received is deleted
    assert (sets.set_dir(state, TENANT, held.set_id) / "raw" / "users.csv").exists()
    with pytest.raises(UsageError, match="not held"):
        pipeline.approve(held.set_id)


def test_a_tenants_first_set_is_never_held(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    half, _ = cut_users_in_half(base_set, tmp_path / "half")
    outcome = pipeline.ingest_path("newcomer", half)
    assert (outcome.status, outcome.exit_code) == ("accepted", 0)
    assert store.snapshot_of("newcomer") == outcome.set_id


def test_tenant_thresholds_let_the_half_cut_pass(
    base_set: Path, tmp_path: Path, state: Path, store: EventStore
) -> None:
    lenient = TenantPolicy(safeguards=SafeguardPolicy(max_delete_percent=60))
    pipeline = Pipeline(state, store, lambda t: lenient if t == "lenient" else TenantPolicy())
    half, removed = cut_users_in_half(base_set, tmp_path / "half")
    for tenant in ("lenient", "strict"):
        assert pipeline.ingest_path(tenant, copy_set(base_set, tmp_path / tenant)).status == (
            "accepted"
        )
    mark = store.last_event_id()
    assert pipeline.ingest_path("strict", half).status == "held"
    outcome = pipeline.ingest_path("lenient", half)
    assert (outcome.status, outcome.exit_code) == ("accepted", 0)
    types = Counter(e["type"] for e in events(store, after=mark))
    assert types == {"sets.held": 1, "users.deleted": len(removed), "sets.accepted": 1}


def test_an_emptied_entity_and_too_many_updates_hold(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    changed = copy_set(base_set, tmp_path / "changed")
    demo = changed / "demographics.csv"
    write_lines(demo, read_lines(demo)[:1])  # a header and no rows
    orgs = changed / "orgs.csv"
    n_orgs = len(read_lines(orgs)) - 1
    for line in range(2, n_orgs + 2):
        set_cell(orgs, line, "name", f"Renamed {line}")
    n_demo = len(csv_rows(base_set / "demographics.csv"))
    outcome = pipeline.ingest_path(TENANT, changed)
    assert outcome.status == "held"
    assert [(r["entity"], r["rule"], r["count"]) for r in outcome.summary["reasons"]] == [
        ("orgs", "too_many_updates", n_orgs),
        ("demographics", "emptied", n_demo),
    ]
    assert outcome.summary["reasons"][1]["message"] == (
        f"demographics: all {n_demo} rows would be deleted"
    )


# --- 4. rejected sets --------------------------------------------------------------------------


def test_a_set_with_a_windows_1252_byte_is_rejected_and_reported(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    snaps_before = tree(state / SNAPSHOTS)
    mark = store.last_event_id()
    bad = copy_set(base_set, tmp_path / "bad")
    users = bad / "users.csv"
    line_no = 5
    row = dict(zip(header(users), fields(read_lines(users)[line_no - 1]), strict=True))
    lines = users.read_bytes().split(b"\n")
    given = row["givenName"].encode()
    prefix = lines[line_no - 1].split(b"," + given + b",", 1)[0] + b"," + given
    lines[line_no - 1] = lines[line_no - 1].replace(b"," + given + b",", b"," + given + b"\xe9,", 1)
    users.write_bytes(b"\n".join(lines))
    column = len(prefix.decode()) + 1

    outcome = pipeline.ingest_path(TENANT, bad)
    assert (outcome.status, outcome.exit_code) == ("rejected", 1)
    folder = state / "sets" / TENANT / outcome.set_id
    assert (folder / "report.txt").is_file()
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["verdict"] == "rejected"
    assert outcome.summary["report"] == str(folder / "report.json")
    assert store.get_set(outcome.set_id).report_path == str(folder / "report.json")
    not_utf8 = [
        {
            "code": "not_utf8",
            "message": f"users.csv is not UTF-8: byte 0xE9 at line {line_no}, column {column} "
            "(in Windows-1252 that is 'é')",
            "fix": "export the file as UTF-8 (in the SIS export settings, or re-save from Excel "
            "as 'CSV UTF-8'); OneRoster requires UTF-8",
            "file": "users.csv",
            "line": line_no,
            "column": f"#{column}",
        }
    ]
    # the unreadable file is not also reported as missing: one reason, the real one
    reasons = outcome.summary["reasons"]
    assert reasons == not_utf8
    evs = events(store, after=mark)
    assert [e["type"] for e in evs] == ["sets.rejected"]
    assert evs[0]["data"] == outcome.summary
    assert evs[0]["data"]["status"] == "rejected"
    assert store.get_set(outcome.set_id).status == "rejected"
    assert store.snapshot_of(TENANT) == first.set_id
    assert tree(state / SNAPSHOTS) == snaps_before
    # no cell value of the broken row in the summary or the event
    text = json.dumps(outcome.summary, ensure_ascii=False) + event_json(
        store.read_events(after=mark)[0]
    )
    for col in ("sourcedId", "username", "givenName", "familyName", "email", "identifier"):
        assert row[col] and row[col] not in text, col


def test_too_many_invalid_rows_reject_without_cell_values(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    mark = store.last_event_id()
    bad = copy_set(base_set, tmp_path / "bad")
    enrollments = bad / "enrollments.csv"
    lines = read_lines(enrollments)
    head = fields(lines[0])
    for i in range(1, 41):  # 40 of 2937 rows: above 1%
        row = fields(lines[i])
        row[head.index("role")] = "teecher-XYZZY"
        lines[i] = join(row)
    write_lines(enrollments, lines)
    outcome = pipeline.ingest_path(TENANT, bad)
    assert outcome.status == "rejected"
    n = len(lines) - 1
    assert outcome.summary["reasons"] == [
        {
            "code": "too_many_invalid_rows",
            "message": f"enrollments.csv: 40 of {n} rows are invalid (limit 1%)",
            "fix": "fix the errors listed for this file and export again",
            "file": "enrollments.csv",
            "line": None,
            "column": None,
        }
    ]
    evs = events(store, after=mark)
    assert [e["type"] for e in evs] == ["sets.rejected"]
    assert "XYZZY" not in json.dumps(evs[0])
    assert "XYZZY" in Path(outcome.summary["report"]).read_text(encoding="utf-8")


def test_an_invalid_row_keeps_its_previous_version(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    mark = store.last_event_id()
    bad = copy_set(base_set, tmp_path / "bad")
    users = bad / "users.csv"
    student = next(r for r in csv_rows(users) if r["role"] == "student")
    sid = student["sourcedId"]
    set_cell(users, find_line(users, "sourcedId", sid), "enabledUser", "maybe")
    n_enr = sum(r["userSourcedId"] == sid for r in csv_rows(bad / "enrollments.csv"))
    outcome = pipeline.ingest_path(TENANT, bad)
    assert outcome.status == "accepted"
    # the user, its demographics and its enrollments were dropped as invalid: all kept, no delete
    assert outcome.summary["kept_invalid_rows"] == {
        "users": 1,
        "demographics": 1,
        "enrollments": n_enr,
    }
    assert [e["type"] for e in events(store, after=mark)] == ["sets.accepted"]
    snap = read_snapshot(state, TENANT, outcome.set_id)
    kept = snap["users"].filter(snap["users"]["sourcedId"] == sid)
    assert kept["enabledUser"].item() == "true"


# --- 5. recovery ----------------------------------------------------------------------------------


def test_recover_processes_received_sets_adopts_orphans_and_clears_copies(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    # a set claimed and recorded, then a crash before processing
    received_id, _, digest = sets.claim_copy(state, "alpha", base_set)
    store.add_set(received_id, "alpha", "sftp", digest)
    # a set claimed, never recorded
    orphan_id, orphan_folder, orphan_digest = sets.claim_copy(state, "beta", base_set)
    # a copy interrupted halfway
    leftover = state / "sets" / "beta" / ".copy-01ABCDEFGHJKMNPQRSTVWXYZ00"
    (leftover / "raw").mkdir(parents=True)
    (leftover / "raw" / "users.csv").write_text("half", encoding="utf-8")
    assert store.pending_sets()[0].id == received_id
    assert store.get_set(orphan_id) is None

    outcomes = pipeline.recover()
    assert [(o.set_id, o.tenant, o.status) for o in outcomes] == [
        (received_id, "alpha", "accepted"),
        (orphan_id, "beta", "accepted"),
    ]
    assert not leftover.exists()
    assert orphan_folder.is_dir()
    adopted = store.get_set(orphan_id)
    assert (adopted.source, adopted.digest, adopted.status) == (
        "recovered",
        orphan_digest,
        "accepted",
    )
    assert store.get_set(received_id).source == "sftp"
    assert store.snapshot_of("alpha") == received_id
    assert store.snapshot_of("beta") == orphan_id
    rows = sum(len(csv_rows(base_set / f"{e}.csv")) for e in spec.ENTITY_NAMES)
    evs = events(store)
    assert Counter((e["tenant"], e["type"] == "sets.accepted") for e in evs) == {
        ("alpha", False): rows,
        ("alpha", True): 1,
        ("beta", False): rows,
        ("beta", True): 1,
    }
    assert store.pending_sets() == []
    assert pipeline.recover() == []  # nothing left to do; no event twice
    assert store.last_event_id() == len(evs)


def test_recover_completes_a_half_made_move(
    base_set: Path, state: Path, pipeline: Pipeline, store: EventStore
) -> None:
    moving = state / "sets" / "gamma" / ".claim-01ABCDEFGHJKMNPQRSTVWXYZ11"
    shutil.copytree(base_set, moving / "raw")
    outcomes = pipeline.recover()
    assert [(o.set_id, o.status) for o in outcomes] == [("01ABCDEFGHJKMNPQRSTVWXYZ11", "accepted")]
    assert (state / "sets" / "gamma" / "01ABCDEFGHJKMNPQRSTVWXYZ11" / "raw" / "users.csv").exists()
    assert not moving.exists()


# --- 6. snapshot retention ----------------------------------------------------------------------


def test_snapshot_retention(base_set: Path, tmp_path: Path, state: Path, store: EventStore) -> None:
    pipeline = Pipeline(state, store, lambda t: TenantPolicy(snapshot_retention=2))
    accepted = []
    current = copy_set(base_set, tmp_path / "day0")
    users = current / "users.csv"
    for day in range(4):
        if day:
            set_cell(users, 2, "email", f"day{day}@example.org")
        outcome = pipeline.ingest_path(TENANT, current)
        assert outcome.status == "accepted"
        accepted.append(outcome.set_id)
    folders = sorted(p.name for p in (state / SNAPSHOTS / TENANT).iterdir())
    assert folders == accepted[-2:]
    assert store.snapshot_of(TENANT) == accepted[-1]
    assert (
        read_snapshot(state, TENANT, accepted[-1])["users"]["email"]
        .to_list()
        .count("day3@example.org")
        == 1
    )


# --- more of a set's life -------------------------------------------------------------------------


def test_an_older_held_set_is_superseded_by_an_accepted_one(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    half, _ = cut_users_in_half(base_set, tmp_path / "half")
    first_hold = pipeline.ingest_path(TENANT, half)
    second_hold = pipeline.ingest_path(TENANT, half)  # not a duplicate of the current set
    assert (first_hold.status, second_hold.status) == ("held", "held")
    approved = pipeline.approve(second_hold.set_id)
    assert approved.status == "accepted"
    assert store.get_set(first_hold.set_id).status == "superseded"
    with pytest.raises(UsageError, match="is superseded, not held"):
        pipeline.approve(first_hold.set_id)
    # the same files as the current set are now a duplicate
    assert pipeline.ingest_path(TENANT, half).status == "duplicate"


def test_a_zip_then_the_same_files_loose_then_a_bom(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    archive = zip_dir(base_set, tmp_path / "set.zip")
    first = pipeline.ingest_path(TENANT, archive)
    assert first.status == "accepted"
    assert (sets.set_dir(pipeline.state_dir, TENANT, first.set_id) / "raw" / "set.zip").is_file()
    mark = store.last_event_id()
    assert mark == sum(len(csv_rows(base_set / f"{e}.csv")) for e in spec.ENTITY_NAMES) + 1
    loose = pipeline.ingest_path(TENANT, base_set)
    assert loose.status == "accepted"  # other bytes, same rows
    bom = copy_set(base_set, tmp_path / "bom")
    (bom / "orgs.csv").write_bytes(b"\xef\xbb\xbf" + (bom / "orgs.csv").read_bytes())
    assert pipeline.ingest_path(TENANT, bom).status == "accepted"
    assert [e["type"] for e in events(store, after=mark)] == ["sets.accepted"] * 2


def users_delta(folder: Path, head: list[str], rows: list[dict[str, str]]) -> Path:
    """A set of one delta users.csv holding `rows`, every other file declared absent."""
    folder.mkdir()
    write_lines(folder / "users.csv", [join(head), *(join([r[h] for h in head]) for r in rows)])
    absent = [f"file.{e},absent" for e in spec.ENTITY_NAMES if e != "users"]
    write_lines(
        folder / "manifest.csv",
        [
            "propertyName,value",
            "manifest.version,1.0",
            "oneroster.version,1.1",
            "file.users,delta",
            *absent,
        ],
    )
    return folder


def test_a_delta_file_changes_only_what_it_names(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    mark = store.last_event_id()
    old = csv_rows(base_set / "users.csv")
    head = header(base_set / "users.csv")
    parent = next(r for r in reversed(old) if r["role"] == "parent")
    student = next(r for r in old if r["role"] == "student")
    stamp = "2026-12-01T00:00:00.000Z"
    gone = {**parent, "status": "tobedeleted", "dateLastModified": stamp}
    changed = {**student, "status": "active", "dateLastModified": stamp, "email": "d@x.org"}
    delta = users_delta(tmp_path / "delta", head, [gone, changed])
    outcome = pipeline.ingest_path(TENANT, delta)
    assert outcome.status == "accepted", outcome.summary.get("reasons")
    evs = events(store, after=mark)
    assert [(e["type"], e["data"]["object"]["sourcedId"]) for e in evs[:-1]] == [
        ("users.updated", student["sourcedId"]),
        ("users.deleted", parent["sourcedId"]),
    ]
    # blank status before, active now: the same; the stamp is ignored
    assert evs[0]["data"]["previous_attributes"] == {"email": student["email"]}
    assert evs[0]["data"]["object"] == changed
    assert evs[1]["data"]["object"] == parent  # as last seen
    n = {e: len(csv_rows(base_set / f"{e}.csv")) for e in spec.ENTITY_NAMES}
    assert evs[-1]["data"]["counts"] == {
        **no_change_counts(base_set),
        "users": counts(n["users"] - 1, updated=1, deleted=1, prior=n["users"]),
    }
    snap = read_snapshot(state, TENANT, outcome.set_id)
    before = read_snapshot(state, TENANT, first.set_id)
    assert {e: f.height for e, f in snap.items()} == {**n, "users": n["users"] - 1}
    assert snap["enrollments"].sort("sourcedId").equals(before["enrollments"].sort("sourcedId"))


def test_a_crash_after_the_snapshot_was_written_loses_and_repeats_nothing(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    mark = store.last_event_id()
    day2 = copy_set(base_set, tmp_path / "day2")
    users = day2 / "users.csv"
    sid = next(r for r in csv_rows(users) if r["role"] == "teacher")["sourcedId"]
    old_email = set_cell(users, find_line(users, "sourcedId", sid), "email", "t@x.org")
    set_id, _, digest = sets.claim_copy(state, TENANT, day2)
    store.add_set(set_id, TENANT, "sftp", digest)
    # the crash: a snapshot folder of the set exists, the transaction never ran
    write_snapshot(state, TENANT, set_id, read_snapshot(state, TENANT, first.set_id))
    assert store.snapshot_of(TENANT) == first.set_id

    [outcome] = pipeline.recover()
    assert (outcome.set_id, outcome.status) == (set_id, "accepted")
    evs = events(store, after=mark)
    assert [e["type"] for e in evs] == ["users.updated", "sets.accepted"]
    assert evs[0]["data"]["previous_attributes"] == {"email": old_email}
    assert store.snapshot_of(TENANT) == set_id
    snap = read_snapshot(state, TENANT, set_id)["users"]
    assert snap.filter(snap["sourcedId"] == sid)["email"].item() == "t@x.org"
    assert pipeline.recover() == []


def test_an_unreadable_snapshot_rejects_the_set_and_keeps_its_files(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    (state / SNAPSHOTS / TENANT / first.set_id / "users.parquet").write_bytes(b"not parquet")
    mark = store.last_event_id()
    day2, _ = edit_first_email(base_set, tmp_path / "day2")
    outcome = pipeline.ingest_path(TENANT, day2)
    assert (outcome.status, outcome.exit_code) == ("rejected", 1)
    [reason] = outcome.summary["reasons"]
    assert reason["code"] == "internal_error"
    assert reason["message"].endswith("the files are kept, see the daemon log")
    assert [e["type"] for e in events(store, after=mark)] == ["sets.rejected"]
    assert store.snapshot_of(TENANT) == first.set_id
    raw = sets.set_dir(state, TENANT, outcome.set_id) / "raw"
    assert tree(raw) == tree(day2)


def edit_first_email(src: Path, dst: Path) -> tuple[Path, str]:
    out = copy_set(src, dst)
    return out, set_cell(out / "users.csv", 2, "email", "first@x.org")


def test_more_events_of_one_type_than_one_insert_chunk(
    tmp_path: Path, pipeline: Pipeline, store: EventStore
) -> None:
    big = tmp_path / "big"
    generate(big, students=2100, seed=3)
    files = {e: csv_rows(big / f"{e}.csv") for e in spec.ENTITY_NAMES}
    assert len(files["enrollments"]) > 20_000  # the store inserts 20,000 per statement
    outcome = pipeline.ingest_path(TENANT, big)
    total = sum(len(r) for r in files.values())
    assert (outcome.events.first, outcome.events.last) == (1, total + 1)
    rows = store.read_events(type_glob="enrollments.created")
    assert [r[0] for r in rows] == list(range(total - len(files["enrollments"]) + 1, total + 1))
    got = sorted(json.loads(r[5])["object"]["sourcedId"] for r in rows)
    assert got == sorted(r["sourcedId"] for r in files["enrollments"])


# --- snapshots and their fingerprints ---------------------------------------------------------


def day_two(base: Path, dst: Path) -> Path:
    """A copy of `base` with an update, a delete and a create in users.csv."""
    out = copy_set(base, dst)
    users = out / "users.csv"
    rows = csv_rows(users)
    students = [r for r in rows if r["role"] == "student"]
    set_cell(users, find_line(users, "sourcedId", students[0]["sourcedId"]), "email", "a@x.org")
    gone = students[1]["sourcedId"]
    remove_rows(users, "sourcedId", {gone})
    remove_rows(out / "demographics.csv", "sourcedId", {gone})
    remove_rows(out / "enrollments.csv", "userSourcedId", {gone})
    append_rows(users, [{**students[2], "sourcedId": "new-1", "username": "new.1"}])
    return out


def test_snapshots_without_fingerprints_from_an_older_ingestd_diff_the_same(
    base_set: Path, tmp_path: Path
) -> None:
    day1 = copy_set(base_set, tmp_path / "day1")
    day2 = day_two(base_set, tmp_path / "day2")
    logs = {}
    for variant in ("with", "without"):
        state = tmp_path / variant
        with EventStore.open(state) as store:
            pipeline = Pipeline(state, store)
            first = pipeline.ingest_path(TENANT, day1)
            folder = state / SNAPSHOTS / TENANT / first.set_id
            stored = pl.read_parquet(folder / "users.parquet")
            assert stored.columns[-2:] == ["__h1", "__h2"]
            about = json.loads((folder / snapshot.FINGERPRINTS).read_text(encoding="utf-8"))
            assert set(about["columns"]) == set(spec.ENTITY_NAMES)
            assert about["columns"]["users"][0] == "sourcedId"
            if variant == "without":  # as ingestd wrote them before fingerprints
                for path in folder.glob("*.parquet"):
                    if not path.name.endswith(".lines.parquet"):
                        pl.read_parquet(path).drop("__h1", "__h2").write_parquet(path)
                assert load_snapshot(state, TENANT, first.set_id)[1] == {}
            snap = read_snapshot(state, TENANT, first.set_id)
            assert "__h1" not in snap["users"].columns
            mark = store.last_event_id()
            assert pipeline.ingest_path(TENANT, day2).status == "accepted"
            logs[variant] = [(e["type"], e["data"]) for e in record_events(events(store, mark))]
    assert logs["with"] == logs["without"]
    assert Counter(t for t, _ in logs["with"]) == {
        "users.created": 1,
        "users.updated": 1,
        "users.deleted": 1,
        "demographics.deleted": 1,
    } | {"enrollments.deleted": len(logs["with"]) - 4}


def test_fingerprints_made_by_another_polars_are_not_trusted(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, state: Path, monkeypatch: Any
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    tables, prints = load_snapshot(state, TENANT, first.set_id)
    assert set(prints) == set(tables) == set(spec.ENTITY_NAMES)
    assert all(p.hashes.height == tables[e].height for e, p in prints.items())
    monkeypatch.setattr(snapshot, "_probe", lambda: "another hash")
    assert load_snapshot(state, TENANT, first.set_id)[1] == {}


def wal_frames(state: Path) -> int:
    """Frames in the WAL not yet copied into the database file (another connection's view)."""
    db = sqlite3.connect(state / "ingestd.db")
    try:
        _, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log - done if log > 0 else 0
    finally:
        db.close()


def test_the_checkpoint_after_a_set_can_be_left_to_the_caller(
    base_set: Path, tmp_path: Path, state: Path, store: EventStore
) -> None:
    deferred = Pipeline(state, store, checkpoint_after_set=False)
    outcome = deferred.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    assert outcome.status == "accepted"
    assert "checkpoint" not in outcome.timings
    assert {"claim", "validate", "diff", "write_snapshot", "commit"} <= set(outcome.timings)
    log_before = store.db.execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    assert log_before[1] > 100  # the commit's pages are in the WAL, not yet checkpointed
    store.checkpoint()
    assert wal_frames(state) == 0
    # the default: checkpointed when the set is done
    day2 = day_two(base_set, tmp_path / "day2")
    second = Pipeline(state, store).ingest_path(TENANT, day2)
    assert second.status == "accepted" and "checkpoint" in second.timings
    assert wal_frames(state) == 0


def test_a_snapshot_that_cannot_be_written_rolls_the_commit_back(
    base_set: Path, tmp_path: Path, pipeline: Pipeline, store: EventStore, state: Path
) -> None:
    first = pipeline.ingest_path(TENANT, copy_set(base_set, tmp_path / "day1"))
    mark = store.last_event_id()
    threads = threading.active_count()
    # a file where the snapshot's temp folder goes: the writer thread fails mid-commit
    day2 = day_two(base_set, tmp_path / "day2")
    set_id, _, digest = sets.claim_copy(state, TENANT, day2)
    store.add_set(set_id, TENANT, "cli", digest)
    (state / SNAPSHOTS / TENANT / f".tmp-{set_id}").write_text("in the way", encoding="utf-8")
    outcome = pipeline.process(set_id)
    assert outcome.status == "rejected"
    assert outcome.summary["reasons"][0]["code"] == "internal_error"
    assert [e["type"] for e in events(store, after=mark)] == ["sets.rejected"]
    assert store.snapshot_of(TENANT) == first.set_id
    assert not (state / SNAPSHOTS / TENANT / set_id).exists()
    assert threading.active_count() == threads
