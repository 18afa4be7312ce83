"""PowerSchool records -> OneRoster 1.1 CSV rows, for the PowerSchool poller (powerschool.py:
endpoints, paging, completeness, errors). Plugin set-up: docs/pollers-powerschool.md.

Stable sourcedIds (a second pull matches the first)
    PowerSchool's ids are per-table sequences, so users are prefixed to stay unique:
    orgs: district `district`; school: its `id` (DCID).
    academicSessions: term `id` (DCID; PowerSchool keeps terms per school, so each school
        has its own year, semesters, quarters).
    courses: `{school id}-{course id}` (a PowerSchool course is district-wide; OneRoster's has
        one org, so one row per school offering it).
    classes: section `id` (DCID).
    users: students `student-{id}`; staff `staff-{users_dcid}` (one person across schools;
        `id` when the record has no users_dcid); guardians `contact-{contact_id}`.
    demographics: the student's user sourcedId.
    enrollments: students: the section enrollment's `id` (the CC record); the section's
        teacher: `section-{section id}-staff-{users_dcid}`.

Mapping, PowerSchool field -> OneRoster CSV column (status, dateLastModified: empty, bulk)
    orgs          district.name / tenant name      name            type "district"
                  district.district_number         identifier
                  school.name                      name            type "school"
                  school.state_province_id (else   identifier
                    school_number)
                  (the district)                   parentSourcedId
    academic-     term.name (else abbreviation)    title
    Sessions      term.portion 1 (else local_id    type            1 schoolYear, 2 semester,
                    ending in 00: a year)                          3 term, >=4 gradingPeriod,
                                                                   none: term
                  term.start_date, end_date        startDate, endDate
                  the enclosing term of a lower    parentSourcedId
                    portion at the same school
                  the year term's end_date year    schoolYear
                    (else the term's own)
    courses       the school's year term of its    schoolYearSourcedId
                    sections
                  course.course_name               title
                  course.course_number             courseCode
                  (the school)                     orgSourcedId
    classes       course_name " - Section " n      title
                  grades of the enrolled students  grades          in CEDS order
                  section.course_id                courseSourcedId (matched on course id,
                                                                   else course_number)
                  course_number "." section_number classCode       PowerSchool's own notation
                  "scheduled"                      classType
                  section.room                     location
                  section.school_id                schoolSourcedId
                  section.term_id                  termSourcedIds  one term: a year-long
                                                                   section names the year
                  section.expression               periods         "1-2(A) 4(B)" -> 1,2,4
    users         student.student_username         username
    (students)    name.first/middle/last_name      givenName, middleName, familyName
                  local_id (student number)        identifier; userIds {SIS:local_id}
                  contact_info.email               email
                  school_enrollment.grade_level    grades          0 KG, 1-13 01-13, <0 PK
                  school_enrollment.enroll_status  enabledUser     A (or code 0) true
                  (schools listing the student)    orgSourcedIds
                  (their guardians)                agentSourcedIds
                  "student"                        role
    users         teacher_username (admins:        username
    (staff)         admin_username first)
                  name.*                           givenName, middleName, familyName
                  local_id (teacher number)        identifier; userIds {SIS:local_id}
                  emails.work_email                email
                  school_affiliation.type          role            1/4 teacher,
                                                                   2 administrator, 3 aide
                  school_affiliation.status        enabledUser     1 true (any school)
                  (schools listing the person)     orgSourcedIds
    users         GUARDIAN_QUERY record columns    (see docs/pollers-powerschool.md)
    (guardians)   first/middle/last_name, email,   givenName..., email, phone, sms,
                    phone, sms_phone, username     username (else email)
                  relationship                     role            Mother/Father/Parent/
                                                                   Stepmother/Stepfather
                                                                   parent; *Guardian*
                                                                   guardian; else relative
                  (their students' schools)        orgSourcedIds
                  student_dcid                     agentSourcedIds
                  "true"                           enabledUser
    demographics  demographics.birth_date          birthDate
                  demographics.gender M/F          sex             other values: empty
                  ethnicity_race.races             the five race   codes I, A, B, P, W (the
                    [].district_race_code            columns,      federal letters; a district
                                                     TwoOrMore     with its own codes maps
                                                                   nothing); no expansion:
                                                                   all empty
                  ethnicity_race.federal_ethnicity hispanicOr...   YES/NO
    enrollments   section_enrollment.section_id    classSourcedId
    (students)    student_id                       userSourcedId   (records of students not
                                                                   listed are left out, with
                                                                   a warning)
                  entry_date, exit_date            beginDate, endDate (as PowerSchool keeps
                                                                   them)
                  "student", ""                    role, primary
    enrollments   section.staff_id                 userSourcedId   (the school's staff `id`,
    (teachers)                                                     else a users_dcid)
                  the section's term dates         beginDate, endDate
                  "teacher", "true"                role, primary

What PowerSchool's API has no place for (empty): course grades, subjects and subject codes;
class subjects and subject codes; homerooms (every class is "scheduled"); co-teachers;
district-office staff (the district office is not a school in /ws/v1/district/school);
users' LDAP or other ids beyond the SIS number, sms/phone of students and staff, passwords;
guardians' enabled state (always true) and ids; demographics' country/state/city of birth
and public school residence status. Student numbers are numbers in PowerSchool, so leading
zeros are not kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from ingestd.oneroster import spec
from ingestd.sources.pollers.base import PullError, Row, text

DISTRICT_ID = "district"
RACE_CODES = {
    "I": "americanIndianOrAlaskaNative",
    "A": "asian",
    "B": "blackOrAfricanAmerican",
    "P": "nativeHawaiianOrOtherPacificIslander",
    "W": "white",
}
STAFF_ROLES = {1: "teacher", 2: "administrator", 3: "aide", 4: "teacher"}
PARENTS = frozenset({"mother", "father", "parent", "stepmother", "stepfather"})
GRADE_ORDER = {g: i for i, g in enumerate(spec.GRADE_CODES)}


@dataclass(slots=True)
class School:
    sid: str
    number: str
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)  # term id -> record
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)  # course id -> record
    course_numbers: dict[str, str] = field(default_factory=dict)  # course_number -> id
    sections: list[dict[str, Any]] = field(default_factory=list)
    staff: dict[str, str] = field(default_factory=dict)  # staff id -> user sourcedId


# --- JSON values ------------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    """XML-shaped JSON: one element is an object, several a list, none null or ""."""
    if value in (None, ""):
        return []
    return value if isinstance(value, list) else [value]


def record_id(record: dict[str, Any], what: str) -> str:
    value = text(record.get("id"))
    if not value:
        raise PullError(f"a {what} record without an id", "bad_response")
    return value


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _date(value: Any) -> str:
    """A PowerSchool date ("2026-08-17", possibly with a time) as YYYY-MM-DD."""
    s = text(value).strip()
    return s[:10] if re.match(r"\d{4}-\d\d-\d\d", s) else s


def _grade(value: Any) -> str:
    """PowerSchool's numeric grade level as a CEDS code: 0 KG, 1-13 01-13, below 0 PK."""
    n = as_int(value)
    if n is None:
        return ""
    if n == 0:
        return "KG"
    if 1 <= n <= 13:
        return f"{n:02d}"
    return "PK" if n < 0 else "Other"


def grade_key(grade: str) -> int:
    return GRADE_ORDER.get(grade, len(GRADE_ORDER))


def _periods(expression: Any) -> str:
    """Periods of a section expression: "1(A)" -> 1, "1-3(A-E)" -> 1,2,3, "1(A) 4(B)" -> 1,4,
    "HR(A)" -> HR."""
    found: list[str] = []
    plain = re.sub(r"\([^)]*\)", " ", text(expression))
    for token in re.split(r"[\s,]+", plain):
        if not token:
            continue
        bounds = token.split("-")
        if (
            len(bounds) == 2
            and all(b.isdigit() for b in bounds)
            and int(bounds[0]) <= int(bounds[1])
        ):
            tokens = [str(n) for n in range(int(bounds[0]), int(bounds[1]) + 1)]
        else:
            tokens = [token]
        for t in tokens:
            if t not in found:
                found.append(t)
    return ",".join(found)


# --- mapping ------------------------------------------------------------------------------------


def _row(entity: str, **values: str) -> Row:
    return {**dict.fromkeys(spec.ENTITY_BY_NAME[entity].column_names, ""), **values}


def district_row(name: str, identifier: str) -> Row:
    return _row("orgs", sourcedId=DISTRICT_ID, name=name, type="district",
                identifier=identifier)  # fmt: skip


def org_row(record: dict[str, Any], sid: str) -> Row:
    identifier = text(record.get("state_province_id")) or text(record.get("school_number"))
    return _row("orgs", sourcedId=sid, name=text(record.get("name")), type="school",
                identifier=identifier, parentSourcedId=DISTRICT_ID)  # fmt: skip


def _names(record: dict[str, Any]) -> dict[str, str]:
    name = record.get("name") if isinstance(record.get("name"), dict) else {}
    return {
        "givenName": text(name.get("first_name")),
        "middleName": text(name.get("middle_name")),
        "familyName": text(name.get("last_name")),
    }


def student_row(record: dict[str, Any], sid: str) -> Row:
    enrollment = record.get("school_enrollment")
    enrollment = enrollment if isinstance(enrollment, dict) else {}
    status = text(enrollment.get("enroll_status")).upper()
    code = as_int(enrollment.get("enroll_status_code"))
    enabled = status == "A" or code == 0 or (not status and code is None)
    contact = record.get("contact_info")
    email = text(contact.get("email")) if isinstance(contact, dict) else ""
    number = text(record.get("local_id"))
    return _row("users", sourcedId=sid, enabledUser="true" if enabled else "false",
                role="student", username=text(record.get("student_username")),
                userIds=f"{{SIS:{number}}}" if number else "", **_names(record),
                identifier=number, email=email,
                grades=_grade(enrollment.get("grade_level")))  # fmt: skip


def demographics_row(record: dict[str, Any], sid: str) -> Row:
    demo = record.get("demographics")
    demo = demo if isinstance(demo, dict) else {}
    sex = {"M": "male", "F": "female"}.get(text(demo.get("gender")).strip().upper()[:1], "")
    row = _row("demographics", sourcedId=sid, birthDate=_date(demo.get("birth_date")), sex=sex)
    ethnicity = record.get("ethnicity_race")
    if isinstance(ethnicity, dict):
        races = ethnicity.get("races")
        if isinstance(races, dict) and "race" in races:  # {"races": {"race": [...]}}
            races = races["race"]
        codes = {
            text(r.get("district_race_code") if isinstance(r, dict) else r).strip().upper()
            for r in as_list(races)
        }
        for code, column in RACE_CODES.items():
            row[column] = "true" if code in codes else "false"
        row["demographicRaceTwoOrMoreRaces"] = (
            "true" if len(codes & set(RACE_CODES)) > 1 else "false"
        )
        hispanic = text(ethnicity.get("federal_ethnicity")).strip().upper()
        if hispanic in ("YES", "Y", "TRUE", "1"):
            row["hispanicOrLatinoEthnicity"] = "true"
        elif hispanic in ("NO", "N", "FALSE", "0"):
            row["hispanicOrLatinoEthnicity"] = "false"
    return row


def affiliation(record: dict[str, Any], school: School) -> tuple[str, bool]:
    """The staff member's role and active state at `school` (from school_affiliations)."""
    holder = record.get("school_affiliations")
    found = as_list(holder.get("school_affiliation")) if isinstance(holder, dict) else []
    found = [a for a in found if isinstance(a, dict)]
    here = [a for a in found if text(a.get("school_id")) in (school.sid, school.number)]
    chosen = (here or found or [{}])[0]
    role = STAFF_ROLES.get(as_int(chosen.get("type")) or 1, "teacher")
    status = as_int(chosen.get("status"))
    return role, status in (None, 1)


def staff_row(record: dict[str, Any], sid: str, role: str, active: bool) -> Row:
    names = ("admin_username", "teacher_username")
    if role != "administrator":
        names = names[::-1]
    username = next((text(record[n]) for n in names if record.get(n) not in (None, "")), "")
    emails = record.get("emails")
    email = text(emails.get("work_email")) if isinstance(emails, dict) else ""
    number = text(record.get("local_id"))
    return _row("users", sourcedId=sid, enabledUser="true" if active else "false", role=role,
                username=username, userIds=f"{{SIS:{number}}}" if number else "",
                **_names(record), identifier=number, email=email)  # fmt: skip


def guardian_row(record: dict[str, Any], sid: str) -> Row:
    relationship = text(record.get("relationship")).strip().lower()
    if relationship in PARENTS:
        role = "parent"
    elif "guardian" in relationship:
        role = "guardian"
    else:
        role = "relative"
    email = text(record.get("email"))
    return _row("users", sourcedId=sid, enabledUser="true", role=role,
                username=text(record.get("username")) or email,
                givenName=text(record.get("first_name")),
                middleName=text(record.get("middle_name")),
                familyName=text(record.get("last_name")), email=email,
                phone=text(record.get("phone")), sms=text(record.get("sms_phone")))  # fmt: skip


def session_rows(schools: Iterable[School]) -> dict[str, list[Row]]:
    """academicSessions rows per school: types, parents and school years (module docstring)."""
    out: dict[str, list[Row]] = {}
    for school in schools:
        ranked = []
        for tid, t in school.terms.items():
            portion = as_int(t.get("portion"))
            local = as_int(t.get("local_id"))
            is_year = portion == 1 or (portion is None and local is not None and local % 100 == 0)
            rank = 1 if is_year else (portion if portion and portion > 1 else 99)
            ranked.append((tid, t, rank, _date(t.get("start_date")), _date(t.get("end_date"))))
        rows = []
        for tid, t, rank, start, end in ranked:
            if rank == 1:
                kind = "schoolYear"
            elif rank == 2:
                kind = "semester"
            elif rank >= 4 and rank != 99:
                kind = "gradingPeriod"
            else:
                kind = "term"
            enclosing = [
                (r, -_span(s, e), oid)
                for oid, _, r, s, e in ranked
                if oid != tid and r < rank and s <= start and e >= end
            ]
            parent = max(enclosing)[2] if enclosing else ""
            years = [
                e
                for oid, _, r, s, e in ranked
                if r == 1 and (oid == tid or (s <= start and e >= end))
            ]
            year_end = years[0] if years else end
            rows.append(
                _row("academicSessions", sourcedId=tid,
                     title=text(t.get("name")) or text(t.get("abbreviation")), type=kind,
                     startDate=start, endDate=end, parentSourcedId=parent,
                     schoolYear=year_end[:4])
            )  # fmt: skip
        out[school.sid] = rows
    return out


def _span(start: str, end: str) -> int:
    try:
        return (date.fromisoformat(end) - date.fromisoformat(start)).days
    except ValueError:
        return 0


def school_year_term(school: School, sessions: dict[str, list[Row]]) -> str:
    """The school's year term its sections belong to (most of them), else the only one."""
    rows = {r["sourcedId"]: r for r in sessions.get(school.sid, [])}
    votes: dict[str, int] = {}
    for section in school.sections:
        tid = text(section.get("term_id"))
        while tid in rows and rows[tid]["type"] != "schoolYear":
            tid = rows[tid]["parentSourcedId"]
        if tid in rows:
            votes[tid] = votes.get(tid, 0) + 1
    if votes:
        return max(votes, key=lambda t: (votes[t], t))
    years = [sid for sid, r in rows.items() if r["type"] == "schoolYear"]
    return years[0] if len(years) == 1 else ""


def course_row(record: dict[str, Any], school: School, cid: str, year: str) -> Row:
    return _row("courses", sourcedId=f"{school.sid}-{cid}", schoolYearSourcedId=year,
                title=text(record.get("course_name")),
                courseCode=text(record.get("course_number")),
                orgSourcedId=school.sid)  # fmt: skip


def class_row(section: dict[str, Any], school: School, grades: list[str]) -> Row:
    course_id = text(section.get("course_id"))
    if course_id not in school.courses:
        course_id = school.course_numbers.get(course_id, course_id)
    course = school.courses.get(course_id, {})
    name = text(course.get("course_name"))
    number = text(section.get("section_number"))
    code = text(course.get("course_number"))
    title = f"{name} - Section {number}" if name and number else name or number
    return _row("classes", sourcedId=record_id(section, "section"), title=title,
                grades=",".join(grades), courseSourcedId=f"{school.sid}-{course_id}",
                classCode=f"{code}.{number}" if code and number else code or number,
                classType="scheduled", location=text(section.get("room")),
                schoolSourcedId=school.sid, termSourcedIds=text(section.get("term_id")),
                periods=_periods(section.get("expression")))  # fmt: skip


def teacher_enrollment_row(sec: str, school: School, teacher: str, term: dict[str, Any]) -> Row:
    """The section's teacher (`teacher`: a user sourcedId) for the dates of its term."""
    return _row("enrollments",
                sourcedId=f"section-{sec}-{teacher}", classSourcedId=sec,
                schoolSourcedId=school.sid, userSourcedId=teacher, role="teacher",
                primary="true", beginDate=_date(term.get("start_date")),
                endDate=_date(term.get("end_date")))  # fmt: skip


def student_enrollment_row(record: dict[str, Any], sec: str, school: School, user: str) -> Row:
    """A section_enrollment record (`user`: the student's user sourcedId)."""
    return _row("enrollments",
                sourcedId=record_id(record, "section enrollment"), classSourcedId=sec,
                schoolSourcedId=school.sid, userSourcedId=user, role="student",
                primary="", beginDate=_date(record.get("entry_date")),
                endDate=_date(record.get("exit_date")))  # fmt: skip
