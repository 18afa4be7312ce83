"""The synthetic district: deterministic bytes, spec-exact files, references that all resolve."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from ingestd.oneroster import spec
from ingestd.oneroster.sample import SampleSummary, generate

FILES = (spec.MANIFEST_FILE, *(e.file_name for e in spec.ENTITIES))
Table = list[dict[str, str]]


def read(data: bytes) -> tuple[list[str], list[list[str]]]:
    """Header and rows, parsed by the csv module (independent of how the files were written)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return rows[0], rows[1:]


def table(folder: Path, entity: str) -> Table:
    header, rows = read((folder / f"{entity}.csv").read_bytes())
    return [dict(zip(header, row, strict=True)) for row in rows]


def items(value: str) -> list[str]:
    return value.split(",") if value else []


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    out = tmp_path_factory.mktemp("sample") / "set"
    return out, generate(out)


@pytest.fixture(scope="module")
def tables(default_set: tuple[Path, SampleSummary]) -> dict[str, Table]:
    return {name: table(default_set[0], name) for name in spec.ENTITY_NAMES}


def test_same_seed_same_bytes_different_seed_different_users(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", students=300, seed=5)
    b = generate(tmp_path / "b", students=300, seed=5)
    generate(tmp_path / "c", students=300, seed=6)
    assert a.rows == b.rows and a.bytes_written == b.bytes_written
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "users.csv").read_bytes() != (
        tmp_path / "c" / "users.csv"
    ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(FILES)  # no temp files


def test_same_bytes_in_another_process(tmp_path: Path) -> None:
    """A different hash seed changes set/dict-of-str iteration: output must not depend on it."""
    here = generate(tmp_path / "here.zip", students=200, seed=9, as_zip=True)
    code = "import sys, pathlib; from ingestd.oneroster.sample import generate; "
    code += "generate(pathlib.Path(sys.argv[1]), students=200, seed=9, as_zip=True)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there.zip")], check=True, env=env)
    assert (tmp_path / "there.zip").read_bytes() == here.path.read_bytes()


def test_zip_is_reproducible_and_holds_the_directory_files(tmp_path: Path) -> None:
    generate(tmp_path / "dir", students=300, seed=5)
    first = generate(tmp_path / "one" / "OneRoster.zip", students=300, seed=5, as_zip=True)
    second = generate(tmp_path / "two.zip", students=300, seed=5, as_zip=True)
    data = (tmp_path / "one" / "OneRoster.zip").read_bytes()
    assert data == (tmp_path / "two.zip").read_bytes()
    assert first.bytes_written == len(data) and first.path == tmp_path / "one" / "OneRoster.zip"
    assert second.rows == first.rows
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == list(FILES)  # manifest first, then parents before children
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert zf.read(info) == (tmp_path / "dir" / info.filename).read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["OneRoster.zip"]


def test_files_are_spec_csv(default_set: tuple[Path, SampleSummary]) -> None:
    folder, summary = default_set
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    sizes = 0
    for name in FILES:
        data = (folder / name).read_bytes()
        sizes += len(data)
        assert not data.startswith(b"\xef\xbb\xbf"), name
        assert data.endswith(b"\n") and b"\r" not in data, name
        assert b'""' not in data, name  # empty = nothing between commas, never a quoted ""
        header, rows = read(data)
        expected = spec.MANIFEST_HEADER if name == spec.MANIFEST_FILE else None
        if expected is None:
            expected = spec.ENTITY_BY_NAME[name.removesuffix(".csv")].column_names
        assert tuple(header) == expected, name
        assert rows, name
        assert all(len(row) == len(header) for row in rows), name
    assert summary.bytes_written == sizes


def test_manifest(default_set: tuple[Path, SampleSummary]) -> None:
    _, rows = read((default_set[0] / spec.MANIFEST_FILE).read_bytes())
    assert rows == [
        ["manifest.version", "1.0"],
        ["oneroster.version", "1.1"],
        *([f"file.{name}", "bulk"] for name in spec.ENTITY_NAMES),
        *([f"file.{name}", "absent"] for name in spec.GRADEBOOK_NAMES),
        ["source.systemName", "ingestd sample"],
        ["source.systemCode", "ingestd-sample"],
    ]


def test_values_match_their_column_kinds(tables: dict[str, Table]) -> None:
    for entity in spec.ENTITIES:
        rows = tables[entity.name]
        ids = [r["sourcedId"] for r in rows]
        assert len(set(ids)) == len(ids), entity.name
        for column in entity.columns:
            values = [r[column.name] for r in rows]
            if column.name in ("status", "dateLastModified"):
                assert set(values) == {""}, (entity.name, column.name)  # bulk files
            if column.required:
                assert all(values), (entity.name, column.name)
            present = [v for v in values if v]
            if column.kind is spec.Kind.ENUM:
                assert set(present) <= set(column.values), (entity.name, column.name)
            elif column.kind is spec.Kind.BOOL:
                assert set(present) <= set(spec.BOOL_VALUES), (entity.name, column.name)
            elif column.kind is spec.Kind.DATE:
                assert all(date.fromisoformat(v).isoformat() == v for v in present)
            elif column.kind is spec.Kind.YEAR:
                assert all(re.fullmatch(r"\d{4}", v) for v in present)
            elif column.kind is spec.Kind.GRADES:
                assert all(set(items(v)) <= set(spec.GRADE_CODES) for v in present)
            elif column.kind is spec.Kind.USER_IDS:
                assert all(re.fullmatch(r"\{\w+:[^{},]+\}(,\{\w+:[^{},]+\})*", v) for v in present)


def test_every_reference_resolves(tables: dict[str, Table]) -> None:
    for ref in spec.REFERENCES:
        targets = {r["sourcedId"]: r for r in tables[ref.target]}
        list_field = spec.ENTITY_BY_NAME[ref.entity].column(ref.column).is_list
        for row in tables[ref.entity]:
            value = row[ref.column]
            for item in items(value) if list_field else [value] if value else []:
                assert item in targets, (ref, item)
                if ref.target_type:
                    assert targets[item]["type"] == ref.target_type, (ref, item)
        if ref.no_cycles:
            parents = {r["sourcedId"]: r[ref.column] for r in tables[ref.entity]}
            for start in parents:
                seen, node = set(), start
                while node:
                    assert node not in seen, (ref, start)
                    seen.add(node)
                    node = parents[node]


def test_roster_shape(tables: dict[str, Table]) -> None:
    users = {u["sourcedId"]: u for u in tables["users"]}
    orgs = {o["sourcedId"]: o for o in tables["orgs"]}
    classes = {c["sourcedId"]: c for c in tables["classes"]}
    students = {k: u for k, u in users.items() if u["role"] == "student"}
    roles = Counter(u["role"] for u in users.values())
    guardians = roles["parent"] + roles["guardian"]
    assert len(students) == 1000 and 13 <= len(students) / roles["teacher"] <= 17
    assert 1.4 <= guardians / len(students) <= 1.6 and 5 <= roles["administrator"] <= 10
    # Only students have demographics, and every student has one.
    assert {d["sourcedId"] for d in tables["demographics"]} == set(students)
    # One district; at least one elementary, middle and high school, told apart by grades.
    assert [o["type"] for o in orgs.values()].count("district") == 1
    grades = {o: set() for o, row in orgs.items() if row["type"] == "school"}
    for s in students.values():
        (school,) = items(s["orgSourcedIds"])
        grades[school].add(s["grades"])
    spans = sorted((min(g), max(g)) for g in grades.values())
    assert spans == [("01", "KG"), ("06", "08"), ("09", "12")]  # min/max as strings: KG > 05
    # Enrollments: one primary teacher per class, ~9.5 classes per student at their school.
    enrollments = tables["enrollments"]
    assert 9000 <= len(enrollments) <= 10500
    teachers = Counter(e["classSourcedId"] for e in enrollments if e["role"] == "teacher")
    assert set(teachers) == set(classes) and set(teachers.values()) == {1}
    per_student = Counter()
    for e in enrollments:
        cls, user = classes[e["classSourcedId"]], users[e["userSourcedId"]]
        assert e["schoolSourcedId"] == cls["schoolSourcedId"]
        assert e["role"] == user["role"] and e["primary"] == (
            "true" if e["role"] == "teacher" else ""
        )
        assert e["beginDate"] < e["endDate"]
        if user["role"] == "student":
            assert user["orgSourcedIds"] == e["schoolSourcedId"]
            per_student[user["sourcedId"]] += 1
    assert set(per_student) == set(students) and min(per_student.values()) >= 7
    assert 9.0 <= sum(per_student.values()) / len(students) <= 9.8
    assert any(len(items(c["termSourcedIds"])) == 2 for c in classes.values())
    assert any(len(items(c["termSourcedIds"])) == 1 for c in classes.values())
    assert {c["classType"] for c in classes.values()} == {"homeroom", "scheduled"}


def test_people(tables: dict[str, Table]) -> None:
    users = {u["sourcedId"]: u for u in tables["users"]}
    for field in ("username", "email"):
        values = [u[field] for u in users.values() if u[field]]
        assert len(values) == len(set(values)) == len(users), field
    for u in users.values():
        agents = items(u["agentSourcedIds"])
        if u["role"] == "student":
            assert re.fullmatch(r"0\d{6}", u["identifier"])  # student number, leading zero kept
            assert 1 <= len(agents) <= 3 and u["grades"] and not u["password"]
            assert all(users[a]["role"] in ("parent", "guardian") for a in agents)
        elif u["role"] in ("parent", "guardian"):
            assert agents and u["phone"].startswith("+1")
            for a in agents:  # the link goes both ways, and the guardian is at the child's school
                assert u["sourcedId"] in items(users[a]["agentSourcedIds"])
                assert users[a]["orgSourcedIds"] in items(u["orgSourcedIds"])
        else:
            assert not agents and not u["grades"]
    names = [u[f] for u in users.values() for f in ("givenName", "familyName", "middleName")]
    multibyte = {n for n in names if len(n.encode()) > len(n)}
    assert {"José", "Zoë", "Nguyễn", "Søren", "李"} & multibyte and len(multibyte) >= 20
    assert any("'" in n for n in names)
    enabled = Counter(u["enabledUser"] for u in users.values())
    assert enabled["false"] > 0 and enabled["true"] > 0.95 * len(users)
    teacher_orgs = [items(u["orgSourcedIds"]) for u in users.values() if u["role"] == "teacher"]
    assert any(len(o) == 2 for o in teacher_orgs)
    siblings = [u for u in users.values() if len(items(u["agentSourcedIds"])) > 1]
    assert any(u["role"] in ("parent", "guardian") for u in siblings)


def test_polars_reads_it_as_strings(default_set: tuple[Path, SampleSummary]) -> None:
    users = pl.read_csv(default_set[0] / "users.csv", infer_schema=False)
    assert users.height == default_set[1].rows["users"]
    assert users.filter(pl.col("identifier").str.starts_with("00")).height > 0
    assert users["status"].null_count() == users.height


def test_sizes_and_progress(tmp_path: Path) -> None:
    phrases: list[str] = []
    tiny = generate(tmp_path / "tiny", students=1, progress=phrases.append)
    assert set(spec.ENTITY_NAMES) <= set(phrases)
    assert tiny.rows["demographics"] == 1 and all(tiny.rows.values())
    big = generate(tmp_path / "big", students=6000, seed=3)
    schools = big.rows["orgs"] - 1
    assert 6000 / 800 <= schools <= 6000 / 450  # roughly one school per 600 students
    with pytest.raises(ValueError):
        generate(tmp_path / "none", students=0)


def test_overwrites_the_set_and_leaves_other_files(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text("stale\n")
    (tmp_path / "lineItems.csv").write_text("kept\n")
    generate(tmp_path, students=50)
    assert (tmp_path / "users.csv").read_text(encoding="utf-8").startswith("sourcedId,")
    assert (tmp_path / "lineItems.csv").read_text() == "kept\n"
