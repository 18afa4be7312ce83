"""Reading a set against the tenant's snapshot (unchanged lines carried from it, only the
rest parsed and checked, only the changed rows diffed) must decide exactly as reading it
whole: same outcome, same report, same events, same snapshot; over days of random edits of
every kind a SIS export shows, with days where carrying cannot apply among them."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ingestd.events.store import EventStore
from ingestd.oneroster.carry import NotCarried, validate_carried
from ingestd.oneroster.validate import ValidatedSet, ValidationPolicy
from ingestd.pipeline import ingest
from ingestd.pipeline.diff import DiffOptions
from ingestd.pipeline.ingest import Pipeline, TenantPolicy
from ingestd.pipeline.snapshot import read_snapshot
from tests.oneroster.corpus import copy_set, fields, join, read_lines, write_lines, zip_dir
from tests.pipeline.test_ingest import TENANT, events, record_events

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.oneroster.corpus import generated

    return generated(tmp_path_factory, "carry", 400, 11)


# --- a day of edits ------------------------------------------------------------------------

Edit = Callable[[random.Random, list[str], list[str]], list[str]]


def _pick(rng: random.Random, body: list[str]) -> int:
    """A random row (not a blank line)."""
    while not body[i := rng.randrange(len(body))]:
        pass
    return i


def _edit_value(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """A plain value changed (a name, a title, a date) in a few rows."""
    columns = [c for c in ("givenName", "title", "email", "endDate") if c in head]
    for _ in range(rng.randint(1, 4) if columns else 0):
        i = _pick(rng, body)
        row = fields(body[i])
        col = rng.choice(columns)
        row[head.index(col)] = (
            "2027-06-30" if col == "endDate" else f"{row[head.index(col)]}x{rng.randrange(9)}"
        )
        body[i] = join(row)
    return body


def _delete(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    for _ in range(rng.randint(1, 3)):
        body.pop(_pick(rng, body))
    return body


def _add(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """New rows: copies of rows under new ids (references stay valid)."""
    for _ in range(rng.randint(1, 3)):
        row = fields(body[_pick(rng, body)])
        row[0] = f"new-{rng.randrange(10**6)}"
        body.insert(_pick(rng, body), join(row))
    return body


def _requote(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """The same values written another way: every field quoted."""
    i = _pick(rng, body)
    body[i] = ",".join('"' + v.replace('"', '""') + '"' for v in fields(body[i]))
    return body


def _blank_line(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    body.insert(_pick(rng, body), "")
    return body


def _shuffle_block(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    i = _pick(rng, body)
    block = body[i : i + 20]
    rng.shuffle(block)
    body[i : i + 20] = block
    return body


def _warned(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """A value that is accepted with a warning (and read differently): TRUE for true."""
    for col, value in (("enabledUser", "TRUE"), ("primary", "FALSE"), ("status", "inactive")):
        if col in head:
            i = _pick(rng, body)
            row = fields(body[i])
            row[head.index(col)] = value
            body[i] = join(row)
            break
    return body


def _invalid(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """A row with an error (dropped, its last good version kept)."""
    for col in ("role", "classType", "type", "schoolYear", "sex", "birthDate"):
        if col in head:
            i = _pick(rng, body)
            row = fields(body[i])
            row[head.index(col)] = "bogus"
            body[i] = join(row)
            break
    return body


def _repeated_user(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """Skyward's per-school repeat of a user row (merged, orgSourcedIds united)."""
    if "orgSourcedIds" in head and "role" in head:
        row = fields(body[_pick(rng, body)])
        row[head.index("orgSourcedIds")] = "100"  # the district: merged, the user changes
        body.insert(_pick(rng, body), join(row))
    return body


def _unrepeated(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """The repeats of users gone again (the first row of each stays)."""
    seen: set[str] = set()
    out = []
    for line in body:
        key = fields(line)[0] if line else None
        if key is not None and key in seen and "orgSourcedIds" in head:
            continue
        seen.add(key or "")
        out.append(line)
    return out


def _trailing_comma(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """An extra empty field at the end of a line (cut, with a warning)."""
    i = _pick(rng, body)
    body[i] += ","
    return body


def _tobedeleted(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """A row marked for deletion in the bulk file (a delete, with a warning)."""
    if "status" in head:
        i = _pick(rng, body)
        row = fields(body[i])
        row[head.index("status")] = "tobedeleted"
        body[i] = join(row)
    return body


def _user_gone(rng: random.Random, head: list[str], body: list[str]) -> list[str]:
    """A user removed while rows elsewhere still point to them (agents, enrollments)."""
    if "agentSourcedIds" in head:
        agents = [
            i for i, ln in enumerate(body) if ln and fields(ln)[head.index("agentSourcedIds")]
        ]
        if agents:
            target = fields(body[rng.choice(agents)])[head.index("agentSourcedIds")].split(",")[0]
            body = [ln for ln in body if not ln or fields(ln)[0] != target]
    return body


EDITS: list[Edit] = [
    _tobedeleted,
    _user_gone,
    _edit_value,
    _delete,
    _add,
    _requote,
    _blank_line,
    _shuffle_block,
    _warned,
    _invalid,
    _repeated_user,
    _repeated_user,
    _unrepeated,
    _trailing_comma,
]


PLAIN: list[Edit] = [_edit_value, _delete, _add, _requote, _shuffle_block]


def next_day(
    rng: random.Random, src: Path, dst: Path, *, swap_header: bool = False, plain: bool = False
) -> Path:
    out = copy_set(src, dst)
    for name in ("users.csv", "classes.csv", "enrollments.csv", "demographics.csv", "courses.csv"):
        path = out / name
        lines = [ln for ln in read_lines(path)]
        head, body = fields(lines[0]), lines[1:]
        for edit in rng.sample(PLAIN if plain else EDITS, rng.randint(1, 4)):
            body = edit(rng, head, body)
        if name == "classes.csv" and rng.random() < 0.5:  # a class goes, its enrollments stay
            body.pop(_pick(rng, body))
        write_lines(path, [lines[0], *body])
    if swap_header:  # the SIS now writes two columns the other way round
        path = out / "courses.csv"
        rows = [fields(ln) if ln else [] for ln in read_lines(path)]
        for r in rows:
            if len(r) > 2:
                r[1], r[2] = r[2], r[1]
        write_lines(path, [join(r) if r else "" for r in rows])
    return out


# --- the comparison ------------------------------------------------------------------------


def run(state: Path, days: list[Path], natural_key: bool = False) -> list[dict[str, Any]]:
    """Ingest the days in order; per day what a person or consumer can see of it."""
    seen = []
    with EventStore.open(state) as store:
        # Days add up errors (each stays until fixed): let them, so most days are accepted.
        lenient = TenantPolicy(
            validation=ValidationPolicy(max_invalid_rows_percent=25.0),
            diff=DiffOptions(natural_key=natural_key),
        )
        pipeline = Pipeline(state, store, lambda tenant: lenient)
        for day in days:
            mark = store.last_event_id()
            outcome = pipeline.ingest_path(TENANT, day)
            report = None
            if outcome.summary.get("report"):
                report = json.loads(Path(outcome.summary["report"]).read_text(encoding="utf-8"))
                report.pop("source", None)
            current = store.snapshot_of(TENANT)
            seen.append(
                {
                    "status": outcome.status,
                    "summary": {
                        k: v
                        for k, v in outcome.summary.items()
                        if k not in ("set_id", "received", "report", "base_set_id")
                    },
                    "report": report,
                    "events": [(e["type"], e["data"]) for e in record_events(events(store, mark))],
                    "snapshot": {
                        e: f.rows() for e, f in read_snapshot(state, TENANT, current).items()
                    },
                }
            )
    return seen


@pytest.mark.parametrize(
    ("seed", "natural_key"),
    [
        (20261129, False),
        (int(os.environ.get("CARRY_SEED", "3")), False),
        (int(os.environ.get("CARRY_SEED", "5")), True),
    ],
)
def test_reading_against_the_snapshot_decides_as_reading_whole(
    seed: int, natural_key: bool, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CARRY_SEED=n picks the second run's seed (to explore more days by hand). With the
    natural key, enrollments are read whole beside carried users and classes."""
    rng = random.Random(seed)
    days = [copy_set(base, tmp_path / "day1")]
    for n in range(2, 13):
        plain = n % 3 != 0  # two days in three bring only edits a carried read handles
        days.append(next_day(rng, days[-1], tmp_path / f"day{n}", swap_header=n == 8, plain=plain))
    days.append(days[2])  # back to an earlier day
    # Some days come as a zip (read from its bytes, not from files on disk).
    days = [zip_dir(d, d.with_suffix(".zip")) if n in (4, 7) else d for n, d in enumerate(days)]

    carried: list[int | None] = []  # per day: rows carried, None: read whole

    def counting(*args: Any, **kwargs: Any) -> ValidatedSet:
        try:
            result = validate_carried(*args, **kwargs)
        except NotCarried:
            carried.append(None)
            raise
        carried.append(sum(r.lines.len() for r in result.carried.values()))
        return result

    monkeypatch.setattr(ingest, "validate_carried", counting)
    with_carry = run(tmp_path / "carry", days, natural_key)
    assert len(carried) == len(days) - 1, carried  # every day after the first tried it
    assert sum(1 for n in carried if n is not None and n > 1000) >= 7, carried
    assert None in carried, carried  # and some day could not be carried

    def never(*args: Any, **kwargs: Any) -> ValidatedSet:
        raise NotCarried("this run reads every set whole")

    monkeypatch.setattr(ingest, "validate_carried", never)
    whole_read = run(tmp_path / "whole", days, natural_key)

    statuses = [d["status"] for d in whole_read]
    assert statuses.count("accepted") >= 9, statuses  # the days test what they should
    assert any(d["report"] and d["report"]["counts"] for d in whole_read[1:])
    for n, (a, b) in enumerate(zip(with_carry, whole_read, strict=True), start=1):
        for key in ("report", *a):
            assert a[key] == b[key], (n, key, carried)


@pytest.mark.parametrize("damage", ["other_rules", "unreadable"])
def test_prints_made_under_other_rules_or_unreadable_are_not_trusted(
    damage: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Line prints from another ingestd (other seeds) or a damaged lines.json: the next set
    is read whole, and decides as it would have."""
    day1 = copy_set(base, tmp_path / "day1")
    day2 = next_day(random.Random(2), day1, tmp_path / "day2", plain=True)
    expected = run(tmp_path / "expected", [day1, day2])
    state = tmp_path / "state"
    with EventStore.open(state) as store:
        Pipeline(state, store).ingest_path(TENANT, day1)
        lines = state / "snapshots" / TENANT / store.snapshot_of(TENANT) / "lines.json"  # type: ignore[operator]
    about = json.loads(lines.read_text(encoding="utf-8"))
    if damage == "other_rules":
        about["seeds"] = {e: [s[0] ^ 1, s[1]] for e, s in about["seeds"].items()}
        lines.write_text(json.dumps(about), encoding="utf-8")
    else:
        lines.write_text("{not json", encoding="utf-8")
    carried: list[int] = []
    real = validate_carried

    def counting(*args: Any, **kwargs: Any) -> ValidatedSet:
        result = real(*args, **kwargs)
        carried.append(sum(r.lines.len() for r in result.carried.values()))
        return result

    monkeypatch.setattr(ingest, "validate_carried", counting)
    seen = run(state, [day2])
    assert carried in ([], [0]), carried  # nothing carried: read whole
    assert seen[0]["events"] == expected[1]["events"]
    assert seen[0]["report"] == expected[1]["report"]


def test_the_log_says_how_many_rows_were_carried_and_why_a_set_was_read_whole(
    base: Path, tmp_path: Path
) -> None:
    day1 = copy_set(base, tmp_path / "day1")
    day2 = next_day(random.Random(4), day1, tmp_path / "day2", plain=True)
    day3 = next_day(random.Random(5), day2, tmp_path / "day3", swap_header=True, plain=True)
    state = tmp_path / "state"
    lenient = TenantPolicy(validation=ValidationPolicy(max_invalid_rows_percent=25.0))
    with EventStore.open(state) as store, capture_logs() as logs:
        pipeline = Pipeline(state, store, lambda tenant: lenient)
        outcomes = [pipeline.ingest_path(TENANT, day).status for day in (day1, day2, day3)]
    assert outcomes == ["accepted", "accepted", "accepted"], outcomes
    accepted = [e["carried_rows"] for e in logs if e["event"] == "set.accepted"]
    assert accepted[0] == 0 and accepted[1] > 1000 and accepted[2] == 0, accepted
    whole = [e for e in logs if e["event"] == "set.read_whole"]
    assert [e["reason"] for e in whole] == [
        "another header (or other rules) than the last accepted file"
    ]
