"""Snapshots stored as a difference from an earlier whole file (snapshot.py): read back, they
are exactly the state a whole file would hold, and the diffs and events do not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.pipeline import snapshot
from ingestd.pipeline.ingest import Pipeline
from ingestd.pipeline.snapshot import SNAPSHOTS, load_snapshot, prune_snapshots
from tests.oneroster.corpus import copy_set, find_line, set_cell
from tests.pipeline.test_ingest import (
    TENANT,
    base_set,  # noqa: F401  (a fixture)
    csv_rows,
    day_two,
    events,
    header,
    record_events,
    users_delta,
)

STAMP = "2026-12-01T00:00:00.000Z"


def students(path: Path) -> list[dict[str, str]]:
    return [r for r in csv_rows(path / "users.csv") if r["role"] == "student"]


def day_three(day2: Path, dst: Path) -> Path:
    """day2 with an invalid row (its previous version is kept), a row changed only in an
    ignored column, and a blank status written as `active` (neither is an update)."""
    out = copy_set(day2, dst)
    users = out / "users.csv"
    s = students(out)
    set_cell(users, find_line(users, "sourcedId", s[5]["sourcedId"]), "enabledUser", "maybe")
    set_cell(users, find_line(users, "sourcedId", s[6]["sourcedId"]), "dateLastModified", STAMP)
    set_cell(users, find_line(users, "sourcedId", s[7]["sourcedId"]), "status", "active")
    return out


def day_four(day3: Path, dst: Path) -> Path:
    """A delta set: one user changed, one deleted; every other file absent."""
    head = header(day3 / "users.csv")
    s = students(day3)
    changed = {**s[8], "status": "active", "dateLastModified": STAMP, "email": "four@x.org"}
    gone = {**s[9], "status": "tobedeleted", "dateLastModified": STAMP}
    return users_delta(dst, head, [changed, gone])


def run_days(state: Path, days: list[Path]) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Ingest the days in order: the accepted set ids and each day's record events."""
    ids, logs = [], []
    with EventStore.open(state) as store:
        pipeline = Pipeline(state, store)
        for day in days:
            mark = store.last_event_id()
            outcome = pipeline.ingest_path(TENANT, day)
            assert outcome.status == "accepted", outcome.summary.get("reasons")
            ids.append(outcome.set_id)
            logs.append([(e["type"], e["data"]) for e in record_events(events(store, mark))])
    return ids, logs


@pytest.fixture
def days(base_set: Path, tmp_path: Path) -> list[Path]:  # noqa: F811
    day1 = copy_set(base_set, tmp_path / "day1")
    day2 = day_two(base_set, tmp_path / "day2")
    day3 = day_three(day2, tmp_path / "day3")
    day4 = day_four(day3, tmp_path / "day4")
    return [day1, day2, day3, day4, day2]  # and back: the invalid row is valid again


def test_differences_read_back_as_the_whole_state_and_change_no_event(
    days: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, logs = run_days(tmp_path / "delta", days)
    monkeypatch.setattr(snapshot, "DELTA_MAX_SHARE", -1.0)  # every entity written whole
    whole_ids, whole_logs = run_days(tmp_path / "whole", days)

    assert logs == whole_logs
    assert logs[2] == []  # day 3: a kept row, an ignored column, a blank written as active
    assert sorted(t for t, _ in logs[3]) == ["users.deleted", "users.updated"]

    folders = tmp_path / "delta" / SNAPSHOTS / TENANT
    first_users = (folders / ids[0] / "users.parquet").stat().st_ino
    for set_id in ids[1:]:
        assert not (folders / set_id / "users.parquet").exists()
        assert (folders / set_id / "users.base.parquet").stat().st_ino == first_users
    for set_id, whole_id in zip(ids, whole_ids, strict=True):
        tables, prints = load_snapshot(tmp_path / "delta", TENANT, set_id)
        whole_tables, whole_prints = load_snapshot(tmp_path / "whole", TENANT, whole_id)
        assert tables.keys() == whole_tables.keys() == set(spec.ENTITY_NAMES)
        for entity, frame in tables.items():
            assert frame.equals(whole_tables[entity]), (set_id, entity)  # rows, values, order
            assert prints[entity].hashes.equals(whole_prints[entity].hashes)
            assert prints[entity].columns == whole_prints[entity].columns

    # what changed only in ignored columns or kept its previous version is stored as it is
    users = load_snapshot(tmp_path / "delta", TENANT, ids[2])[0]["users"]
    s = students(days[2])
    by_id = {r["sourcedId"]: r for r in users.iter_rows(named=True)}
    assert by_id[s[6]["sourcedId"]]["dateLastModified"] == STAMP
    assert by_id[s[7]["sourcedId"]]["status"] == "active"
    assert by_id[s[5]["sourcedId"]]["enabledUser"] == "true"  # the last valid version

    # the snapshot a difference was made from can go: the link keeps its rows
    prune_snapshots(tmp_path / "delta", TENANT, {ids[-1]}, 1)
    assert sorted(p.name for p in folders.iterdir() if not p.name.startswith(".")) == [ids[-1]]
    last = load_snapshot(tmp_path / "delta", TENANT, ids[-1])[0]
    whole_last = load_snapshot(tmp_path / "whole", TENANT, whole_ids[-1])[0]
    assert all(frame.equals(whole_last[e]) for e, frame in last.items())


def test_an_entity_with_too_many_new_rows_is_written_whole_and_becomes_the_base(
    days: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "DELTA_MAX_SHARE", 0.0)  # one new row is too many
    state = tmp_path / "state"
    ids, _ = run_days(state, days[:3])
    folders = state / SNAPSHOTS / TENANT
    day2 = folders / ids[1]
    assert (day2 / "users.parquet").exists()  # a created and an updated user
    assert (day2 / "courses.base.parquet").exists()  # nothing new: the difference is empty
    assert (day2 / "courses.delta.parquet").exists()
    day3 = folders / ids[2]
    assert (day3 / "users.parquet").exists()  # two users differ from day 2 in ignored values
    assert (day3 / "courses.base.parquet").stat().st_ino == (
        (folders / ids[0] / "courses.parquet").stat().st_ino
    )


def test_a_difference_that_cannot_be_read_back_rejects_the_next_set(
    days: list[Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ids, _ = run_days(state, days[:2])
    (state / SNAPSHOTS / TENANT / ids[1] / "users.order.parquet").unlink()
    with EventStore.open(state) as store:
        mark = store.last_event_id()
        outcome = Pipeline(state, store).ingest_path(TENANT, days[2])
        assert outcome.status == "rejected"
        [reason] = outcome.summary["reasons"]
        assert reason["code"] == "internal_error"
        assert [e["type"] for e in events(store, mark)] == ["sets.rejected"]
        assert store.snapshot_of(TENANT) == ids[1]
