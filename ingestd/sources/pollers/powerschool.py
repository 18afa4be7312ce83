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

Paging and completeness
    powerschool_api.py (module docstring): lists read by `page` until proven complete.

Errors
    Any error status after http.py's retries fails the pull (the runner records a rejected
    set with the reason; the snapshot stays as it was). Except: the guardian PowerQuery
    answering 403/404 (the plugin does not grant or define it): pulled without guardians,
    with a warning; metadata answering 403/404: default page sizes, with a warning; the
    district endpoint, above. Students carrying no `demographics` expansion at all: the
    demographics table is left out (declared `absent`: nothing deleted), with a warning.

The records' sourcedIds and the field mapping to OneRoster: powerschool_map.py (module
docstring).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
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
from ingestd.sources.pollers.http import HttpError
from ingestd.sources.pollers.powerschool_api import (
    COURSES,
    DEFAULT_PAGE_SIZE,
    GUARDIANS,
    SCHOOLS,
    SECTION_ENROLLMENTS,
    SECTIONS,
    STAFF,
    STUDENTS,
    TERMS,
    PowerSchoolLists,
    Resource,
    object_body,
)
from ingestd.sources.pollers.powerschool_map import (
    School,
    affiliation,
    as_int,
    class_row,
    course_row,
    demographics_row,
    district_row,
    grade_key,
    guardian_row,
    org_row,
    record_id,
    school_year_term,
    session_rows,
    staff_row,
    student_enrollment_row,
    student_row,
    teacher_enrollment_row,
)

if TYPE_CHECKING:
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers.http import ApiClient

GUARDIAN_QUERY = "org.ingestd.oneroster.guardians"
STUDENT_EXPANSIONS = "demographics,school_enrollment,ethnicity_race,contact_info"
STAFF_EXPANSIONS = "emails,school_affiliations"


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


@register("powerschool")
class PowerSchoolPoller:
    """Pulls one PowerSchool district (see the module docstring)."""

    source: ClassVar[str]

    def __init__(self, tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> None:
        self.tenant = tenant
        self.lists = PowerSchoolLists(tenant, client, pages)
        self.warnings: list[str] = []
        self._contacts: dict[str, _Person] = {}

    # --- the pull ----------------------------------------------------------------------------

    async def pull(self) -> Roster:
        """The whole district, or PullError."""
        return await self.lists.archive.around(self._pull())

    async def _pull(self) -> Roster:
        roster = Roster(warnings=self.warnings)
        await self._metadata()
        district = await self._district()
        roster.add("orgs", district)
        schools: list[School] = []
        for record in await self.lists.read(SCHOOLS, "/ws/v1/district/school"):
            school = School(record_id(record, "school"), text(record.get("school_number")))
            schools.append(school)
            roster.add("orgs", org_row(record, school.sid))

        staff: dict[str, _Person] = {}
        students: dict[str, _Person] = {}
        demographics: dict[str, Row] = {}
        seen_demographics = False
        for school in schools:
            base = f"/ws/v1/school/{school.sid}"
            for record in await self.lists.read(TERMS, base + "/term"):
                school.terms[record_id(record, "term")] = record
            for record in await self.lists.read(COURSES, base + "/course"):
                cid = record_id(record, "course")
                school.courses[cid] = record
                if record.get("course_number") not in (None, ""):
                    school.course_numbers[text(record["course_number"])] = cid
            school.sections = await self.lists.read(SECTIONS, base + "/section")
            params = {"expansions": STUDENT_EXPANSIONS}
            for record in await self.lists.read(STUDENTS, base + "/student", params):
                sid = f"student-{record_id(record, 'student')}"
                person = students.get(sid)
                if person is None:
                    person = students[sid] = _Person(student_row(record, sid))
                person.add_org(school.sid)
                if "demographics" in record or "ethnicity_race" in record:
                    seen_demographics = True
                    demographics.setdefault(sid, demographics_row(record, sid))
            params = {"expansions": STAFF_EXPANSIONS}
            for record in await self.lists.read(STAFF, base + "/staff", params):
                sid = f"staff-{text(record.get('users_dcid')) or record_id(record, 'staff')}"
                school.staff[record_id(record, "staff")] = sid
                role, active = affiliation(record, school)
                person = staff.get(sid)
                if person is None:
                    person = staff[sid] = _Person(staff_row(record, sid, role, active))
                elif active:
                    person.row["enabledUser"] = "true"
                person.add_org(school.sid)

        sessions = session_rows(schools)
        for rows in sessions.values():
            for row in rows:
                roster.add("academicSessions", row)
        for school in schools:
            year = school_year_term(school, sessions)
            for cid, record in school.courses.items():
                roster.add("courses", course_row(record, school, cid, year))

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
            response = await self.lists.get("metadata", "/ws/v1/metadata")
        except HttpError as exc:
            if exc.status not in (403, 404):
                raise
            self.warnings.append(
                f"/ws/v1/metadata answered HTTP {exc.status}: default page sizes "
                f"({DEFAULT_PAGE_SIZE})"
            )
            return
        body = object_body(response, "/ws/v1/metadata")
        meta = body.get("metadata", body)
        if isinstance(meta, dict):
            for key, value in meta.items():
                size = as_int(value)
                if key.endswith("_max_page_size") and size is not None and size > 0:
                    self.lists.caps[key] = size

    async def _district(self) -> Row:
        name = self.tenant.name or self.tenant.id
        identifier = ""
        try:
            response = await self.lists.get("district", "/ws/v1/district")
        except HttpError as exc:
            if exc.status not in (403, 404, 405):
                raise
        else:
            body = object_body(response, "/ws/v1/district")
            record = body.get("district", body)
            if isinstance(record, dict):
                name = text(record.get("name")) or name
                identifier = text(record.get("district_number") or record.get("state_province_id"))
        return district_row(name, identifier)

    async def _enrollments(self, schools: list[School]) -> list[list[dict[str, Any]]]:
        """Every section's enrollment records, in the order of the sections (fetched
        concurrently, within the client's `max_concurrent`)."""
        jobs = [
            self.lists.read(
                SECTION_ENROLLMENTS, f"/ws/v1/section/{record_id(s, 'section')}/section_enrollment"
            )
            for school in schools
            for s in school.sections
        ]
        return await _gather(jobs)

    def _classes_and_enrollments(
        self,
        roster: Roster,
        schools: list[School],
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
                sec = record_id(section, "section")
                term = school.terms.get(text(section.get("term_id")), {})
                grades: set[str] = set()
                rows: list[Row] = []
                staff_id = text(section.get("staff_id"))
                teacher = school.staff.get(staff_id) or by_users_dcid.get(staff_id)
                if teacher is not None:
                    rows.append(teacher_enrollment_row(sec, school, teacher, term))
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
                    rows.append(student_enrollment_row(record, sec, school, user))
                roster.add("classes", class_row(section, school, sorted(grades, key=grade_key)))
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
            records = await self.lists.read(GUARDIANS, path, query=True)
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
                person = self._contacts[cid] = _Person(guardian_row(record, cid))
            for org in student.orgs:
                person.add_org(org)
            person.add_agent(student.row["sourcedId"])
            student.add_agent(cid)
        if orphans:
            self.warnings.append(
                f"{orphans} guardian records name students the API did not list: left out"
            )

    # --- ingestd check -----------------------------------------------------------------------

    async def check(self) -> list[CheckLine]:
        """Authenticate, then read one record of each list: shared or not, and how many."""
        return await self.lists.archive.around(self._check())

    async def _check(self) -> list[CheckLine]:
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
                             for k, v in sorted(self.lists.caps.items()))  # fmt: skip
            return f"page-size caps: {caps or 'none given'}"

        async def district() -> str:
            row = await self._district()
            return f"{row['name']!r}"

        first: dict[str, dict[str, Any]] = {}

        def one(resource: Resource, path: str, params: dict[str, Any] | None = None,
                query: bool = False) -> Callable[[], Awaitable[str]]:  # fmt: skip
            async def job() -> str:
                count = await self.lists.count(resource, path, query)
                items = await self.lists.page(resource, path, params, 1, 1, query)
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
            base = f"/ws/v1/school/{record_id(first['schools'], 'school')}"
            await probe("terms", one(TERMS, base + "/term"))
            await probe("courses", one(COURSES, base + "/course"))
            await probe("sections", one(SECTIONS, base + "/section"))
            await probe("students", one(STUDENTS, base + "/student",
                                        {"expansions": STUDENT_EXPANSIONS}))  # fmt: skip
            await probe("staff", one(STAFF, base + "/staff", {"expansions": STAFF_EXPANSIONS}))
            if "sections" in first:
                sec = record_id(first["sections"], "section")
                path = f"/ws/v1/section/{sec}/section_enrollment"
                await probe("section_enrollments", one(SECTION_ENROLLMENTS, path))
        await probe("guardians", one(GUARDIANS, f"/ws/schema/query/{GUARDIAN_QUERY}",
                                     query=True), optional=True)  # fmt: skip
        return lines


# --- JSON shapes ------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


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
