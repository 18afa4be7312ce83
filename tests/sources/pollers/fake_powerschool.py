"""A fake PowerSchool plugin API (real HTTP on 127.0.0.1, fakehttp.FakeServer) serving a CSV
district (`ingestd.oneroster.sample.generate` output) converted into PowerSchool's shapes.

    district = from_oneroster(folder)           # PowerSchool-side records + id mapping
    fake = FakePowerSchool(district, caps={"student": 20})
    with fake: ...                               # fake.url, fake.server, fake.issuer

What it reproduces (SIS-APIS.md, PowerSchool):
- the token: `POST /oauth/access_token`, Basic client_id:client_secret, form body,
  `expires_in` as a string; every /ws/ request needs the bearer token (`regenerate_after(n)`
  invalidates all tokens after n API requests, as regenerating credentials does;
  `change_secret()` also changes the secret, so re-authenticating fails);
- `GET /ws/v1/metadata` -> `{"metadata": {..., "<resource>_max_page_size": n}}`, and `pagesize`
  silently clamped to those caps;
- `/ws/v1/district` (switchable off: 404), `/ws/v1/district/school`, `/ws/v1/school/{id}/
  term|course|section|student|staff`, `/ws/v1/section/{id}/section_enrollment`, each with
  `/count` -> `{"resource": {"count": N}}`; `page` 1-based, `pagesize`;
- XML-shaped JSON: `{"students": {"@expansions": "...", "student": [...]}}`, ONE record as an
  object (not a list; `single_object_pages` counts them), an empty page omitting the inner key
  (`empty_page = "outer"` omits the wrapper too, `"blank"` sends `""`); empty values omitted;
- expansions only when asked for (`expansions=`), demographics/ethnicity_race only when
  `demographics_granted`;
- the guardian PowerQuery `POST /ws/schema/query/{name}` (+ `/count` -> `{"count": N}`) ->
  `{"name": ..., "record": [...]}`, refused with `guardian_status = 403|404`;
- records inserted (or removed) between pages: `after_page(pattern, page, action)`;
- a `/count` that says more than the list holds: `overcount(pattern, n)`;
- faults through `fake.server.fail_next(...)`: 429 + Retry-After, 5xx, truncated JSON,
  connection reset, a slow answer.

The conversion keeps what PowerSchool has a place for; `District.ids` maps each generator
sourcedId to the PowerSchool ids it became, for the tests to build expectations.
"""

from __future__ import annotations

import csv
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.sources.pollers.fakehttp import FakeServer, OAuth2Issuer, Reply, Request

CLIENT_ID = "9f2c7a43-ingestd-plugin"
CLIENT_SECRET = "b1e0c6f4-62d3+/=secret"
TOKEN_PATH = "/oauth/access_token"
GUARDIAN_QUERY = "org.ingestd.oneroster.guardians"
EXPIRES_IN = "1814654"  # PowerSchool sends a string

DEFAULT_CAPS = {
    "school": 100,
    "term": 100,
    "course": 100,
    "section": 100,
    "student": 100,
    "staff": 100,
    "section_enrollment": 100,
    "schema_table_query": 100,
}
PORTION = {"schoolYear": 1, "semester": 2, "term": 3, "gradingPeriod": 4}
RACES = {
    "americanIndianOrAlaskaNative": "I",
    "asian": "A",
    "blackOrAfricanAmerican": "B",
    "nativeHawaiianOrOtherPacificIslander": "P",
    "white": "W",
}
GRADES = {"PK": -1, "KG": 0, **{f"{n:02d}": n for n in range(1, 14)}}
STUDENT_EXPANSIONS = (
    "demographics, addresses, alerts, phones, school_enrollment, ethnicity_race, contact, "
    "contact_info, initial_enrollment, schedule_setup, fees, lunch"
)
STAFF_EXPANSIONS = "addresses, emails, phones, school_affiliations"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """PowerSchool leaves empty values out."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            v = compact(v)
            if not v:
                continue
        if v in ("", None):
            continue
        out[k] = v
    return out


def expression(periods: str) -> str:
    """Generator periods ("1,2", "6", "HR") as a PowerSchool expression ("1-2(A)", ...)."""
    parts = periods.split(",") if periods else []
    if not parts:
        return ""
    if all(p.isdigit() for p in parts):
        nums = [int(p) for p in parts]
        if nums == list(range(nums[0], nums[-1] + 1)):
            return f"{nums[0]}-{nums[-1]}(A)" if len(nums) > 1 else f"{nums[0]}(A)"
    return " ".join(f"{p}(A)" for p in parts)


class _Seq:
    """A table's DCID sequence. Every table starts at the same number on purpose: DCIDs of
    different tables collide in real PowerSchool too."""

    def __init__(self, start: int = 1001) -> None:
        self.n = start - 1

    def __call__(self) -> int:
        self.n += 1
        return self.n


@dataclass
class District:
    """The district as PowerSchool holds it (records in the API's JSON shapes)."""

    district: dict[str, Any]
    schools: list[dict[str, Any]]
    terms: dict[int, list[dict[str, Any]]]
    courses: dict[int, list[dict[str, Any]]]
    sections: dict[int, list[dict[str, Any]]]
    students: dict[int, list[dict[str, Any]]]
    staff: dict[int, list[dict[str, Any]]]
    enrollments: dict[int, list[dict[str, Any]]]  # section id -> section_enrollment records
    contacts: list[dict[str, Any]]  # PowerQuery records, one per (contact, student)
    ids: dict[tuple[str, str], Any] = field(default_factory=dict)
    """(entity, generator sourcedId) -> what it became:
    orgs: school id (the district: None); academicSessions: {school id: term id};
    courses: (school id, course id); classes: section id;
    users: ("student", id) | ("staff", users_dcid) | ("contact", contact id) | None (not
    carried: district-office staff); enrollments: ("cc", id) | ("teacher", section id,
    users_dcid)."""
    cc_seq: _Seq = field(default_factory=lambda: _Seq(5001))
    student_seq: _Seq = field(default_factory=lambda: _Seq(9001))

    # --- reading ---------------------------------------------------------------------------

    def all_students(self) -> list[dict[str, Any]]:
        return [s for school in self.schools for s in self.students[school["id"]]]

    def student(self, dcid: int) -> dict[str, Any]:
        return next(s for s in self.all_students() if s["id"] == dcid)

    def section_of(self, section_id: int) -> dict[str, Any]:
        return next(s for ss in self.sections.values() for s in ss if s["id"] == section_id)

    # --- changes between pulls (or between pages) ------------------------------------------

    def set_email(self, dcid: int, email: str) -> None:
        self.student(dcid)["contact_info"] = {"email": email}

    def remove_student(self, dcid: int) -> list[int]:
        """Withdraw a student everywhere: school lists, section enrollments, contacts.
        Returns the ids of the section enrollments that went with them."""
        for school in self.schools:
            self.students[school["id"]] = [
                s for s in self.students[school["id"]] if s["id"] != dcid
            ]
        gone = []
        for section_id, records in self.enrollments.items():
            gone += [r["id"] for r in records if r["student_id"] == dcid]
            self.enrollments[section_id] = [r for r in records if r["student_id"] != dcid]
        self.contacts = [c for c in self.contacts if c["student_dcid"] != str(dcid)]
        return gone

    def add_student(
        self, school_id: int, record: dict[str, Any], sections: list[int], index: int | None = None
    ) -> list[int]:
        """Enroll a new student (record without id: one is given) at `school_id`, at `index`
        of the school's list (default: the end), in `sections`. Returns the new section
        enrollment ids."""
        record = {"id": self.student_seq(), **record}
        school_list = self.students[school_id]
        school_list.insert(len(school_list) if index is None else index, record)
        new = []
        for section_id in sections:
            term = self.term_of(self.section_of(section_id))
            cc = {
                "id": self.cc_seq(),
                "section_id": section_id,
                "student_id": record["id"],
                "entry_date": term["start_date"],
                "exit_date": term["end_date"],
                "dropped": False,
            }
            self.enrollments[section_id].append(cc)
            new.append(cc["id"])
        return new

    def term_of(self, section: dict[str, Any]) -> dict[str, Any]:
        return next(t for t in self.terms[section["school_id"]] if t["id"] == section["term_id"])


def from_oneroster(folder: Path) -> District:
    """Convert a generated OneRoster CSV district into PowerSchool's records."""
    t = {name: read_csv(folder / f"{name}.csv") for name in (
        "orgs", "academicSessions", "courses", "classes", "users", "demographics", "enrollments"
    )}  # fmt: skip
    ids: dict[tuple[str, str], Any] = {}
    school_seq, term_seq, course_seq, section_seq = _Seq(), _Seq(), _Seq(), _Seq()
    staff_seq, users_seq, contact_seq = _Seq(), _Seq(), _Seq(200001)
    district_row = next(o for o in t["orgs"] if o["type"] == "district")
    ids["orgs", district_row["sourcedId"]] = None
    district = compact(
        {"name": district_row["name"], "district_number": district_row["identifier"]}
    )

    schools: list[dict[str, Any]] = []
    school_of: dict[str, int] = {}  # generator org sourcedId -> school id
    for n, o in enumerate(o for o in t["orgs"] if o["type"] == "school"):
        sid = school_seq()
        school_of[o["sourcedId"]] = sid
        ids["orgs", o["sourcedId"]] = sid
        schools.append(compact({"id": sid, "school_number": 100 * (n + 1), "name": o["name"],
                                "state_province_id": o["identifier"]}))  # fmt: skip

    # Terms: PowerSchool keeps them per school; a year's term ids (local_id) are yearid*100+n.
    sessions = t["academicSessions"]
    terms: dict[int, list[dict[str, Any]]] = {}
    for school in schools:
        terms[school["id"]] = []
        for n, s in enumerate(sessions):
            tid = term_seq()
            ids.setdefault(("academicSessions", s["sourcedId"]), {})[school["id"]] = tid
            yearid = int(s["schoolYear"]) - 1991
            terms[school["id"]].append(compact({
                "id": tid, "local_id": yearid * 100 + n, "name": s["title"],
                "abbreviation": "".join(w[0] for w in s["title"].split())[:6],
                "school_id": school["id"], "start_date": s["startDate"],
                "end_date": s["endDate"], "portion": PORTION[s["type"]],
            }))  # fmt: skip
    parent_of = {s["sourcedId"]: s["parentSourcedId"] for s in sessions}

    # Courses: one PowerSchool course per course number, district-wide; listed per school.
    course_ids: dict[str, int] = {}
    courses: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in schools}
    for c in t["courses"]:
        cid = course_ids.setdefault(c["courseCode"], course_seq())
        school = school_of[c["orgSourcedId"]]
        ids["courses", c["sourcedId"]] = (school, cid)
        courses[school].append(
            compact({"id": cid, "course_number": c["courseCode"], "course_name": c["title"]})
        )

    # Staff: one record per (person, school), district office staff left out (not a school).
    staff: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in schools}
    staff_at: dict[tuple[str, int], int] = {}  # (person, school) -> staff record id
    people = {u["sourcedId"]: u for u in t["users"]}
    users_dcid: dict[str, int] = {}

    def staff_record(u: dict[str, str], school: int) -> int:
        dcid = users_dcid.setdefault(u["sourcedId"], users_seq())
        ids["users", u["sourcedId"]] = ("staff", dcid)
        rid = staff_seq()
        admin = u["role"] == "administrator"
        staff[school].append(compact({
            "id": rid, "users_dcid": dcid, "local_id": u["identifier"],
            "admin_username": u["username"] if admin else "",
            "teacher_username": "" if admin else u["username"],
            "name": {"first_name": u["givenName"], "middle_name": u["middleName"],
                     "last_name": u["familyName"]},
            "emails": {"work_email": u["email"]},
            "school_affiliations": {"school_affiliation": {
                "school_id": school, "type": 2 if admin else 1,
                "status": 1 if u["enabledUser"] == "true" else 2}},
        }))  # fmt: skip
        staff_at[u["sourcedId"], school] = rid
        return rid

    for u in t["users"]:
        if u["role"] in ("teacher", "administrator"):
            ids["users", u["sourcedId"]] = None
            for org in u["orgSourcedIds"].split(","):
                if org in school_of:
                    staff_record(u, school_of[org])

    # Students, with the expansions PowerSchool would send when asked.
    demo = {d["sourcedId"]: d for d in t["demographics"]}
    students: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in schools}
    student_seq = _Seq(1001)
    student_id: dict[str, int] = {}
    year = next(s for s in sessions if s["type"] == "schoolYear")
    for u in t["users"]:
        if u["role"] != "student":
            continue
        dcid = student_seq()
        student_id[u["sourcedId"]] = dcid
        ids["users", u["sourcedId"]] = ("student", dcid)
        school = school_of[u["orgSourcedIds"].split(",")[0]]
        d = demo.get(u["sourcedId"], {})
        races = [code for col, code in RACES.items() if d.get(col) == "true"]
        race_list: Any = [{"district_race_code": c} for c in races]
        if len(race_list) == 1:
            race_list = race_list[0]  # one element: an object, as everywhere in this JSON
        enabled = u["enabledUser"] == "true"
        students[school].append(compact({
            "id": dcid, "local_id": int(u["identifier"]), "student_username": u["username"],
            "name": {"first_name": u["givenName"], "middle_name": u["middleName"],
                     "last_name": u["familyName"]},
            "demographics": {"gender": {"male": "M", "female": "F"}.get(d.get("sex", ""), ""),
                             "birth_date": d.get("birthDate", ""),
                             "district_entry_date": year["startDate"]},
            "school_enrollment": {"school_id": school, "grade_level": GRADES[u["grades"]],
                                  "enroll_status": "A" if enabled else "I",
                                  "enroll_status_code": 0 if enabled else 2,
                                  "entry_date": year["startDate"],
                                  "exit_date": year["endDate"]},
            "ethnicity_race": {"federal_ethnicity":
                               "YES" if d.get("hispanicOrLatinoEthnicity") == "true" else "NO",
                               "races": race_list} if d else {},
            "contact_info": {"email": u["email"]},
        }))  # fmt: skip

    # Sections, their teacher (the primary teacher enrollment) and section enrollments.
    teacher_of = {
        e["classSourcedId"]: e["userSourcedId"]
        for e in t["enrollments"]
        if e["role"] == "teacher" and e["primary"] == "true"
    }
    sections: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in schools}
    section_id: dict[str, int] = {}
    for c in t["classes"]:
        school = school_of[c["schoolSourcedId"]]
        secid = section_seq()
        section_id[c["sourcedId"]] = secid
        ids["classes", c["sourcedId"]] = secid
        listed = c["termSourcedIds"].split(",")
        parents = {parent_of[s] for s in listed}
        term = parents.pop() if len(listed) > 1 and len(parents) == 1 else listed[0]
        teacher = teacher_of.get(c["sourcedId"])
        staff_id = None
        if teacher is not None:
            staff_id = staff_at.get((teacher, school)) or staff_record(people[teacher], school)
        code = c["classCode"]
        sections[school].append(compact({
            "id": secid, "school_id": school, "course_id": ids["courses", c["courseSourcedId"]][1],
            "section_number": code.rsplit("-", 1)[-1], "term_id":
            ids["academicSessions", term][school], "staff_id": staff_id,
            "expression": expression(c["periods"]), "external_expression": c["periods"],
            "room": c["location"], "gradebooktype": 2,
        }))  # fmt: skip

    enrollments: dict[int, list[dict[str, Any]]] = {
        s["id"]: [] for ss in sections.values() for s in ss
    }
    cc_seq = _Seq(5001)
    for e in t["enrollments"]:
        secid = section_id[e["classSourcedId"]]
        if e["role"] == "teacher":
            ids["enrollments", e["sourcedId"]] = ("teacher", secid, users_dcid[e["userSourcedId"]])
            continue
        cc = cc_seq()
        ids["enrollments", e["sourcedId"]] = ("cc", cc)
        enrollments[secid].append({
            "id": cc, "section_id": secid, "student_id": student_id[e["userSourcedId"]],
            "entry_date": e["beginDate"], "exit_date": e["endDate"], "dropped": False,
        })  # fmt: skip
    # A few students dropped a section before it started: PowerSchool still lists them.
    for n, (secid, records) in enumerate(sorted(enrollments.items())):
        if n % 7 or not records:
            continue
        section = next(s for ss in sections.values() for s in ss if s["id"] == secid)
        inside = {r["student_id"] for r in records}
        outsider = next(
            (s["id"] for s in students[section["school_id"]] if s["id"] not in inside), None
        )
        if outsider is not None:
            start = records[0]["entry_date"]
            records.append({"id": cc_seq(), "section_id": secid, "student_id": outsider,
                            "entry_date": start, "exit_date": start, "dropped": True})  # fmt: skip

    # Guardians: the PowerQuery's records, one per (contact, student).
    contacts: list[dict[str, Any]] = []
    for n, u in enumerate(u for u in t["users"] if u["role"] in ("parent", "guardian")):
        cid = contact_seq()
        ids["users", u["sourcedId"]] = ("contact", cid)
        relationship = ("Mother", "Father")[n % 2] if u["role"] == "parent" else "Legal Guardian"
        for kid in u["agentSourcedIds"].split(","):
            contacts.append(compact({
                "contact_id": str(cid), "student_dcid": str(student_id[kid]),
                "first_name": u["givenName"], "middle_name": u["middleName"],
                "last_name": u["familyName"], "email": u["email"], "phone": u["phone"],
                "sms_phone": u["sms"], "relationship": relationship, "username": u["username"],
            }))  # fmt: skip

    return District(
        district, schools, terms, courses, sections, students, staff, enrollments, contacts,
        ids, cc_seq=cc_seq, student_seq=student_seq,
    )  # fmt: skip


# --- the server -------------------------------------------------------------------------------


class FakePowerSchool:
    """The plugin API over `district` (see the module docstring)."""

    def __init__(
        self,
        district: District,
        *,
        caps: dict[str, int] | None = None,
        expires_in: int | str = EXPIRES_IN,
        server: FakeServer | None = None,
    ) -> None:
        self.district = district
        self.caps = {**DEFAULT_CAPS, **(caps or {})}
        self.server = server or FakeServer()
        self.server.before.append(self._count_api)
        self.issuer = OAuth2Issuer(
            self.server, TOKEN_PATH, CLIENT_ID, CLIENT_SECRET, expires_in=expires_in,
            protect=r"/ws/",
        )  # fmt: skip
        self.guardian_status: int | None = None
        self.district_endpoint = True
        self.demographics_granted = True
        self.empty_page = "inner"  # inner | outer | blank
        self.single_object_pages = 0
        self.empty_pages = 0
        self.api_requests = 0
        self._regenerate_at: int | None = None
        self._hooks: list[tuple[re.Pattern[str], int, Callable[[], None]]] = []
        self._overcount: list[tuple[re.Pattern[str], int]] = []
        r = self.server.route
        r("GET", r"/ws/v1/metadata")(self._metadata)
        r("GET", r"/ws/v1/district")(self._district)
        r("GET", r"/ws/v1/district/school(/count)?")(self._schools)
        r("GET", r"/ws/v1/school/(\d+)/(term|course|section|student|staff)(/count)?")(
            self._school_list
        )
        r("GET", r"/ws/v1/section/(\d+)/section_enrollment(/count)?")(self._section_enrollments)
        r("POST", r"/ws/schema/query/([\w.]+?)(/count)?")(self._query)

    # --- control ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> FakePowerSchool:
        self.server.start()
        _no_delay(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def regenerate_after(self, requests: int) -> None:
        """After `requests` more API requests every token stops working (credentials
        regenerated, same secret): the next request answers 401."""
        self._regenerate_at = self.api_requests + requests

    def change_secret(self, secret: str) -> None:
        """The district regenerated the client secret: tokens die and the old secret fails."""
        self.issuer.client_secret = secret
        self.issuer.expire_all()

    def after_page(self, pattern: str, page: int, action: Callable[[], None]) -> None:
        """Run `action` once, right after page `page` of a list whose path matches `pattern`
        has been answered (records inserted or removed between pages)."""
        self._hooks.append((re.compile(pattern), page, action))

    def overcount(self, pattern: str, extra: int) -> None:
        """`/count` of lists whose path matches `pattern` says `extra` more than they hold."""
        self._overcount.append((re.compile(pattern), extra))

    def requests_to(self, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        return [r for r in self.server.requests if rx.search(r.path)]

    # --- handlers -----------------------------------------------------------------------------

    def _count_api(self, req: Request) -> Reply | None:
        if req.path.startswith("/ws/"):
            self.api_requests += 1
            if self._regenerate_at is not None and self.api_requests > self._regenerate_at:
                self._regenerate_at = None
                self.issuer.expire_all()
        return None

    def _metadata(self, req: Request) -> Reply:
        meta: dict[str, Any] = {
            "powerschool_version": "24.7.0.0",
            "plugin_id": 4242,
            "state": "MN",
            **{f"{k}_max_page_size": v for k, v in self.caps.items()},
        }
        return Reply(json={"metadata": meta})

    def _district(self, req: Request) -> Reply:
        if not self.district_endpoint:
            return Reply(404, json={"message": "Not Found"})
        return Reply(json={"district": self.district.district})

    def _schools(self, req: Request) -> Reply:
        return self._list(req, self.district.schools, "school", "schools", "school")

    def _school_list(self, req: Request) -> Reply:
        m = re.match(r"/ws/v1/school/(\d+)/(\w+)", req.path)
        assert m is not None
        school, what = int(m.group(1)), m.group(2)
        table = {
            "term": self.district.terms,
            "course": self.district.courses,
            "section": self.district.sections,
            "student": self.district.students,
            "staff": self.district.staff,
        }[what]
        if school not in table:
            return Reply(404, json={"message": "school not found"})
        records = table[school]
        wanted = {e.strip() for e in (req.arg("expansions") or "").split(",") if e.strip()}
        if what == "student":
            if not self.demographics_granted:
                wanted -= {"demographics", "ethnicity_race"}
            keep = {"demographics", "school_enrollment", "ethnicity_race", "contact_info"}
            records = [
                {k: v for k, v in r.items() if k not in keep or k in wanted} for r in records
            ]
            return self._list(req, records, "student", "students", "student",
                              STUDENT_EXPANSIONS)  # fmt: skip
        if what == "staff":
            keep = {"emails", "school_affiliations"}
            records = [
                {k: v for k, v in r.items() if k not in keep or k in wanted} for r in records
            ]
            return self._list(req, records, "staff", "staffs", "staff", STAFF_EXPANSIONS)
        return self._list(req, records, what, what + "s", what)

    def _section_enrollments(self, req: Request) -> Reply:
        m = re.match(r"/ws/v1/section/(\d+)/", req.path)
        assert m is not None
        records = self.district.enrollments.get(int(m.group(1)))
        if records is None:
            return Reply(404, json={"message": "section not found"})
        return self._list(req, records, "section_enrollment", "section_enrollments",
                          "section_enrollment")  # fmt: skip

    def _query(self, req: Request) -> Reply:
        name = req.path.removeprefix("/ws/schema/query/").removesuffix("/count")
        if name != GUARDIAN_QUERY:
            return Reply(404, json={"message": f"PowerQuery {name} not found"})
        if self.guardian_status is not None:
            return Reply(self.guardian_status, json={"message": "Access denied"})
        records = self.district.contacts
        if req.path.endswith("/count"):
            return Reply(json={"count": len(records)})
        page, size = self._paging(req, "schema_table_query")
        chunk = records[(page - 1) * size : page * size]
        body: dict[str, Any] = {"name": GUARDIAN_QUERY}
        if chunk:
            body["record"] = chunk
        else:
            self.empty_pages += 1
        self._after(req, page)
        return Reply(json=body)

    def _paging(self, req: Request, cap: str) -> tuple[int, int]:
        page = max(1, int(req.arg("page") or 1))
        size = int(req.arg("pagesize") or 100)
        return page, max(1, min(size, self.caps[cap]))  # clamped without a word

    def _list(
        self,
        req: Request,
        records: list[dict[str, Any]],
        cap: str,
        outer: str,
        inner: str,
        expansions: str = "",
    ) -> Reply:
        if req.path.endswith("/count"):
            extra = sum(n for rx, n in self._overcount if rx.search(req.path))
            return Reply(json={"resource": {"count": len(records) + extra}})
        page, size = self._paging(req, cap)
        chunk = records[(page - 1) * size : page * size]
        holder: dict[str, Any] = {"@expansions": expansions} if expansions else {}
        body: dict[str, Any]
        if chunk:
            if len(chunk) == 1:
                self.single_object_pages += 1
            holder[inner] = chunk[0] if len(chunk) == 1 else chunk
            body = {outer: holder}
        else:
            self.empty_pages += 1
            body = {"outer": {}, "blank": {outer: ""}}.get(self.empty_page, {outer: holder})
        self._after(req, page)
        return Reply(json=body)

    def _after(self, req: Request, page: int) -> None:
        for hook in self._hooks:
            rx, at, action = hook
            if at == page and rx.search(req.path):
                self._hooks.remove(hook)
                action()
                return  # one action per answer


def _no_delay(server: FakeServer) -> None:
    """TCP_NODELAY on the connections the server accepts: the stdlib handler writes headers
    and body in two sends, and Nagle plus delayed ACKs would hold every answer ~40 ms."""
    httpd = server._httpd
    assert httpd is not None
    accept = httpd.get_request

    def get_request() -> tuple[socket.socket, Any]:
        sock, addr = accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    httpd.get_request = get_request  # type: ignore[method-assign]
