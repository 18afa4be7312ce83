"""PowerSchool SIS poller (a data access plugin with OAuth): the district's schools, terms,
courses, sections, students, staff, section enrollments and (via a PowerQuery) guardians,
mapped to the OneRoster 1.1 CSV tables. Plugin set-up: docs/pollers-powerschool.md.

Auth
    `POST {base_url}/oauth/access_token` (Basic client_id:client_secret, form body
    `grant_type=client_credentials`; `expires_in` comes as a string): http.py's
    OAuth2ClientCredentials. A 401 mid-pull (credentials regenerated, token revoked) makes the
    client fetch a token once and repeat the request; a refused token fails the pull.

Endpoints (all GET unless said)
    /ws/v1/metadata                          page-size caps (`<resource>_max_page_size`)
    /ws/v1/district                          district name and number; PowerSchool's
                                             documentation as found does not list it, so a
                                             404/403/405 falls back to the tenant's `name`
                                             (else its id)
    /ws/v1/district/school                   schools
    /ws/v1/school/{id}/term                  terms
    /ws/v1/school/{id}/course                courses offered at the school
    /ws/v1/school/{id}/section               sections (current school year)
    /ws/v1/school/{id}/student               students, `expansions=` STUDENT_EXPANSIONS
    /ws/v1/school/{id}/staff                 staff, `expansions=` STAFF_EXPANSIONS
    /ws/v1/section/{id}/section_enrollment   a section's students (`dropped` ones skipped)
    POST /ws/schema/query/GUARDIAN_QUERY     guardians (a PowerQuery the plugin defines)
    each list also as `.../count` -> `{"resource": {"count": N}}` (PowerQuery: `{"count": N}`)

Paging
    `page` (1-based) and `pagesize` = the tenant's `page_size` capped by the metadata's
    `<resource>_max_page_size` (100 when metadata says nothing). The `/count` says how many
    records to expect. Pages are read until an EMPTY page, or a short one once the count is
    reached (a short page before it does not end the list: the server may serve fewer than
    asked). JSON mirrors PowerSchool's XML: `{"students": {"@expansions": "...", "student":
    [...]}}`, with ONE record `student` is an object, not a list, and an empty page may omit
    `student` (or `students`, or send ""); all three are read as such. A 200 whose body has
    none of the expected keys but other ones (an error message) fails the pull.

Completeness
    Pages are offsets into a list that can change while it is read: a record inserted before
    the current page shifts one onto two pages (de-duplicated by `id`), a record removed
    shifts one past us unseen, which would read as a delete. So a list read in more than one
    page is counted again at the end: it is complete when the count did not move and at
    least that many distinct records were read; otherwise the list is read again (at most
    MAX_PASSES times, then the pull fails: an incomplete pull is never diffed). A list read
    in one answer is complete by itself. A list whose /count stays above what its pages
    hold fails the pull too (`count_mismatch`): it cannot be shown complete. A page that
    adds no new record fails the pull (a server ignoring `page` would page forever).

Errors
    Any error status after http.py's retries fails the pull (the runner records a rejected
    set with the reason; the snapshot stays as it was). Except: the guardian PowerQuery
    answering 403/404 (the plugin does not grant or define it): pulled without guardians,
    with a warning; metadata answering 403/404: default page sizes, with a warning; the
    district endpoint, above. Students carrying no `demographics` expansion at all: the
    demographics table is left out (declared `absent`: nothing deleted), with a warning.

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

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar

from ingestd.oneroster import spec
from ingestd.sources.pollers.base import (
    CheckLine,
    PageArchive,
    PullError,
    Roster,
    Row,
    register,
    text,
)
from ingestd.sources.pollers.http import ApiResponse, HttpError

if TYPE_CHECKING:
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers.http import ApiClient

DEFAULT_PAGE_SIZE = 100
MAX_PASSES = 3
GUARDIAN_QUERY = "org.ingestd.oneroster.guardians"
STUDENT_EXPANSIONS = "demographics,school_enrollment,ethnicity_race,contact_info"
STAFF_EXPANSIONS = "emails,school_affiliations"
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


@dataclass(frozen=True, slots=True)
class Resource:
    """One PowerSchool list: its name in messages, metadata cap key and JSON wrapper keys."""

    name: str
    cap_key: str
    outer: str
    inner: str


SCHOOLS = Resource("schools", "school_max_page_size", "schools", "school")
TERMS = Resource("terms", "term_max_page_size", "terms", "term")
COURSES = Resource("courses", "course_max_page_size", "courses", "course")
SECTIONS = Resource("sections", "section_max_page_size", "sections", "section")
STUDENTS = Resource("students", "student_max_page_size", "students", "student")
STAFF = Resource("staff", "staff_max_page_size", "staffs", "staff")
SECTION_ENROLLMENTS = Resource(
    "section_enrollments",
    "section_enrollment_max_page_size",
    "section_enrollments",
    "section_enrollment",
)
GUARDIANS = Resource("guardians", "schema_table_query_max_page_size", "record", "")


@dataclass(slots=True)
class _Person:
    """A users row being assembled (orgs and agents gathered across schools and queries)."""

    row: Row
    orgs: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    def add_org(self, org: str) -> None:
        if org and org not in self.orgs:
            self.orgs.append(org)

    def add_agent(self, agent: str) -> None:
        if agent not in self.agents:
            self.agents.append(agent)

    def finish(self) -> Row:
        self.row["orgSourcedIds"] = ",".join(self.orgs)
        self.row["agentSourcedIds"] = ",".join(self.agents)
        return self.row


@dataclass(slots=True)
class _School:
    sid: str
    number: str
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)  # term id -> record
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)  # course id -> record
    course_numbers: dict[str, str] = field(default_factory=dict)  # course_number -> id
    sections: list[dict[str, Any]] = field(default_factory=list)
    staff: dict[str, str] = field(default_factory=dict)  # staff id -> user sourcedId


@register("powerschool")
class PowerSchoolPoller:
    """Pulls one PowerSchool district (see the module docstring)."""

    source: ClassVar[str]

    def __init__(self, tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> None:
        self.tenant = tenant
        self.client = client
        self.pages = pages
        self.caps: dict[str, int] = {}
        self.warnings: list[str] = []
        self._contacts: dict[str, _Person] = {}

    # --- the pull ----------------------------------------------------------------------------

    async def pull(self) -> Roster:
        """The whole district, or PullError."""
        roster = Roster(warnings=self.warnings)
        await self._metadata()
        district = await self._district()
        roster.add("orgs", district)
        schools: list[_School] = []
        for record in await self._list(SCHOOLS, "/ws/v1/district/school"):
            school = _School(_id(record, "school"), text(record.get("school_number")))
            schools.append(school)
            roster.add("orgs", _org(record, school.sid))

        staff: dict[str, _Person] = {}
        students: dict[str, _Person] = {}
        demographics: dict[str, Row] = {}
        seen_demographics = False
        for school in schools:
            base = f"/ws/v1/school/{school.sid}"
            for record in await self._list(TERMS, base + "/term"):
                school.terms[_id(record, "term")] = record
            for record in await self._list(COURSES, base + "/course"):
                cid = _id(record, "course")
                school.courses[cid] = record
                if record.get("course_number") not in (None, ""):
                    school.course_numbers[text(record["course_number"])] = cid
            school.sections = await self._list(SECTIONS, base + "/section")
            params = {"expansions": STUDENT_EXPANSIONS}
            for record in await self._list(STUDENTS, base + "/student", params):
                sid = f"student-{_id(record, 'student')}"
                person = students.get(sid)
                if person is None:
                    person = students[sid] = _Person(_student_row(record, sid))
                person.add_org(school.sid)
                if "demographics" in record or "ethnicity_race" in record:
                    seen_demographics = True
                    demographics.setdefault(sid, _demographics_row(record, sid))
            params = {"expansions": STAFF_EXPANSIONS}
            for record in await self._list(STAFF, base + "/staff", params):
                sid = f"staff-{text(record.get('users_dcid')) or _id(record, 'staff')}"
                school.staff[_id(record, "staff")] = sid
                role, active = _affiliation(record, school)
                person = staff.get(sid)
                if person is None:
                    person = staff[sid] = _Person(_staff_row(record, sid, role, active))
                elif active:
                    person.row["enabledUser"] = "true"
                person.add_org(school.sid)

        sessions = _sessions(schools)
        for rows in sessions.values():
            for row in rows:
                roster.add("academicSessions", row)
        for school in schools:
            year = _school_year_term(school, sessions)
            for cid, record in school.courses.items():
                roster.add("courses", _course_row(record, school, cid, year))

        enrollments = await self._enrollments(schools)
        self._classes_and_enrollments(roster, schools, enrollments, students, staff)
        await self._guardians(students)

        for person in [*staff.values(), *students.values()]:
            roster.add("users", person.finish())
        for person in self._contacts.values():
            roster.add("users", person.finish())
        for entity in spec.ENTITY_NAMES:
            if entity != "demographics":
                roster.tables.setdefault(entity, [])
        if seen_demographics:
            roster.tables["demographics"] = list(demographics.values())
        elif students:
            self.warnings.append(
                "demographics not pulled: no student carries the demographics expansion "
                "(does the plugin grant it?); the demographics file is declared absent"
            )
        return roster

    async def _metadata(self) -> None:
        try:
            response = await self._get("metadata", "/ws/v1/metadata")
        except HttpError as exc:
            if exc.status not in (403, 404):
                raise
            self.warnings.append(
                f"/ws/v1/metadata answered HTTP {exc.status}: default page sizes "
                f"({DEFAULT_PAGE_SIZE})"
            )
            return
        body = _object(response, "/ws/v1/metadata")
        meta = body.get("metadata", body)
        if isinstance(meta, dict):
            for key, value in meta.items():
                size = _int(value)
                if key.endswith("_max_page_size") and size is not None and size > 0:
                    self.caps[key] = size

    async def _district(self) -> Row:
        name = self.tenant.name or self.tenant.id
        identifier = ""
        try:
            response = await self._get("district", "/ws/v1/district")
        except HttpError as exc:
            if exc.status not in (403, 404, 405):
                raise
        else:
            body = _object(response, "/ws/v1/district")
            record = body.get("district", body)
            if isinstance(record, dict):
                name = text(record.get("name")) or name
                identifier = text(record.get("district_number") or record.get("state_province_id"))
        return _row("orgs", sourcedId=DISTRICT_ID, name=name, type="district",
                    identifier=identifier)  # fmt: skip

    async def _enrollments(self, schools: list[_School]) -> list[list[dict[str, Any]]]:
        """Every section's enrollment records, in the order of the sections (fetched
        concurrently, within the client's `max_concurrent`)."""
        jobs = [
            self._list(
                SECTION_ENROLLMENTS, f"/ws/v1/section/{_id(s, 'section')}/section_enrollment"
            )
            for school in schools
            for s in school.sections
        ]
        return await _gather(jobs)

    def _classes_and_enrollments(
        self,
        roster: Roster,
        schools: list[_School],
        enrollments: list[list[dict[str, Any]]],
        students: dict[str, _Person],
        staff: dict[str, _Person],
    ) -> None:
        unknown_students = unknown_teachers = 0
        by_users_dcid = {sid.removeprefix("staff-"): sid for sid in staff}
        batches = iter(enrollments)
        for school in schools:
            for section in school.sections:
                records = next(batches)
                sec = _id(section, "section")
                term = school.terms.get(text(section.get("term_id")), {})
                grades: set[str] = set()
                rows: list[Row] = []
                staff_id = text(section.get("staff_id"))
                teacher = school.staff.get(staff_id) or by_users_dcid.get(staff_id)
                if teacher is not None:
                    rows.append(
                        _row("enrollments",
                             sourcedId=f"section-{sec}-{teacher}", classSourcedId=sec,
                             schoolSourcedId=school.sid, userSourcedId=teacher, role="teacher",
                             primary="true", beginDate=_date(term.get("start_date")),
                             endDate=_date(term.get("end_date")))
                    )  # fmt: skip
                elif staff_id not in ("", "0"):
                    unknown_teachers += 1
                for record in records:
                    if _truthy(record.get("dropped")):
                        continue
                    user = f"student-{text(record.get('student_id'))}"
                    person = students.get(user)
                    if person is None:
                        unknown_students += 1
                        continue
                    if person.row["grades"]:
                        grades.add(person.row["grades"])
                    rows.append(
                        _row("enrollments",
                             sourcedId=_id(record, "section enrollment"), classSourcedId=sec,
                             schoolSourcedId=school.sid, userSourcedId=user, role="student",
                             primary="", beginDate=_date(record.get("entry_date")),
                             endDate=_date(record.get("exit_date")))
                    )  # fmt: skip
                roster.add("classes", _class_row(section, school, sorted(grades, key=_grade_key)))
                for row in rows:
                    roster.add("enrollments", row)
        if unknown_students:
            self.warnings.append(
                f"{unknown_students} section enrollments name students the API did not list "
                "at any school (inactive or unshared): left out"
            )
        if unknown_teachers:
            self.warnings.append(
                f"{unknown_teachers} sections name a teacher who is not among the schools' "
                "staff: their teacher enrollment is left out"
            )

    async def _guardians(self, students: dict[str, _Person]) -> None:
        """Guardians from the plugin's PowerQuery; 403/404: none, with a warning."""
        self._contacts = {}
        path = f"/ws/schema/query/{GUARDIAN_QUERY}"
        try:
            records = await self._list(GUARDIANS, path, query=True)
        except HttpError as exc:
            if exc.status not in (403, 404):
                raise
            self.warnings.append(
                f"guardians not pulled: the PowerQuery {GUARDIAN_QUERY} answered HTTP "
                f"{exc.status} (the plugin does not define or grant it; see "
                "docs/pollers-powerschool.md)"
            )
            return
        orphans = 0
        for record in records:
            student = students.get(f"student-{text(record.get('student_dcid'))}")
            if student is None:
                orphans += 1
                continue
            cid = f"contact-{text(record.get('contact_id'))}"
            person = self._contacts.get(cid)
            if person is None:
                person = self._contacts[cid] = _Person(_guardian_row(record, cid))
            for org in student.orgs:
                person.add_org(org)
            person.add_agent(student.row["sourcedId"])
            student.add_agent(cid)
        if orphans:
            self.warnings.append(
                f"{orphans} guardian records name students the API did not list: left out"
            )

    # --- paging ------------------------------------------------------------------------------

    def page_size(self, resource: Resource) -> int:
        """Records asked per page: the tenant's page_size, capped by the metadata's."""
        cap = self.caps.get(resource.cap_key, DEFAULT_PAGE_SIZE)
        return max(1, min(self.tenant.page_size or cap, cap))

    async def _list(
        self,
        resource: Resource,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        query: bool = False,
    ) -> list[dict[str, Any]]:
        """Every record of one list, complete (see Completeness) or PullError."""
        size = self.page_size(resource)
        before = after = 0
        read = 0
        for _ in range(MAX_PASSES):
            before = await self._count(resource, path, query)
            records: dict[str, dict[str, Any]] = {}
            page = 0
            while True:
                page += 1
                if page > 2 * max(1, math.ceil(before / size)) + 10:
                    raise PullError(
                        f"{path}: page {page} and still no end ({before} records counted)",
                        "paging_loop",
                    )
                items = await self._page(resource, path, params, page, size, query)
                if not items:
                    break
                new = 0
                for item in items:
                    key = _record_key(item, resource, query)
                    if key not in records:
                        records[key] = item
                        new += 1
                if new == 0:
                    raise PullError(
                        f"{path}: page {page} repeats records already read (does the server "
                        "ignore `page`?)",
                        "paging_loop",
                    )
                if len(items) < size and len(records) >= before:
                    break
            read = len(records)
            if page == 1 and read >= before:
                return list(records.values())  # one answer: nothing could shift
            after = await self._count(resource, path, query)
            if after == before and read >= after:
                return list(records.values())
            self.client.log.warning(
                "poll.list_changed", path=path, counted=before, recounted=after, read=read
            )
        if after == before:
            raise PullError(
                f"{path}: read {read} records where its /count says {after}, "
                f"{MAX_PASSES} times; the pull cannot prove it is complete",
                "count_mismatch",
            )
        raise PullError(
            f"{path}: the list kept changing while it was read ({MAX_PASSES} passes; last "
            f"counted {before}, then {after}, read {read}); the next pull tries again",
            "unstable_list",
        )

    async def _page(
        self,
        resource: Resource,
        path: str,
        params: dict[str, Any] | None,
        page: int,
        size: int,
        query: bool,
    ) -> list[dict[str, Any]]:
        args = {**(params or {}), "page": page, "pagesize": size}
        if query:
            response = await self.client.request("POST", path, params=args, json_body={})
        else:
            response = await self.client.get(path, args)
        self.pages.record(resource.name, response.url, response.status, response.content)
        return _items(_object(response, path), resource, path)

    async def _count(self, resource: Resource, path: str, query: bool) -> int:
        if query:
            response = await self.client.request("POST", path + "/count", json_body={})
        else:
            response = await self.client.get(path + "/count")
        self.pages.record(resource.name + "_count", response.url, response.status,
                          response.content)  # fmt: skip
        body = _object(response, path + "/count")
        holder = body.get("resource", body)
        count = _int(holder.get("count")) if isinstance(holder, dict) else None
        if count is None or count < 0:
            raise PullError(f"{path}/count: the answer holds no count", "bad_response")
        return count

    async def _get(self, collection: str, path: str, **params: Any) -> ApiResponse:
        response = await self.client.get(path, params or None)
        self.pages.record(collection, response.url, response.status, response.content)
        return response

    # --- ingestd check -----------------------------------------------------------------------

    async def check(self) -> list[CheckLine]:
        """Authenticate, then read one record of each list: shared or not, and how many."""
        lines: list[CheckLine] = []

        async def probe(
            name: str, job: Callable[[], Awaitable[str]], optional: bool = False
        ) -> str | None:
            try:
                detail = await job()
            except HttpError as exc:
                word = {403: "not shared", 404: "not available"}.get(exc.status, "failing")
                fine = optional and exc.status in (403, 404)  # a pull goes on without it
                why = "; pulls go without it" if fine else ""
                lines.append(CheckLine(name, fine, f"{word} (HTTP {exc.status}){why}"))
                return None
            except PullError as exc:
                lines.append(CheckLine(name, False, exc.message))
                return None
            lines.append(CheckLine(name, True, detail))
            return detail

        async def metadata() -> str:
            await self._metadata()
            caps = ", ".join(f"{k.removesuffix('_max_page_size')} {v}"
                             for k, v in sorted(self.caps.items()))  # fmt: skip
            return f"page-size caps: {caps or 'none given'}"

        async def district() -> str:
            row = await self._district()
            return f"{row['name']!r}"

        first: dict[str, dict[str, Any]] = {}

        def one(resource: Resource, path: str, params: dict[str, Any] | None = None,
                query: bool = False) -> Callable[[], Awaitable[str]]:  # fmt: skip
            async def job() -> str:
                count = await self._count(resource, path, query)
                items = await self._page(resource, path, params, 1, 1, query)
                if items:
                    first[resource.name] = items[0]
                extra = ""
                if resource is STUDENTS and items and "demographics" not in items[0]:
                    extra = "; no demographics expansion"
                return f"shared ({len(items)} of {count:,} records read){extra}"

            return job

        await probe("metadata", metadata)
        await probe("district", district, optional=True)
        if await probe("schools", one(SCHOOLS, "/ws/v1/district/school")) and "schools" in first:
            base = f"/ws/v1/school/{_id(first['schools'], 'school')}"
            await probe("terms", one(TERMS, base + "/term"))
            await probe("courses", one(COURSES, base + "/course"))
            await probe("sections", one(SECTIONS, base + "/section"))
            await probe("students", one(STUDENTS, base + "/student",
                                        {"expansions": STUDENT_EXPANSIONS}))  # fmt: skip
            await probe("staff", one(STAFF, base + "/staff", {"expansions": STAFF_EXPANSIONS}))
            if "sections" in first:
                path = f"/ws/v1/section/{_id(first['sections'], 'section')}/section_enrollment"
                await probe("section_enrollments", one(SECTION_ENROLLMENTS, path))
        await probe("guardians", one(GUARDIANS, f"/ws/schema/query/{GUARDIAN_QUERY}",
                                     query=True), optional=True)  # fmt: skip
        return lines


# --- JSON shapes ------------------------------------------------------------------------------


def _object(response: ApiResponse, path: str) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise PullError(f"{path}: the answer is not a JSON object", "bad_response")
    return body


def _items(body: dict[str, Any], resource: Resource, path: str) -> list[dict[str, Any]]:
    """The records of one page: a list, one object (PowerSchool's single-record page), or
    none (the key omitted or empty)."""
    if resource.inner == "":  # PowerQuery: {"record": [...]}
        holder: Any = body
        key = resource.outer
    else:
        holder = body.get(resource.outer)
        key = resource.inner
        if holder is None:
            if any(not k.startswith("@") for k in body):
                raise PullError(
                    f"{path}: the answer has no {resource.outer!r} (keys: "
                    f"{', '.join(sorted(body)[:5])})",
                    "bad_response",
                )
            return []
    if holder in ("", None):
        return []
    if not isinstance(holder, dict):
        raise PullError(f"{path}: {resource.outer!r} is not an object", "bad_response")
    items = holder.get(key)
    if items in (None, ""):
        return []
    items = _as_list(items)
    if not all(isinstance(i, dict) for i in items):
        raise PullError(f"{path}: {key!r} holds something other than records", "bad_response")
    return items


def _as_list(value: Any) -> list[Any]:
    """XML-shaped JSON: one element is an object, several a list, none null or ""."""
    if value in (None, ""):
        return []
    return value if isinstance(value, list) else [value]


def _record_key(item: dict[str, Any], resource: Resource, query: bool) -> str:
    if query:
        return f"{text(item.get('contact_id'))}/{text(item.get('student_dcid'))}"
    return _id(item, resource.inner)


def _id(record: dict[str, Any], what: str) -> str:
    value = text(record.get("id"))
    if not value:
        raise PullError(f"a {what} record without an id", "bad_response")
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


def _date(value: Any) -> str:
    """A PowerSchool date ("2026-08-17", possibly with a time) as YYYY-MM-DD."""
    s = text(value).strip()
    return s[:10] if re.match(r"\d{4}-\d\d-\d\d", s) else s


def _grade(value: Any) -> str:
    """PowerSchool's numeric grade level as a CEDS code: 0 KG, 1-13 01-13, below 0 PK."""
    n = _int(value)
    if n is None:
        return ""
    if n == 0:
        return "KG"
    if 1 <= n <= 13:
        return f"{n:02d}"
    return "PK" if n < 0 else "Other"


def _grade_key(grade: str) -> int:
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


def _org(record: dict[str, Any], sid: str) -> Row:
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


def _student_row(record: dict[str, Any], sid: str) -> Row:
    enrollment = record.get("school_enrollment")
    enrollment = enrollment if isinstance(enrollment, dict) else {}
    status = text(enrollment.get("enroll_status")).upper()
    code = _int(enrollment.get("enroll_status_code"))
    enabled = status == "A" or code == 0 or (not status and code is None)
    contact = record.get("contact_info")
    email = text(contact.get("email")) if isinstance(contact, dict) else ""
    number = text(record.get("local_id"))
    return _row("users", sourcedId=sid, enabledUser="true" if enabled else "false",
                role="student", username=text(record.get("student_username")),
                userIds=f"{{SIS:{number}}}" if number else "", **_names(record),
                identifier=number, email=email,
                grades=_grade(enrollment.get("grade_level")))  # fmt: skip


def _demographics_row(record: dict[str, Any], sid: str) -> Row:
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
            for r in _as_list(races)
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


def _affiliation(record: dict[str, Any], school: _School) -> tuple[str, bool]:
    """The staff member's role and active state at `school` (from school_affiliations)."""
    holder = record.get("school_affiliations")
    found = _as_list(holder.get("school_affiliation")) if isinstance(holder, dict) else []
    found = [a for a in found if isinstance(a, dict)]
    here = [a for a in found if text(a.get("school_id")) in (school.sid, school.number)]
    chosen = (here or found or [{}])[0]
    role = STAFF_ROLES.get(_int(chosen.get("type")) or 1, "teacher")
    status = _int(chosen.get("status"))
    return role, status in (None, 1)


def _staff_row(record: dict[str, Any], sid: str, role: str, active: bool) -> Row:
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


def _guardian_row(record: dict[str, Any], sid: str) -> Row:
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


def _sessions(schools: Iterable[_School]) -> dict[str, list[Row]]:
    """academicSessions rows per school: types, parents and school years (module docstring)."""
    out: dict[str, list[Row]] = {}
    for school in schools:
        ranked = []
        for tid, t in school.terms.items():
            portion = _int(t.get("portion"))
            local = _int(t.get("local_id"))
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


def _school_year_term(school: _School, sessions: dict[str, list[Row]]) -> str:
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


def _course_row(record: dict[str, Any], school: _School, cid: str, year: str) -> Row:
    return _row("courses", sourcedId=f"{school.sid}-{cid}", schoolYearSourcedId=year,
                title=text(record.get("course_name")),
                courseCode=text(record.get("course_number")),
                orgSourcedId=school.sid)  # fmt: skip


def _class_row(section: dict[str, Any], school: _School, grades: list[str]) -> Row:
    course_id = text(section.get("course_id"))
    if course_id not in school.courses:
        course_id = school.course_numbers.get(course_id, course_id)
    course = school.courses.get(course_id, {})
    name = text(course.get("course_name"))
    number = text(section.get("section_number"))
    code = text(course.get("course_number"))
    title = f"{name} - Section {number}" if name and number else name or number
    return _row("classes", sourcedId=_id(section, "section"), title=title,
                grades=",".join(grades), courseSourcedId=f"{school.sid}-{course_id}",
                classCode=f"{code}.{number}" if code and number else code or number,
                classType="scheduled", location=text(section.get("room")),
                schoolSourcedId=school.sid, termSourcedIds=text(section.get("term_id")),
                periods=_periods(section.get("expression")))  # fmt: skip


async def _gather(jobs: list[Awaitable[Any]]) -> list[Any]:
    """Run `jobs` concurrently; the first PullError cancels the rest and is raised as is."""
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_wrap(job)) for job in jobs]
    except BaseExceptionGroup as errors:
        leaves = list(_leaves(errors))
        if leaves and all(isinstance(e, PullError) for e in leaves):
            raise leaves[0] from None
        raise
    return [t.result() for t in tasks]


async def _wrap(job: Awaitable[Any]) -> Any:
    return await job


def _leaves(group: BaseExceptionGroup) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
