"""Crash safety against real processes: `ingestd ingest` SIGKILLed at random moments.

DESIGN.md, "A set's life", step 6: a crash before the commit transaction leaves the
old snapshot current and the set `received`; the next start processes it again, and
since events are only inserted in that transaction, none is lost or duplicated. So
whenever the kill lands, running the same command again (it recovers first) must
leave exactly the event log of an uninterrupted run.

Each trial: a fresh state dir, `ingestd ingest` started, SIGKILLed after a delay drawn
uniformly from [0, duration of an uninterrupted run] by random.Random(seed), then the
same command run to completion. Where the kill landed (read from the files and a
copy of the database, so the recovery still meets the WAL the kill left) is printed:
`pytest -s tests/test_crash.py`.

Last, two processes recovering the same set (one paused with SIGSTOP at a point found by
watching the state dir, so the interleaving is the same every time).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

from ingestd.events.feed import events as feed_events
from ingestd.events.store import EventStore
from ingestd.oneroster.sample import generate

STUDENTS = 1200  # an ingest of ~1.2 s; the file runs in ~80 s on 2 busy cores
SEED = 5
DAY1_SEEDS = range(20)  # kill delays: random.Random(seed).uniform(0, duration)
DAY2_SEEDS = range(100, 110)
TENANT = "t1"
ENV = {k: v for k, v in os.environ.items() if k != "INGESTD_CONFIG"}

# Where a kill landed, in the order a run passes through them.
PHASES = (
    "starting",  # interpreter, imports, recover(): nothing of this set exists yet
    "copying",  # sets/t1/.copy-<id>/ being filled
    "claimed",  # sets/t1/<id>/ in place, not yet recorded in the database
    "validating",  # recorded `received`, no report yet
    "diffing",  # report written, no snapshot yet
    "writing snapshot",  # snapshots/t1/.tmp-<id>/
    "snapshot in place",  # snapshots/t1/<id>/, set still `received`, commit not begun
    "committing",  # ... and the WAL holds the commit's uncommitted pages
    "committed",  # set `accepted`, process not yet exited
    "finished",  # the process had exited before the kill
)
BEFORE_COMMIT = PHASES[: PHASES.index("committed")]

# A WAL this big while the set is still `received` means the kill fell inside the commit
# transaction (its pages spill to the WAL before COMMIT); recording the set takes a few pages.
COMMIT_WAL_BYTES = 512 * 1024

# Fields of sets.* event data that differ between two runs of the same set by nature.
VOLATILE_SET_FIELDS = ("set_id", "received", "report", "base_set_id")


# --- processes -------------------------------------------------------------------------------


def command(config: Path, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ingestd", "--config", str(config), *map(str, args)]


def run(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(config, *args),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


def ingest(config: Path, path: Path) -> subprocess.CompletedProcess[str]:
    done = run(config, "ingest", TENANT, path)
    assert done.returncode == 0, f"ingest exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def killed_ingest(config: Path, path: Path, delay: float, log: Path) -> bool:
    """Start `ingest`, SIGKILL it after `delay` seconds; True when it had already exited."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command(config, "ingest", TENANT, path), stdout=out, stderr=out, env=ENV
        )
        try:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode == -signal.SIGKILL:
        return False
    assert proc.returncode == 0, f"exited {proc.returncode}: {log.read_text(errors='replace')}"
    return True


def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "ingestd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{folder / "state"}"\nlog_format = "json"\n', encoding="utf-8"
    )
    return config


def state_of(config: Path) -> Path:
    return config.parent / "state"


# --- reading the outcome -----------------------------------------------------------------------


def dump_events(state: Path) -> list[str]:
    """The lines `ingestd events` prints (the same function, in this process)."""
    with EventStore.open(state) as store:
        return list(feed_events(store))


def dump_sets(state: Path) -> list[dict[str, Any]]:
    """What `ingestd sets --json` prints (the same query, in this process)."""
    with EventStore.open(state) as store:
        return [{k: getattr(r, k) for k in r.__slots__} for r in store.list_sets()]


def cli_dumps(config: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """`ingestd events` and `ingestd sets --json` as real processes."""
    events = run(config, "events")
    assert events.returncode == 0, events.stderr
    sets = run(config, "sets", "--json")
    assert sets.returncode == 0, sets.stderr
    return events.stdout.splitlines(), [json.loads(line) for line in sets.stdout.splitlines()]


# `ingestd events` lines (feed.event_json): record events are compared by their data's text.
_LINE = re.compile(
    r'\{"id":(\d+),"type":"([^"]+)","created":"[^"]*","tenant":"([^"]*)",'
    r'"set_id":(?:"([^"]*)"|null),"data":(.*)\}'
)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    tenant: str
    set_id: str | None
    data: Any  # a record event's data as JSON text; a set event's data parsed, volatile fields out

    @property
    def key(self) -> tuple[int, str, str, Any]:
        """What two runs of the same sets must agree on."""
        return self.id, self.type, self.tenant, self.data


def parse(line: str) -> Event:
    """An event without what legitimately differs between two runs of the same sets."""
    match = _LINE.fullmatch(line)
    if match and not match[2].startswith("sets."):
        return Event(int(match[1]), match[2], match[3], match[4], match[5])
    event = json.loads(line)
    data = event["data"]
    if event["type"].startswith("sets."):
        assert data.get("set_id") == event["set_id"], line
        data = {k: v for k, v in data.items() if k not in VOLATILE_SET_FIELDS}
        # "recovered" when the kill fell between claiming the folder and recording it
        assert data.pop("source") in ("cli", "recovered"), line
    return Event(event["id"], event["type"], event["tenant"], event["set_id"], data)


def parse_log(lines: list[str]) -> list[Event]:
    return [parse(line) for line in lines]


def reference_log(lines: list[str]) -> list[Event]:
    """The parsed reference, checked against a full JSON parse of every line."""
    events = parse_log(lines)
    for line, event in zip(lines, events, strict=True):
        full = json.loads(line)
        assert (full["id"], full["type"], full["tenant"], full["set_id"]) == (
            event.id,
            event.type,
            event.tenant,
            event.set_id,
        )
        if isinstance(event.data, str):
            assert json.loads(event.data) == full["data"]
    return events


def assert_same_log(got: list[Event], reference: list[Event], what: str) -> None:
    mine, theirs = [e.key for e in got], [e.key for e in reference]
    if mine == theirs:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
        min(len(mine), len(theirs)),
    )
    pytest.fail(
        f"{what}: {len(mine)} events, reference {len(theirs)}; first difference at #{first}:\n"
        f"  got       {mine[first] if first < len(mine) else None}\n"
        f"  reference {theirs[first] if first < len(theirs) else None}"
    )


def check_log(events: list[Event], accepted_sets: list[str], what: str) -> None:
    """Ids 1..N without a gap; each accepted set's events together, ending in sets.accepted."""
    assert [e.id for e in events] == list(range(1, len(events) + 1)), f"{what}: ids not 1..N"
    assert {e.tenant for e in events} == {TENANT}, what
    groups = [(k, [e.type for e in g]) for k, g in groupby(events, key=lambda e: e.set_id)]
    assert [k for k, _ in groups] == accepted_sets, f"{what}: sets' events interleaved or missing"
    for set_id, types in groups:
        assert types[-1] == "sets.accepted", (what, set_id)
        assert types.count("sets.accepted") == 1, (what, set_id)
        assert not any(t.startswith("sets.") for t in types[:-1]), (what, set_id)


def check_sets(
    sets: list[dict[str, Any]],
    log: list[Event],
    accepted_before: int,
    what: str,
    duplicates: int = 1,
) -> None:
    """One accepted set per ingest; at most `duplicates` sets found `duplicate` (each re-run
    of the command claims the set again, identical to the one a crash left behind)."""
    statuses = Counter(s["status"] for s in sets)
    accepted = sorted(s["id"] for s in sets if s["status"] == "accepted")
    assert statuses["accepted"] == accepted_before + 1, (what, statuses)
    assert statuses["duplicate"] <= duplicates, (what, statuses)
    assert set(statuses) <= {"accepted", "duplicate"}, (what, statuses)
    for s in sets:
        if s["status"] == "duplicate":
            assert s["base_set_id"] == accepted[-1], what
    check_log(log, accepted, what)


# --- where the kill landed ---------------------------------------------------------------------


def set_statuses(state: Path, scratch: Path) -> dict[str, str]:
    """Set id -> status, read from a copy of the database so that the original is untouched."""
    if not (state / "ingestd.db").exists():
        return {}
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("ingestd.db", "ingestd.db-wal"):
        if (state / name).exists():
            shutil.copyfile(state / name, scratch / name)
    db = sqlite3.connect(scratch / "ingestd.db")
    try:
        return dict(db.execute("SELECT id, status FROM sets").fetchall())
    except sqlite3.OperationalError:  # killed before the schema was made
        return {}
    finally:
        db.close()
        shutil.rmtree(scratch)


def landed(state: Path, known: set[str], exited: bool, scratch: Path) -> str:
    if exited:
        return "finished"
    statuses = {k: v for k, v in set_statuses(state, scratch).items() if k not in known}
    if "accepted" in statuses.values():
        return "committed"
    folder = state / "sets" / TENANT
    new = [p for p in folder.iterdir() if p.name not in known] if folder.is_dir() else []
    if not new:
        return "starting"
    whole = [p for p in new if not p.name.startswith(".")]
    if not whole:
        return "copying"
    (set_dir,) = whole
    if set_dir.name not in statuses:
        return "claimed"
    if not (set_dir / "report.json").exists():
        return "validating"
    snapshots = state / "snapshots" / TENANT
    if (snapshots / set_dir.name).exists():
        wal = state / "ingestd.db-wal"
        big = wal.exists() and wal.stat().st_size > COMMIT_WAL_BYTES
        return "committing" if big else "snapshot in place"
    if (snapshots / f".tmp-{set_dir.name}").exists():
        return "writing snapshot"
    return "diffing"


@dataclass
class Trial:
    seed: int
    delay: float
    phase: str = "?"
    error: str | None = None


def report(title: str, duration: float, trials: list[Trial], elapsed: float) -> None:
    phases = Counter(t.phase for t in trials)
    before = sum(phases[p] for p in BEFORE_COMMIT)
    print(
        f"\n{title}: uninterrupted ingest {duration:.2f} s; {len(trials)} trials in {elapsed:.1f} s"
    )
    print(f"  killed before the commit: {before}, after it: {len(trials) - before}")
    for phase in PHASES:
        if phases[phase]:
            delays = ", ".join(f"{t.delay:.2f}" for t in trials if t.phase == phase)
            print(f"  {phase:<18} {phases[phase]:>3}   delays {delays}")
    for t in trials:
        if t.error:
            print(f"  FAILED seed {t.seed} (delay {t.delay:.2f} s, {t.phase}): {t.error}")


def run_trials(
    tmp_path: Path,
    name: str,
    seeds: range,
    duration: float,
    set_path: Path,
    reference: list[Event],
    accepted_before: int,
    base_state: Path | None,
) -> list[Trial]:
    out = []
    for seed in seeds:
        trial = Trial(seed, random.Random(seed).uniform(0, duration))
        out.append(trial)
        folder = tmp_path / f"{name}-{seed}"
        config = write_config(folder)
        state = state_of(config)
        known: set[str] = set()
        if base_state is not None:
            shutil.copytree(base_state, state)
            known = {p.name for p in (state / "sets" / TENANT).iterdir()}
        try:
            exited = killed_ingest(config, set_path, trial.delay, folder / "killed.log")
            trial.phase = landed(state, known, exited, folder / "scratch")
            ingest(config, set_path)
            log = parse_log(dump_events(state))
            what = f"seed {seed} ({trial.phase})"
            check_sets(dump_sets(state), log, accepted_before, what)
            assert_same_log(log, reference, what)
        except (AssertionError, pytest.fail.Exception) as exc:
            lines = str(exc).strip().splitlines()
            trial.error = " | ".join(lines[:1] + lines[-4:] if len(lines) > 5 else lines)[:1500]
        else:
            shutil.rmtree(folder)  # ~25 MB each; a failed trial's folder is kept to look at
    return out


# --- the sets --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, tuple]]:
    """Day 1 (generated) and day 2 (some updates, creates and deletes), with day 2's
    expected (created, updated, deleted) per changed entity."""
    root = tmp_path_factory.mktemp("district")
    day1, day2 = root / "day1", root / "day2"
    generate(day1, students=STUDENTS, seed=SEED)
    shutil.copytree(day1, day2)
    expected: dict[str, tuple[int, int, int]] = {}

    def edit(name: str, change: Any) -> None:
        path = day2 / name
        with path.open(encoding="utf-8", newline="") as f:
            header, *rows = list(csv.reader(f))
        rows = change({c: i for i, c in enumerate(header)}, rows)
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([header, *rows])

    def users(col: dict[str, int], rows: list[list[str]]) -> list[list[str]]:
        students = [r for r in rows if r[col["role"]] == "student"]
        for r in students[::2]:
            r[col["email"]] = r[col["email"]].replace("@", ".day2@")
        for i, r in enumerate(students[:3]):
            new = list(r)
            new[col["sourcedId"]] = f"day2-new-{i}"
            new[col["username"]] = f"day2.new.{i}"
            new[col["identifier"]] = f"99990{i}"
            new[col["email"]] = f"day2.new.{i}@example.org"
            rows.append(new)
        expected["users"] = (3, len(students[::2]), 0)
        return rows

    def classes(col: dict[str, int], rows: list[list[str]]) -> list[list[str]]:
        for r in rows[::80]:
            r[col["title"]] += " (moved)"
        expected["classes"] = (0, len(rows[::80]), 0)
        return rows

    def enrollments(col: dict[str, int], rows: list[list[str]]) -> list[list[str]]:
        # half of them end a week later, one in 20 is gone: a set with a sizeable commit
        kept = [r for i, r in enumerate(rows) if i % 20 != 7]
        for r in kept[::2]:
            r[col["endDate"]] = "2027-06-11"
        expected["enrollments"] = (0, len(kept[::2]), len(rows) - len(kept))
        return kept

    edit("users.csv", users)
    edit("classes.csv", classes)
    edit("enrollments.csv", enrollments)
    return day1, day2, expected


# --- the scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run: its state dir, how long `ingest` took, and its event log."""

    state: Path
    duration: float
    lines: list[str]
    events: list[Event]


@pytest.fixture(scope="module")
def day1_reference(
    tmp_path_factory: pytest.TempPathFactory, district: tuple[Path, Path, dict[str, tuple]]
) -> Reference:
    """Day 1 ingested without interruption into a fresh state dir, read with the real CLI."""
    config = write_config(tmp_path_factory.mktemp("reference1"))
    started = time.monotonic()
    ingest(config, district[0])
    duration = time.monotonic() - started
    lines, sets = cli_dumps(config)
    assert lines == dump_events(state_of(config))  # the in-process dump is `ingestd events`
    assert sets == dump_sets(state_of(config))  # ... and `ingestd sets --json`
    events = reference_log(lines)
    check_sets(sets, events, 0, "reference")
    assert len(events) > 10 * STUDENTS
    return Reference(state_of(config), duration, lines, events)


def test_kill_during_the_first_set_then_recover(
    tmp_path: Path, district: tuple[Path, Path, dict[str, tuple]], day1_reference: Reference
) -> None:
    ref = day1_reference
    began = time.monotonic()
    trials = run_trials(
        tmp_path, "day1", DAY1_SEEDS, ref.duration, district[0], ref.events, 0, None
    )
    report("day 1", ref.duration, trials, time.monotonic() - began)
    failed = [t for t in trials if t.error]
    assert not failed, "\n".join(f"seed {t.seed} ({t.phase}): {t.error}" for t in failed)


def test_kill_during_a_later_set_then_recover(
    tmp_path: Path, district: tuple[Path, Path, dict[str, tuple]], day1_reference: Reference
) -> None:
    _, day2, expected = district
    config = write_config(tmp_path / "reference")
    shutil.copytree(day1_reference.state, state_of(config))
    started = time.monotonic()
    ingest(config, day2)
    duration = time.monotonic() - started
    lines = dump_events(state_of(config))
    assert lines[: len(day1_reference.lines)] == day1_reference.lines
    reference = reference_log(lines)
    check_sets(dump_sets(state_of(config)), reference, 1, "reference")
    counts = json.loads(lines[-1])["data"]["counts"]
    assert {
        entity: (c["created"], c["updated"], c["deleted"])
        for entity, c in counts.items()
        if c["created"] or c["updated"] or c["deleted"]
    } == expected
    day2_types = Counter(e.type for e in reference[len(day1_reference.lines) :])
    assert day2_types == {
        f"{entity}.{kind}": n
        for entity, counts in expected.items()
        for kind, n in zip(("created", "updated", "deleted"), counts, strict=True)
        if n
    } | {"sets.accepted": 1}

    began = time.monotonic()
    trials = run_trials(
        tmp_path, "day2", DAY2_SEEDS, duration, day2, reference, 1, day1_reference.state
    )
    report("day 2", duration, trials, time.monotonic() - began)
    failed = [t for t in trials if t.error]
    assert not failed, "\n".join(f"seed {t.seed} ({t.phase}): {t.error}" for t in failed)


# --- two processes recovering the same set ---------------------------------------------------


def wait_for(condition: Any, what: str, timeout: float = 60) -> Any:
    """Poll the file system until `condition()` is true (RuntimeError: the setup went wrong)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.001)
    raise RuntimeError(f"timed out waiting for {what}")


def _made_since(folder: Path, started: float) -> bool:
    """True when `folder` exists and was made (or remade) at or after `started`."""
    try:
        return folder.stat().st_ctime >= started
    except FileNotFoundError:
        return False


def test_a_recoverer_paused_in_its_snapshot_while_another_commits_the_set(
    tmp_path: Path, district: tuple[Path, Path, dict[str, tuple]], day1_reference: Reference
) -> None:
    """After a crash left the set `received`, two `ingest` commands recover it at once (an
    operator beside the daemon): A is paused (SIGSTOP) while it writes the set's snapshot, B
    recovers and commits the same set, then A goes on. A must come to a clean end too."""
    day1 = district[0]
    config = write_config(tmp_path / "paused")
    state = state_of(config)
    sets_dir, snapshots = state / "sets" / TENANT, state / "snapshots" / TENANT

    def validated() -> str | None:
        found = [p.parent.name for p in sets_dir.glob("*/report.json")] if sets_dir.is_dir() else []
        return found[0] if found else None

    procs: list[subprocess.Popen[str]] = []
    try:
        crashed = subprocess.Popen(
            command(config, "ingest", TENANT, day1),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        procs.append(crashed)
        wait_for(lambda: validated() is not None, "the report of the first run")
        crashed.kill()
        crashed.wait(timeout=60)
        set_id = validated()
        if set_statuses(state, tmp_path / "scratch").get(set_id) != "received":
            raise RuntimeError("the first run was not killed before its commit")

        # The killed run may have left its own snapshot temp folder: wait for A's, the one
        # made after A started (A holds the tenant's lock by then).
        temp = snapshots / f".tmp-{set_id}"
        started = time.time()
        a = subprocess.Popen(
            command(config, "ingest", TENANT, day1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        procs.append(a)
        wait_for(lambda: _made_since(temp, started), "A writing the snapshot")
        a.send_signal(signal.SIGSTOP)
        if not temp.exists():
            raise RuntimeError("A finished its snapshot before it could be paused")

        b = subprocess.Popen(
            command(config, "ingest", TENANT, day1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        procs.append(b)
        with pytest.raises(subprocess.TimeoutExpired):  # B waits for A's lock on the tenant
            b.wait(timeout=3)
        a.send_signal(signal.SIGCONT)
        _, a_err = a.communicate(timeout=120)
        _, b_err = b.communicate(timeout=120)
        assert b.returncode == 0, b_err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):  # left open when the setup went wrong
                if pipe is not None:
                    pipe.close()

    assert a.returncode == 0, f"A exited {a.returncode}: {a_err.strip().splitlines()[-1:]}"
    log = parse_log(dump_events(state))
    check_sets(dump_sets(state), log, 0, "paused recoverer", duplicates=2)
    assert_same_log(log, day1_reference.events, "paused recoverer")
    assert sorted(p.name for p in (snapshots / set_id).iterdir()) == sorted(
        p.name for p in (day1_reference.state / "snapshots" / TENANT).glob("*/*")
    )
