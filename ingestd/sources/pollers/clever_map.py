"""Clever records -> OneRoster 1.1 CSV rows, for the Clever poller (clever.py: collections,
paging, errors).

Mapping (Clever field -> OneRoster CSV column; "" = Clever has no such field):

orgs
    district: id -> sourcedId, name -> name, type `district`, nces_id (else
    mdr_number) -> identifier, parentSourcedId "".
    school: id -> sourcedId, name -> name, type `school`, nces_id (else state_id,
    else school_number) -> identifier, district -> parentSourcedId.
academicSessions (from `/terms`)
    id -> sourcedId, name -> title, start_date -> startDate, end_date -> endDate.
    Clever has only flat terms (most are built from the sections' term fields), so
    the type is derived: a term lasting at least 240 days that no other term
    strictly contains is the school year (type `schoolYear`); every other term is
    type `term`, with parentSourcedId = the one school year containing its dates
    ("" if none or several). schoolYear = the year of the school year's end_date
    (of the term's own end_date when it has no parent). Grading periods and
    semesters that no section uses do not exist in Clever.
courses
    id -> sourcedId, name -> title, number -> courseCode. Clever courses belong to
    the district, not to a school: orgSourcedId = the school of the course's
    sections when they all share one, else the district. schoolYearSourcedId = the
    school year of the sections' terms when they all share one, else "". grades,
    subjects, subjectCodes: "".
classes (from `/sections`)
    id -> sourcedId, name -> title, grade -> grades (one grade: Clever's section
    grade is a single value), course -> courseSourcedId, section_number ->
    classCode, school -> schoolSourcedId, term_id -> termSourcedIds, subject
    (Clever's own categories: "math", "science", ...) -> subjects, period ->
    periods. classType: `homeroom` when subject is "homeroom/advisory", else
    `scheduled`. location, subjectCodes: "".
users (one row per Clever user id; a user holding several roles gets the first
    of student, teacher, staff, district_admin, contact, and the union of the
    roles' schools)
    id -> sourcedId, name.first/middle/last -> givenName/middleName/familyName
    (contacts: Clever stores the full name in name.last; when name.first is empty
    the full name is split at its first space: givenName = the first word,
    familyName = the rest, middleName ""), email -> email, enabledUser `true`
    (Clever only lists active users), username = credentials.district_username,
    else the email, else the SIS id, else the Clever id. status,
    dateLastModified, password: "".
    student: role `student`; school + schools -> orgSourcedIds; student_number
    (else sis_id) -> identifier; `{SIS:<sis_id>}` (and `{state:<state_id>}`) ->
    userIds; grade -> grades; the contacts naming the student -> agentSourcedIds
    (sorted).
    teacher: role `teacher`; school + schools -> orgSourcedIds; teacher_number (else
    sis_id) -> identifier; `{SIS:<sis_id>}` (and `{state:<state_id>}`) -> userIds.
    staff: role `aide` when title names an aide, paraprofessional or
    teacher/instructional assistant, else `administrator` (Clever's staff are
    school admins); schools -> orgSourcedIds; staff_id -> identifier and
    `{SIS:<staff_id>}` -> userIds.
    district_admin: role `administrator`; the district -> orgSourcedIds.
    contact: role `parent` when a student_relationships[].relationship is
    "Parent", else `relative` when every relationship is Grandparent, Aunt/Uncle
    or Sibling, else `guardian`; the related students -> agentSourcedIds (in
    Clever's order) and their primary schools -> orgSourcedIds (the district if
    none of them was pulled); phone -> phone, and -> sms when phone_type is
    "Cell"; `{SIS:<sis_id>}` -> userIds; identifier "".
    Grades: "1".."13" -> 01..13, Kindergarten KG, PreKindergarten PK,
    TransitionalKindergarten TK, InfantToddler IT, Preschool PR, PostGraduate PS,
    Ungraded UG, Other; any other value is kept as `ext:<value>`.
demographics (students only; one row per student carrying any of these)
    id -> sourcedId, dob (M/D/YYYY) -> birthDate (YYYY-MM-DD), gender M/F -> sex
    male/female (other values kept as `ext:<value>`), hispanic_ethnicity Y/N ->
    hispanicOrLatinoEthnicity true/false. race: one race -> that race's column
    `true` and the other four and demographicRaceTwoOrMoreRaces `false`; "Two or
    More Races" -> demographicRaceTwoOrMoreRaces `true` and the five race columns
    "" (Clever does not say which); "Unknown" or "" -> all six "".
    countryOfBirthCode, stateOfBirthAbbreviation, cityOfBirth,
    publicSchoolResidenceStatus: "". When no student carries any demographic field
    (not shared with the application) the table is left out of the pull (declared
    `absent`), never sent empty.
enrollments (Clever has none: derived from each section)
    sourcedId `<section id>-<user id>` (stable across pulls), section id ->
    classSourcedId, section school -> schoolSourcedId. teachers[] (with `teacher`,
    the primary, first) -> role `teacher`, primary `true` for `teacher` and
    `false` for co-teachers; students[] -> role `student`, primary "". A member
    not among the users pulled (changed during the pull) is left out, with a
    warning. beginDate, endDate: "".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from ingestd.sources.pollers.base import Roster, Row, text

SCHOOL_YEAR_DAYS = 240  # a term this long containing no wider term is the school year

GRADES = {
    **{str(n): f"{n:02d}" for n in range(1, 14)},
    "Kindergarten": "KG",
    "PreKindergarten": "PK",
    "TransitionalKindergarten": "TK",
    "InfantToddler": "IT",
    "Preschool": "PR",
    "PostGraduate": "PS",
    "Ungraded": "UG",
    "Other": "Other",
}
SEX = {"M": "male", "F": "female"}
YES_NO = {"Y": "true", "N": "false"}
RACE_COLUMNS = (
    "americanIndianOrAlaskaNative",
    "asian",
    "blackOrAfricanAmerican",
    "nativeHawaiianOrOtherPacificIslander",
    "white",
)
TWO_OR_MORE = "demographicRaceTwoOrMoreRaces"
RACES = {  # Clever's values (and its SFTP letters), lower case -> OneRoster column
    "american indian": "americanIndianOrAlaskaNative",
    "american indian or alaska native": "americanIndianOrAlaskaNative",
    "i": "americanIndianOrAlaskaNative",
    "asian": "asian",
    "a": "asian",
    "black or african american": "blackOrAfricanAmerican",
    "b": "blackOrAfricanAmerican",
    "hawaiian or other pacific islander": "nativeHawaiianOrOtherPacificIslander",
    "native hawaiian or other pacific islander": "nativeHawaiianOrOtherPacificIslander",
    "p": "nativeHawaiianOrOtherPacificIslander",
    "caucasian": "white",
    "white": "white",
    "w": "white",
    "two or more races": TWO_OR_MORE,
    "multiracial": TWO_OR_MORE,
    "m": TWO_OR_MORE,
}
RELATIVES = frozenset({"grandparent", "aunt/uncle", "sibling"})
AIDE_TITLE = re.compile(
    r"\b(aide|para(professional|educator)?|(teacher'?s?|instructional) assistant)\b", re.I
)
HOMEROOM_SUBJECT = "homeroom/advisory"


def map_roster(raw: dict[str, list[dict[str, Any]]]) -> Roster:
    """The OneRoster tables of the Clever collections (`districts`, `schools`, `terms`,
    `courses`, `users`, `sections`: lists of Clever `data` objects). Pure: no I/O."""
    return _Mapper(raw).roster()


def _s(value: Any) -> str:
    return text(value) if not isinstance(value, dict) else ""


def _code(value: Any, table: dict[str, str]) -> str:
    """A Clever enumeration value mapped; an unknown one kept as `ext:<value>`."""
    value = _s(value).strip()
    if not value:
        return ""
    return table.get(value, f"ext:{value}")


def _iso_date(value: Any) -> str:
    """Clever's M/D/YYYY (dob) as YYYY-MM-DD; other shapes are passed on for the validator."""
    value = _s(value).strip()
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", value)
    if m:
        try:
            return date(int(m[3]), int(m[1]), int(m[2])).isoformat()
        except ValueError:
            return value
    return value


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(_s(value)[:10])
    except ValueError:
        return None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _ids(*pairs: tuple[str, Any]) -> str:
    return ",".join(f"{{{kind}:{_s(v)}}}" for kind, v in pairs if _s(v))


@dataclass(slots=True)
class _Term:
    id: str
    start: date | None
    end: date | None
    year: bool = False
    parent: str = ""

    def contains(self, other: _Term) -> bool:
        """Strictly wider dates (a same-span term is not contained)."""
        if None in (self.start, self.end, other.start, other.end):
            return False
        assert self.start and self.end and other.start and other.end
        return (
            self.start <= other.start
            and other.end <= self.end
            and (self.start, self.end) != (other.start, other.end)
        )


class _Mapper:
    def __init__(self, raw: dict[str, list[dict[str, Any]]]) -> None:
        self.raw = raw
        self.out = Roster()
        districts = raw.get("districts", [])
        self.district: str = districts[0]["id"] if len(districts) == 1 else ""
        self.users = {u["id"]: u for u in raw.get("users", [])}
        self.sections = raw.get("sections", [])
        self.terms: dict[str, _Term] = {}

    def roster(self) -> Roster:
        self._orgs()
        self._terms()
        self._courses()
        self._classes()
        self._users()
        self._enrollments()
        return self.out

    def _district_of(self, record: dict[str, Any]) -> str:
        return _s(record.get("district")) or self.district

    # --- orgs, sessions, courses, classes ------------------------------------------------

    def _orgs(self) -> None:
        for d in self.raw.get("districts", []):
            self.out.add(
                "orgs",
                {
                    "sourcedId": d["id"],
                    "name": _s(d.get("name")),
                    "type": "district",
                    "identifier": _s(d.get("nces_id")) or _s(d.get("mdr_number")),
                    "parentSourcedId": "",
                },
            )
        for sc in self.raw.get("schools", []):
            ident = _s(sc.get("nces_id")) or _s(sc.get("state_id")) or _s(sc.get("school_number"))
            self.out.add(
                "orgs",
                {
                    "sourcedId": sc["id"],
                    "name": _s(sc.get("name")),
                    "type": "school",
                    "identifier": ident,
                    "parentSourcedId": self._district_of(sc),
                },
            )

    def _terms(self) -> None:
        records = self.raw.get("terms", [])
        terms = {
            t["id"]: _Term(t["id"], _date(t.get("start_date")), _date(t.get("end_date")))
            for t in records
        }
        for t in terms.values():
            long = t.start and t.end and (t.end - t.start).days >= SCHOOL_YEAR_DAYS
            t.year = bool(long) and not any(o.contains(t) for o in terms.values())
        years = [t for t in terms.values() if t.year]
        for t in terms.values():
            if not t.year:
                holders = [y.id for y in years if y.contains(t)]
                t.parent = holders[0] if len(holders) == 1 else ""
        self.terms = terms
        undated = 0
        for record in records:
            t = terms[record["id"]]
            if t.start is None or t.end is None:
                undated += 1
            anchor = terms[t.parent] if t.parent else t
            self.out.add(
                "academicSessions",
                {
                    "sourcedId": t.id,
                    "title": _s(record.get("name")),
                    "type": "schoolYear" if t.year else "term",
                    "startDate": _s(record.get("start_date")),
                    "endDate": _s(record.get("end_date")),
                    "parentSourcedId": t.parent,
                    "schoolYear": str(anchor.end.year) if anchor.end else "",
                },
            )
        self.out.tables.setdefault("academicSessions", [])
        if undated:
            self.out.warnings.append(
                f"{undated} terms have no start or end date (Clever does not guarantee them)"
            )

    def _school_year_of(self, term_id: str) -> str:
        t = self.terms.get(term_id)
        if t is None:
            return ""
        return t.id if t.year else t.parent

    def _courses(self) -> None:
        by_course: dict[str, list[dict[str, Any]]] = {}
        for s in self.sections:
            by_course.setdefault(_s(s.get("course")), []).append(s)
        for c in self.raw.get("courses", []):
            sections = by_course.get(c["id"], [])
            schools = _unique(_s(s.get("school")) for s in sections)
            years = {self._school_year_of(_s(s.get("term_id"))) for s in sections}
            self.out.add(
                "courses",
                {
                    "sourcedId": c["id"],
                    "schoolYearSourcedId": years.pop() if len(years) == 1 else "",
                    "title": _s(c.get("name")),
                    "courseCode": _s(c.get("number")),
                    "grades": "",
                    "orgSourcedId": schools[0] if len(schools) == 1 else self._district_of(c),
                    "subjects": "",
                    "subjectCodes": "",
                },
            )
        self.out.tables.setdefault("courses", [])

    def _classes(self) -> None:
        for s in self.sections:
            subject = _s(s.get("subject"))
            self.out.add(
                "classes",
                {
                    "sourcedId": s["id"],
                    "title": _s(s.get("name")),
                    "grades": _code(s.get("grade"), GRADES),
                    "courseSourcedId": _s(s.get("course")),
                    "classCode": _s(s.get("section_number")),
                    "classType": "homeroom" if subject == HOMEROOM_SUBJECT else "scheduled",
                    "location": "",
                    "schoolSourcedId": _s(s.get("school")),
                    "termSourcedIds": _s(s.get("term_id")),
                    "subjects": subject,
                    "subjectCodes": "",
                    "periods": _s(s.get("period")),
                },
            )
        self.out.tables.setdefault("classes", [])

    # --- users and demographics ----------------------------------------------------------

    def _users(self) -> None:
        students = {uid for uid, u in self.users.items() if "student" in user_roles(u)}
        contacts_of: dict[str, list[str]] = {}
        related: dict[str, list[str]] = {}
        dangling = 0
        for uid, u in self.users.items():
            if "contact" not in user_roles(u):
                continue
            kids = _kids(u)
            related[uid] = [k for k in kids if k in students]
            dangling += len(kids) - len(related[uid])
            for kid in related[uid]:
                contacts_of.setdefault(kid, []).append(uid)
        if dangling:
            self.out.warnings.append(
                f"{dangling} contact relationships name students that were not pulled "
                "(left out of agentSourcedIds)"
            )
        demographics: list[Row] = []
        skipped = 0
        for uid, u in self.users.items():
            row = self._user(uid, u, sorted(contacts_of.get(uid, [])), related.get(uid, []))
            if row is None:
                skipped += 1
                continue
            self.out.add("users", row)
            student = user_roles(u).get("student")
            if student is not None and (demo := _demographics(uid, student)) is not None:
                demographics.append(demo)
        self.out.tables.setdefault("users", [])
        if skipped:
            self.out.warnings.append(f"{skipped} users hold no role ingestd knows (left out)")
        if demographics:
            self.out.tables["demographics"] = demographics
        elif students:
            self.out.warnings.append(
                "no student carries demographic fields (not shared with this application?): "
                "demographics left out of the set (absent), not emptied"
            )

    def _user(
        self, uid: str, u: dict[str, Any], contacts: list[str], kids: list[str]
    ) -> Row | None:
        roles = user_roles(u)
        name = u.get("name") if isinstance(u.get("name"), dict) else {}
        given, middle, family = _s(name.get("first")), _s(name.get("middle")), _s(name.get("last"))
        if not given and " " in family.strip():
            given, _, family = family.strip().partition(" ")
            family, middle = family.strip(), ""
        email = _s(u.get("email"))
        orgs: list[str] = []
        for key in ("student", "teacher", "staff"):
            if key in roles:
                orgs += [_s(roles[key].get("school")), *map(_s, roles[key].get("schools") or [])]
        if "district_admin" in roles:
            orgs.append(self._district_of(u))
        role, identifier, sis, state, grades, phone, sms = "", "", "", "", "", "", ""
        if "student" in roles:
            r = roles["student"]
            role, sis, state = "student", _s(r.get("sis_id")), _s(r.get("state_id"))
            identifier = _s(r.get("student_number")) or sis
            grades = _code(r.get("grade"), GRADES)
        elif "teacher" in roles:
            r = roles["teacher"]
            role, sis, state = "teacher", _s(r.get("sis_id")), _s(r.get("state_id"))
            identifier = _s(r.get("teacher_number")) or sis
        elif "staff" in roles:
            r = roles["staff"]
            role = "aide" if AIDE_TITLE.search(_s(r.get("title"))) else "administrator"
            identifier = sis = _s(r.get("staff_id"))
        elif "district_admin" in roles:
            role = "administrator"
        elif "contact" in roles:
            r = roles["contact"]
            role, sis = _contact_role(r), _s(r.get("sis_id"))
            phone = _s(r.get("phone"))
            sms = phone if _s(r.get("phone_type")).strip().lower() == "cell" else ""
            orgs += [self._primary_school(self.users[k]) for k in kids]
            if not _unique(orgs):
                orgs.append(self._district_of(u))
        else:
            return None
        username = next(
            (
                login
                for k in ("student", "teacher", "staff")
                if k in roles
                and (login := _s((roles[k].get("credentials") or {}).get("district_username")))
            ),
            "",
        )
        return {
            "sourcedId": uid,
            "enabledUser": "true",
            "orgSourcedIds": ",".join(_unique(orgs)),
            "role": role,
            "username": username or email or sis or uid,
            "userIds": _ids(("SIS", sis), ("state", state)),
            "givenName": given,
            "familyName": family,
            "middleName": middle,
            "identifier": identifier,
            "email": email,
            "sms": sms,
            "phone": phone,
            "agentSourcedIds": ",".join(_unique([*contacts, *kids])),
            "grades": grades,
            "password": "",
        }

    def _primary_school(self, user: dict[str, Any]) -> str:
        student = user_roles(user).get("student") or {}
        schools = [_s(student.get("school")), *map(_s, student.get("schools") or [])]
        return next((s for s in schools if s), "")

    # --- enrollments ---------------------------------------------------------------------

    def _enrollments(self) -> None:
        missing = 0
        for s in self.sections:
            sid, school = s["id"], _s(s.get("school"))
            teachers = _unique(map(_s, s.get("teachers") or []))
            primary = _s(s.get("teacher")) or (teachers[0] if teachers else "")
            if primary and primary not in teachers:
                teachers.insert(0, primary)
            members = [(t, "teacher", "true" if t == primary else "false") for t in teachers]
            members += [(st, "student", "") for st in _unique(map(_s, s.get("students") or []))]
            done: set[str] = set()
            for uid, role, is_primary in members:
                if uid not in self.users:
                    missing += 1
                    continue
                if uid in done:  # listed as teacher and student: the teacher row stands
                    continue
                done.add(uid)
                self.out.add(
                    "enrollments",
                    {
                        "sourcedId": f"{sid}-{uid}",
                        "classSourcedId": sid,
                        "schoolSourcedId": school,
                        "userSourcedId": uid,
                        "role": role,
                        "primary": is_primary,
                        "beginDate": "",
                        "endDate": "",
                    },
                )
        self.out.tables.setdefault("enrollments", [])
        if missing:
            self.out.warnings.append(
                f"{missing} section members are not among the users pulled (changed during "
                "the pull?): their enrollments were left out"
            )


def user_roles(user: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The user's role records (`roles.student`, `roles.contact`, ...) by role name."""
    roles = user.get("roles")
    if not isinstance(roles, dict):
        return {}
    return {k: v for k, v in roles.items() if isinstance(v, dict)}


def _kids(user: dict[str, Any]) -> list[str]:
    contact = user_roles(user).get("contact") or {}
    return _unique(
        _s(r.get("student"))
        for r in contact.get("student_relationships") or []
        if isinstance(r, dict)
    )


def _contact_role(contact: dict[str, Any]) -> str:
    relationships = [
        _s(r.get("relationship")).strip().lower()
        for r in contact.get("student_relationships") or []
        if isinstance(r, dict)
    ]
    if "parent" in relationships:
        return "parent"
    if relationships and all(r in RELATIVES for r in relationships):
        return "relative"
    return "guardian"


def _demographics(uid: str, student: dict[str, Any]) -> Row | None:
    fields = ("dob", "gender", "race", "hispanic_ethnicity")
    if not any(_s(student.get(k)).strip() for k in fields):
        return None
    row: Row = {
        "sourcedId": uid,
        "birthDate": _iso_date(student.get("dob")),
        "sex": _code(student.get("gender"), SEX),
        **dict.fromkeys((*RACE_COLUMNS, TWO_OR_MORE), ""),
        "hispanicOrLatinoEthnicity": YES_NO.get(_s(student.get("hispanic_ethnicity")).strip(), ""),
        "countryOfBirthCode": "",
        "stateOfBirthAbbreviation": "",
        "cityOfBirth": "",
        "publicSchoolResidenceStatus": "",
    }
    race = RACES.get(_s(student.get("race")).strip().lower())
    if race == TWO_OR_MORE:
        row[TWO_OR_MORE] = "true"
    elif race is not None:
        row.update(dict.fromkeys((*RACE_COLUMNS, TWO_OR_MORE), "false"))
        row[race] = "true"
    return row
