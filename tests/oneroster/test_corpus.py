"""A corpus of malformed sets: each is a generated district plus one defect.

Each case asserts the verdict, the rule that fired, and that the report names
the file and the line (where the defect has one).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingestd.oneroster.reader import ReadLimits
from ingestd.oneroster.validate import ValidatedSet, ValidationPolicy, validate_set
from tests.oneroster.corpus import (
    cell,
    copy_set,
    count,
    drop_column,
    fields,
    find_line,
    generated,
    issues,
    join,
    read_lines,
    set_cell,
    write_lines,
    zip_dir,
)


@pytest.fixture(scope="module")
def base_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "base", 400, 11)


@dataclass(frozen=True)
class Expect:
    accepted: bool
    code: str
    file: str | None = None
    line: int | None = None
    in_message: str | None = None


CASES: dict[
    str, Callable[[Path, Path], tuple[Path, Expect] | tuple[Path, Expect, ValidationPolicy]]
]
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _first(path: Path, role: str) -> int:
    return find_line(path, "role", role)


# --- encoding and structure ---------------------------------------------------------------


@case
def windows_1252_bytes(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = p.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b",", b",Jos\xe9 ", 1)  # line 5, an é in Windows-1252
    p.write_bytes(b"\n".join(lines))
    return s, Expect(False, "not_utf8", "users.csv", 5, "0xE9")


@case
def bom_is_tolerated(s: Path, tmp: Path):
    p = s / "users.csv"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    return s, Expect(True, "", None)


@case
def short_row(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines[6] = join(fields(lines[6])[:-3])
    write_lines(p, lines)
    return s, Expect(True, "too_few_fields", "users.csv", 7)


@case
def long_row(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines[7] += ",surprise"
    write_lines(p, lines)
    return s, Expect(True, "too_many_fields", "users.csv", 8)


@case
def trailing_empty_field(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines[9] += ","
    write_lines(p, lines)
    return s, Expect(True, "extra_empty_fields", "users.csv", 10)


@case
def truncated_last_line(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    data = p.read_bytes()
    p.write_bytes(data[: data.rstrip(b"\n").rfind(b",") - 12])
    last = len(read_lines(s / "enrollments.csv")) + 1
    return s, Expect(False, "truncated_file", "enrollments.csv", None, f"({last})")


@case
def unclosed_quote(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines[5] = lines[5].replace(",", ',"', 3).replace(',"', ",", 2)
    write_lines(p, lines)
    return s, Expect(True, "unclosed_quote", "users.csv", 6)


@case
def stray_quote(s: Path, tmp: Path):
    p = s / "users.csv"
    line = _first(p, "teacher")
    set_cell(p, line, "givenName", "PLACEHOLDER")
    lines = read_lines(p)
    lines[line - 1] = lines[line - 1].replace("PLACEHOLDER", 'Robert "Bob"')
    write_lines(p, lines)
    return s, Expect(True, "stray_quote", "users.csv", line)


@case
def blank_line(s: Path, tmp: Path):
    p = s / "classes.csv"
    lines = read_lines(p)
    lines.insert(3, "")
    write_lines(p, lines)
    return s, Expect(True, "blank_line", "classes.csv", 4)


@case
def crlf_line_endings(s: Path, tmp: Path):
    for name in ("users.csv", "enrollments.csv"):
        write_lines(s / name, read_lines(s / name), eol="\r\n")
    return s, Expect(True, "", None)


@case
def cr_only_line_endings(s: Path, tmp: Path):
    write_lines(s / "courses.csv", read_lines(s / "courses.csv"), eol="\r")
    return s, Expect(False, "cr_line_endings", "courses.csv")


@case
def duplicate_header(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines[0] = lines[0].replace("middleName", "givenName")
    write_lines(p, lines)
    return s, Expect(False, "duplicate_header", "users.csv", None, "givenName")


@case
def misspelled_header(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    lines = read_lines(p)
    lines[0] = lines[0].replace("userSourcedId", "userSourceId")
    write_lines(p, lines)
    return s, Expect(False, "missing_column", "enrollments.csv", None, "userSourcedId")


@case
def wrong_case_header(s: Path, tmp: Path):
    p = s / "orgs.csv"
    lines = read_lines(p)
    lines[0] = lines[0].replace("sourcedId", "SourcedId", 1)
    write_lines(p, lines)
    return s, Expect(False, "missing_column", "orgs.csv", None, "sourcedId")


@case
def missing_required_column(s: Path, tmp: Path):
    drop_column(s / "users.csv", "role")
    return s, Expect(False, "missing_column", "users.csv", None, "role")


@case
def missing_optional_column(s: Path, tmp: Path):
    drop_column(s / "users.csv", "sms")
    return s, Expect(True, "missing_optional_column", "users.csv")


@case
def reordered_columns(s: Path, tmp: Path):
    p = s / "courses.csv"
    rows = [fields(x) for x in read_lines(p)]
    write_lines(p, [join([r[4], *r[:4], *r[5:]]) for r in rows])  # title first
    return s, Expect(True, "column_order", "courses.csv")


@case
def metadata_columns(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    lines = [lines[0] + ",metadata.ssoId,metadata.locker"] + [x + ",sso-1,L12" for x in lines[1:]]
    write_lines(p, lines)
    return s, Expect(True, "", None)


@case
def header_only_users(s: Path, tmp: Path):
    p = s / "users.csv"
    write_lines(p, read_lines(p)[:1])
    return s, Expect(False, "no_rows", "users.csv")


@case
def header_only_demographics(s: Path, tmp: Path):
    p = s / "demographics.csv"
    write_lines(p, read_lines(p)[:1])
    return s, Expect(True, "no_rows", "demographics.csv")


@case
def empty_file(s: Path, tmp: Path):
    (s / "classes.csv").write_bytes(b"")
    return s, Expect(False, "empty_file", "classes.csv")


# --- files and names ----------------------------------------------------------------------


@case
def missing_file_manifest(s: Path, tmp: Path):
    (s / "users.csv").unlink()
    return s, Expect(False, "missing_file", None, None, "users.csv")


@case
def missing_file_no_manifest(s: Path, tmp: Path):
    (s / "manifest.csv").unlink()
    (s / "academicSessions.csv").unlink()
    return s, Expect(False, "missing_file", None, None, "academicSessions.csv")


@case
def lowercase_names(s: Path, tmp: Path):
    (s / "academicSessions.csv").rename(s / "academicsessions.csv")
    return s, Expect(True, "file_name_variant", "academicsessions.csv")


@case
def upper_extension(s: Path, tmp: Path):
    (s / "users.csv").rename(s / "users.CSV")
    return s, Expect(True, "file_name_variant", "users.CSV")


@case
def no_extension(s: Path, tmp: Path):
    (s / "courses.csv").rename(s / "courses")
    return s, Expect(True, "file_name_variant", "courses")


@case
def ambiguous_names(s: Path, tmp: Path):
    (s / "Users.csv").write_bytes((s / "users.csv").read_bytes())
    return s, Expect(False, "ambiguous_file", None, None, "users.csv")


@case
def temp_file_ignored(s: Path, tmp: Path):
    (s / "users.csv.filepart").write_bytes(b"sourcedId,stat")
    return s, Expect(True, "temp_file_ignored", "users.csv.filepart")


@case
def unknown_file_kept(s: Path, tmp: Path):
    (s / "notes.txt").write_text("hello")
    return s, Expect(True, "unknown_file", "notes.txt")


@case
def nested_folder_dir(s: Path, tmp: Path):
    outer = tmp / "outer"
    outer.mkdir()
    s.rename(outer / "OneRoster")
    return outer, Expect(True, "nested_folder", None)


# --- manifest -----------------------------------------------------------------------------


@case
def manifest_typo_key(s: Path, tmp: Path):
    p = s / "manifest.csv"
    p.write_text(p.read_text() + "fiel.demographics,bulk\n")
    return s, Expect(True, "manifest_unknown_key", "manifest.csv", None, "file.demographics")


@case
def manifest_absent_but_present(s: Path, tmp: Path):
    p = s / "manifest.csv"
    p.write_text(p.read_text().replace("file.demographics,bulk", "file.demographics,absent"))
    line = read_lines(p).index("file.demographics,absent") + 1
    return s, Expect(True, "manifest_absent_file_present", "manifest.csv", line)


@case
def manifest_bad_mode(s: Path, tmp: Path):
    p = s / "manifest.csv"
    p.write_text(p.read_text().replace("file.users,bulk", "file.users,full"))
    return s, Expect(False, "manifest_value", "manifest.csv", None, "line")


# --- zips ---------------------------------------------------------------------------------


@case
def zip_plain(s: Path, tmp: Path):
    return zip_dir(s, tmp / "OneRoster.zip"), Expect(True, "", None)


@case
def zip_dotdot_entry(s: Path, tmp: Path):
    z = zip_dir(s, tmp / "OneRoster.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("../../etc/cron.d/evil", "* * * * * root true\n")
    return z, Expect(False, "zip_unsafe_path", "OneRoster.zip")


@case
def zip_absolute_entry(s: Path, tmp: Path):
    z = zip_dir(s, tmp / "OneRoster.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("/tmp/evil.csv", "x")
    return z, Expect(False, "zip_unsafe_path", "OneRoster.zip")


@case
def zip_bomb(s: Path, tmp: Path):
    z = zip_dir(s, tmp / "OneRoster.zip")
    with zipfile.ZipFile(z, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("results.csv", b"0" * (8 << 20))
    return z, Expect(False, "zip_bomb", "OneRoster.zip")


@case
def zip_too_large(s: Path, tmp: Path):
    z = zip_dir(s, tmp / "OneRoster.zip")
    policy = ValidationPolicy(limits=ReadLimits(max_total_bytes=100_000))
    return z, Expect(False, "zip_too_large", "OneRoster.zip"), policy


@case
def zip_nested_archive(s: Path, tmp: Path):
    inner = zip_dir(s, tmp / "inner.zip")
    z = zip_dir(s, tmp / "OneRoster.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.write(inner, "inner.zip")
    return z, Expect(False, "zip_nested_archive", "OneRoster.zip")


@case
def zip_nested_folder(s: Path, tmp: Path):
    return zip_dir(s, tmp / "x.zip", prefix="export/"), Expect(True, "nested_folder", "x.zip")


@case
def not_a_zip(s: Path, tmp: Path):
    z = tmp / "OneRoster.zip"
    z.write_bytes(b"PK\x03\x04 but not really a zip")
    return z, Expect(False, "not_a_set", None, None, "OneRoster.zip")


# --- values -------------------------------------------------------------------------------


@case
def bad_enum(s: Path, tmp: Path):
    p = s / "users.csv"
    line = _first(p, "student")
    set_cell(p, line, "role", "pupil")
    return s, Expect(True, "bad_enum", "users.csv", line)


@case
def enum_wrong_case(s: Path, tmp: Path):
    p = s / "users.csv"
    line = _first(p, "student")
    set_cell(p, line, "role", "Student")
    return s, Expect(True, "enum_case", "users.csv", line)


@case
def extension_enum(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    set_cell(p, 3, "role", "ext:observer")
    return s, Expect(True, "", None)


@case
def boolean_upper(s: Path, tmp: Path):
    p = s / "users.csv"
    set_cell(p, 4, "enabledUser", "TRUE")
    return s, Expect(True, "boolean_case", "users.csv", 4)


@case
def status_inactive(s: Path, tmp: Path):
    p = s / "classes.csv"
    set_cell(p, 3, "status", "inactive")
    return s, Expect(True, "status_inactive", "classes.csv", 3)


@case
def excel_date(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    set_cell(p, 20, "beginDate", "8/17/2026")
    return s, Expect(True, "excel_date", "enrollments.csv", 20, "Excel")


@case
def impossible_date(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    set_cell(p, 21, "endDate", "2027-02-30")
    return s, Expect(True, "bad_date", "enrollments.csv", 21)


@case
def bad_school_year(s: Path, tmp: Path):
    p = s / "academicSessions.csv"
    set_cell(p, 2, "schoolYear", "2026-2027")
    return s, Expect(False, "bad_year", "academicSessions.csv", 2)


@case
def grade_without_zero(s: Path, tmp: Path):
    p = s / "users.csv"
    line = _first(p, "student")
    set_cell(p, line, "grades", "9")
    return s, Expect(True, "bad_grade", "users.csv", line)


@case
def missing_required_value(s: Path, tmp: Path):
    p = s / "users.csv"
    set_cell(p, 12, "username", "")
    return s, Expect(True, "missing_value", "users.csv", 12)


@case
def bulk_with_date_last_modified(s: Path, tmp: Path):
    p = s / "orgs.csv"
    set_cell(p, 2, "dateLastModified", "2026-11-28T02:00:00Z")
    return s, Expect(True, "bulk_has_dateLastModified", "orgs.csv")


@case
def too_many_invalid_rows(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    for n in range(2, 2 + len(lines) // 20):
        set_cell(p, n, "enabledUser", "yes")
    return s, Expect(False, "too_many_invalid_rows", "users.csv")


# --- ids and references -------------------------------------------------------------------


@case
def duplicate_id(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    lines = read_lines(p)
    row = fields(lines[30])
    row[fields(lines[0]).index("endDate")] = "2027-01-15"
    lines.append(join(row))
    write_lines(p, lines)
    return s, Expect(True, "duplicate_id", "enrollments.csv", 31)


@case
def skyward_repeated_user(s: Path, tmp: Path):
    p = s / "users.csv"
    lines = read_lines(p)
    line = _first(p, "teacher")
    row = fields(lines[line - 1])
    other = [r for r in (fields(x) for x in read_lines(s / "orgs.csv")[1:]) if r[4] == "school"]
    row[fields(lines[0]).index("orgSourcedIds")] = other[-1][0]
    lines.append(join(row))
    write_lines(p, lines)
    return s, Expect(True, "users_merged", "users.csv", len(lines))


@case
def orphan_enrollment(s: Path, tmp: Path):
    p = s / "enrollments.csv"
    set_cell(p, 15, "userSourcedId", "no-such-user")
    return s, Expect(True, "dangling_reference", "enrollments.csv", 15, "users.csv")


@case
def enrollment_school_is_district(s: Path, tmp: Path):
    district = cell(s / "orgs.csv", find_line(s / "orgs.csv", "type", "district"), "sourcedId")
    set_cell(s / "enrollments.csv", 16, "schoolSourcedId", district)
    return s, Expect(True, "reference_wrong_type", "enrollments.csv", 16, "school")


@case
def dropped_class_cascades(s: Path, tmp: Path):
    classes = s / "classes.csv"
    class_id = cell(classes, 2, "sourcedId")
    set_cell(classes, 2, "classType", "lecture")
    line = find_line(s / "enrollments.csv", "classSourcedId", class_id)
    return s, Expect(True, "reference_to_dropped_row", "enrollments.csv", line)


@case
def org_parent_cycle(s: Path, tmp: Path):
    orgs = s / "orgs.csv"
    district_line = find_line(orgs, "type", "district")
    school_line = find_line(orgs, "type", "school")
    set_cell(orgs, district_line, "parentSourcedId", cell(orgs, school_line, "sourcedId"))
    return s, Expect(False, "parent_cycle", "orgs.csv", district_line)


@case
def list_item_unknown(s: Path, tmp: Path):
    p = s / "classes.csv"
    terms = cell(p, 5, "termSourcedIds")
    set_cell(p, 5, "termSourcedIds", terms + ",no-such-term")
    return s, Expect(True, "dangling_reference", "classes.csv", 5, "academicSessions")


@case
def multibyte_names(s: Path, tmp: Path):
    p = s / "users.csv"
    set_cell(p, 6, "givenName", "Nguyễn Thị Ánh 李小龍 Zoë")
    return s, Expect(True, "", None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_set(name: str, base_set: Path, tmp_path: Path) -> None:
    work = copy_set(base_set, tmp_path / "set")
    built = CASES[name](work, tmp_path)
    path, expect = built[0], built[1]
    policy = built[2] if len(built) == 3 else ValidationPolicy()
    result = validate_set(path, policy)
    report = result.report
    assert report.accepted is expect.accepted, report.to_text()
    if not expect.code:
        assert report.counts == {}, report.to_text()
        return
    found = issues(report, expect.code)
    assert found, f"{expect.code} not reported:\n{report.to_text()}"
    issue = found[0]
    if expect.file is not None:
        assert issue.file == expect.file or expect.file in issue.message, issue
    if expect.line is not None:
        assert issue.line == expect.line, issue
        assert f"line {expect.line}" in report.to_text()
    if expect.in_message is not None:
        assert expect.in_message in issue.message + issue.fix, issue
    assert issue.message and (issue.fix or issue.severity == "warning"), issue


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_row_errors_drop_only_that_row(base_set: Path, tmp_path: Path) -> None:
    work = copy_set(base_set, tmp_path / "set")
    p = work / "users.csv"
    line = _first(p, "student")
    bad_id = cell(p, line, "sourcedId")
    set_cell(p, line, "role", "pupil")
    result = validate_set(work)
    users = result.tables["users"]
    assert bad_id not in users["sourcedId"].to_list()
    assert users.height == len(read_lines(p)) - 2
    assert result.dropped_ids["users"] == [bad_id]
    # the student's enrollments and demographics go with it, reported as such
    assert count(result.report, "reference_to_dropped_row") >= 1
    assert bad_id not in result.tables["enrollments"]["userSourcedId"].to_list()


def test_skyward_rows_are_merged(base_set: Path, tmp_path: Path) -> None:
    work = copy_set(base_set, tmp_path / "set")
    path, _ = CASES["skyward_repeated_user"](work, tmp_path)
    result: ValidatedSet = validate_set(path)
    users = result.tables["users"]
    merged = users.filter(users["orgSourcedIds"].str.contains(","))
    teacher_line = _first(work / "users.csv", "teacher")
    teacher = cell(work / "users.csv", teacher_line, "sourcedId")
    assert users["sourcedId"].to_list().count(teacher) == 1
    assert teacher in merged["sourcedId"].to_list()


def test_clean_values(base_set: Path, tmp_path: Path) -> None:
    work = copy_set(base_set, tmp_path / "set")
    p = work / "users.csv"
    set_cell(p, 4, "enabledUser", "TRUE")
    set_cell(p, 5, "middleName", "")
    lines = read_lines(p)
    row = fields(lines[5])
    row[fields(lines[0]).index("middleName")] = "@@"
    lines[5] = join(row).replace("@@", '""')  # quoted empty reads the same as unquoted empty
    write_lines(p, lines)
    users = validate_set(work).tables["users"]
    assert users["enabledUser"][2] == "true"
    assert users["middleName"][3] is None and users["middleName"][4] is None
    assert list(users.columns[:3]) == ["sourcedId", "status", "dateLastModified"]
    assert "__line" not in users.columns
