"""A fake Clever API v3.0 on fakehttp.FakeServer serving a OneRoster CSV district in its shapes.

    data = from_oneroster(folder)          # a set written by ingestd.oneroster.sample.generate
    with FakeClever(data) as clever:       # clever.url; token TOKEN (StaticBearer)
        clever.bare_next_links = True      # scenarios: see the attributes and helpers below
        ...

What it reproduces of Clever (dev.clever.com, "Pagination and Response Limits",
the data model pages):

- `GET /v3.0/{districts,schools,terms,courses,sections,users}` answering
  `{"data": [{"data": {...}, "uri": "/v3.0/users/<id>"}], "links": [{"rel": "self", ...},
  {"rel": "next", "uri": "/v3.0/users?...&starting_after=<id>"}]}`: records sorted by
  id, cursor paging by `starting_after`, relative links, `limit` defaulting to 100 and
  answered with 413 above 10,000; `users` filtered by `role` (a multi-role user is
  listed under each of its roles).
- Every answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset` (unix time);
  `rate_limited()` makes the next matching request a Clever 429: empty body, no
  Retry-After, only those headers.
- Shapes built the way Clever builds them from a district's SIS data: terms and
  courses exist only as far as sections use them (one `term_id` per section: a class
  over several sessions gets their common parent, the school year); a section has
  one `grade`; `subject` is one of Clever's categories; users carry their fields
  under `roles.<role>`; students' dob is M/D/YYYY, gender M/F, race one of Clever's
  words, hispanic_ethnicity Y/N; contacts keep the full name in `name.last` and
  their students in `student_relationships`; district-office administrators are
  `district_admin` users (no credentials), school administrators `staff`.

Scenarios (attributes): `bare_next_links` (a next link carries only
`starting_after`, as in Clever's docs example), `empty_tail` (every non-empty page
has a next link, and the empty page it leads to has one too), `between_pages`
(run an action once after page N of a listing was served: records inserted between
pages). Faults (5xx, 400/501, truncated bodies, resets, delays) come from
`server.fail_next` (fakehttp); a bad token gets 401 from StaticBearer.

Changes between pulls: `edit_user`, `remove_student` (out of users, sections and
contacts' relationships; a contact left with no student goes too, as in Clever),
`add_to_section`, `add_user`.
"""

from __future__ import annotations

import copy
import csv
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.sources.pollers.fakehttp import FakeServer, Reply, Request, StaticBearer

TOKEN = "clever-district-token-0123456789abcdef"
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
COLLECTIONS = ("districts", "schools", "terms", "courses", "sections", "users")
ROLES = ("student", "teacher", "staff", "district_admin", "contact")
STAMP = "2026-08-01T12:00:00.000Z"

# OneRoster grade code -> Clever grade value
CLEVER_GRADES = {
    **{f"{n:02d}": str(n) for n in range(1, 14)},
    "KG": "Kindergarten",
    "PK": "PreKindergarten",
    "TK": "TransitionalKindergarten",
    "IT": "InfantToddler",
    "PR": "Preschool",
    "PS": "PostGraduate",
    "UG": "Ungraded",
    "Other": "Other",
}
# Subject text of the sample's courses -> Clever's section subject categories
CLEVER_SUBJECTS = {
    "English Language Arts": "english/language arts",
    "Mathematics": "math",
    "Science": "science",
    "Social Studies": "social studies",
    "World Languages": "language",
    "Physical Education": "PE and health",
    "Fine Arts": "arts and music",
    "Music": "arts and music",
    "Career and Technical Education": "technology and engineering",
    "Computer Science": "technology and engineering",
    "Engineering": "technology and engineering",
    "Technology": "technology and engineering",
}
CLEVER_RACES = {
    "americanIndianOrAlaskaNative": "American Indian",
    "asian": "Asian",
    "blackOrAfricanAmerican": "Black or African American",
    "nativeHawaiianOrOtherPacificIslander": "Hawaiian or Other Pacific Islander",
    "white": "Caucasian",
}


def clever_subject(course_subjects: str) -> str:
    """The Clever category of a course's subjects (its first); none: homeroom/advisory."""
    first = course_subjects.split(",")[0].strip()
    if not first:
        return "homeroom/advisory"
    return CLEVER_SUBJECTS.get(first, "other")


def term_of(term_ids: list[str], sessions: dict[str, dict[str, str]]) -> str:
    """The one term a Clever section gets for a class's termSourcedIds: the only one, or
    the parent they share (the school year of a year-long class), else the first."""
    if len(term_ids) == 1:
        return term_ids[0]
    parents = {sessions[t]["parentSourcedId"] for t in term_ids if t in sessions}
    if len(parents) == 1 and (parent := parents.pop()):
        return parent
    return term_ids[0]


def sis_id(user_ids: str) -> str:
    """The {SIS:x} item of a OneRoster userIds value."""
    for item in user_ids.split(","):
        kind, _, value = item.strip().strip("{}").partition(":")
        if kind == "SIS":
            return value
    return ""


def _rows(folder: Path, entity: str) -> list[dict[str, str]]:
    with (folder / f"{entity}.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _dob(iso: str) -> str:
    if not iso:
        return ""
    d = date.fromisoformat(iso)
    return f"{d.month}/{d.day}/{d.year}"


def _race(demo: dict[str, str]) -> str:
    races = [c for c in CLEVER_RACES if demo.get(c) == "true"]
    if len(races) > 1 or demo.get("demographicRaceTwoOrMoreRaces") == "true":
        return "Two or More Races"
    return CLEVER_RACES[races[0]] if races else ""


@dataclass
class CleverData:
    """A district as Clever holds it: collection -> id -> the record's `data` object."""

    districts: dict[str, dict[str, Any]] = field(default_factory=dict)
    schools: dict[str, dict[str, Any]] = field(default_factory=dict)
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)

    def collection(self, name: str) -> dict[str, dict[str, Any]]:
        return getattr(self, name)


def from_oneroster(folder: Path) -> CleverData:
    """A OneRoster 1.1 CSV district (sample.generate output) in Clever v3.0 shapes."""
    orgs = _rows(folder, "orgs")
    sessions = {r["sourcedId"]: r for r in _rows(folder, "academicSessions")}
    courses = {r["sourcedId"]: r for r in _rows(folder, "courses")}
    classes = _rows(folder, "classes")
    users = _rows(folder, "users")
    demographics = {r["sourcedId"]: r for r in _rows(folder, "demographics")}
    enrollments = _rows(folder, "enrollments")
    data = CleverData()

    district = next(o for o in orgs if o["type"] == "district")
    did = district["sourcedId"]
    data.districts[did] = {
        "id": did,
        "name": district["name"],
        "nces_id": district["identifier"],
        "mdr_number": "",
        "sis_type": "sftp",
        "launch_date": "2026-08-01",
        "portal_url": "https://clever.com/in/example",
        "login_methods": ["Clever Badges", "Google"],
        "last_sync": STAMP,
    }
    grades_at: dict[str, list[str]] = {}
    for u in users:
        if u["role"] == "student" and u["grades"]:
            for org in _list(u["orgSourcedIds"]):
                grades_at.setdefault(org, []).append(u["grades"])
    order = list(CLEVER_GRADES)
    for o in orgs:
        if o["type"] != "school":
            continue
        seen = sorted(set(grades_at.get(o["sourcedId"], [])), key=order.index)
        data.schools[o["sourcedId"]] = {
            "id": o["sourcedId"],
            "district": o["parentSourcedId"] or did,
            "name": o["name"],
            "sis_id": o["sourcedId"],
            "school_number": o["identifier"][-5:],
            "nces_id": o["identifier"],
            "state_id": "",
            "mdr_number": "",
            "low_grade": CLEVER_GRADES[seen[0]] if seen else "",
            "high_grade": CLEVER_GRADES[seen[-1]] if seen else "",
            "principal": {"name": "", "email": ""},
            "location": {"address": "", "city": "", "state": "", "zip": ""},
            "phone": "",
            "created": STAMP,
            "last_modified": STAMP,
            "ext": {},
        }

    teachers: dict[str, list[tuple[str, bool]]] = {}
    students: dict[str, list[str]] = {}
    for e in enrollments:
        if e["role"] == "teacher":
            teachers.setdefault(e["classSourcedId"], []).append(
                (e["userSourcedId"], e["primary"] == "true")
            )
        elif e["role"] == "student":
            students.setdefault(e["classSourcedId"], []).append(e["userSourcedId"])
    for c in classes:
        cid = c["sourcedId"]
        term = term_of(_list(c["termSourcedIds"]), sessions)
        listed = sorted(teachers.get(cid, []), key=lambda t: not t[1])  # primary first
        grades = _list(c["grades"])
        course = courses.get(c["courseSourcedId"], {})
        data.sections[cid] = {
            "id": cid,
            "district": did,
            "school": c["schoolSourcedId"],
            "course": c["courseSourcedId"],
            "term_id": term,
            "name": c["title"],
            "sis_id": cid,
            "section_number": c["classCode"],
            "period": c["periods"],
            "subject": clever_subject(course.get("subjects", "")),
            "grade": CLEVER_GRADES.get(grades[0], "") if grades else "",
            "teacher": listed[0][0] if listed else None,
            "teachers": [t for t, _ in listed],
            "students": list(students.get(cid, [])),
            "created": STAMP,
            "last_modified": STAMP,
            "ext": {},
        }
        if term not in data.terms and term in sessions:
            s = sessions[term]
            data.terms[term] = {
                "id": term,
                "district": did,
                "name": s["title"],
                "start_date": s["startDate"],
                "end_date": s["endDate"],
            }
        if c["courseSourcedId"] not in data.courses and course:
            data.courses[course["sourcedId"]] = {
                "id": course["sourcedId"],
                "district": did,
                "name": course["title"],
                "number": course["courseCode"],
            }

    for u in users:
        data.users[u["sourcedId"]] = _user(u, did, demographics.get(u["sourcedId"]))
    return data


def _user(u: dict[str, str], did: str, demo: dict[str, str] | None) -> dict[str, Any]:
    uid, orgs = u["sourcedId"], _list(u["orgSourcedIds"])
    name = {"first": u["givenName"], "middle": u["middleName"], "last": u["familyName"]}
    credentials = {"district_username": u["username"]}
    role: dict[str, Any]
    if u["role"] == "student":
        demo = demo or {}
        kind = "student"
        role = {
            "sis_id": sis_id(u["userIds"]) or u["identifier"],
            "student_number": u["identifier"],
            "state_id": "",
            "school": orgs[0],
            "schools": orgs,
            "grade": CLEVER_GRADES.get(u["grades"], ""),
            "dob": _dob(demo.get("birthDate", "")),
            "gender": {"male": "M", "female": "F"}.get(demo.get("sex", ""), ""),
            "race": _race(demo),
            "hispanic_ethnicity": {"true": "Y", "false": "N"}.get(
                demo.get("hispanicOrLatinoEthnicity", ""), ""
            ),
            "ell_status": "",
            "frl_status": "",
            "iep_status": "",
            "home_language": "",
            "graduation_year": "",
            "location": {"address": "", "city": "", "state": "", "zip": ""},
            "enrollments": [{"school": orgs[0], "start_date": "2026-08-17", "end_date": None}],
            "credentials": credentials,
            "legacy_id": uid,
            "ext": {},
        }
    elif u["role"] == "teacher":
        kind = "teacher"
        role = {
            "sis_id": sis_id(u["userIds"]) or u["identifier"],
            "teacher_number": u["identifier"],
            "state_id": "",
            "school": orgs[0],
            "schools": orgs,
            "title": "",
            "credentials": credentials,
            "legacy_id": uid,
            "ext": {},
        }
    elif u["role"] == "administrator" and orgs == [did]:
        kind = "district_admin"
        role = {"title": "District Administrator", "legacy_id": uid}
    elif u["role"] in ("administrator", "aide"):
        kind = "staff"
        role = {
            "staff_id": u["identifier"],
            "title": "Principal" if u["role"] == "administrator" else "Instructional Aide",
            "department": "Administration",
            "schools": orgs,
            "credentials": credentials,
            "legacy_id": uid,
            "ext": {},
        }
    else:  # parent, guardian, relative: a contact
        kind = "contact"
        full = " ".join(x for x in (u["givenName"], u["middleName"], u["familyName"]) if x)
        name = {"first": "", "middle": "", "last": full}
        relationship = {"parent": "Parent", "relative": "Grandparent"}.get(u["role"], "Other")
        phone_type = "Cell" if u["sms"] else "Home" if u["phone"] else ""
        role = {
            "sis_id": sis_id(u["userIds"]),
            "phone": u["phone"],
            "phone_type": phone_type,
            "student_relationships": [
                {"student": kid, "relationship": relationship, "type": "Parent/Guardian"}
                for kid in _list(u["agentSourcedIds"])
            ],
            "legacy_id": uid,
        }
    return {
        "id": uid,
        "district": did,
        "email": u["email"],
        "name": name,
        "roles": {kind: role},
        "created": STAMP,
        "last_modified": STAMP,
    }


Action = Callable[[], None]


class FakeClever:
    """The fake API: `server` (FakeServer), `data` (CleverData), scenario switches."""

    def __init__(
        self, data: CleverData, token: str = TOKEN, server: FakeServer | None = None
    ) -> None:
        self.data = data
        self.server = server or FakeServer()
        self.auth = StaticBearer(self.server, token)
        self.bare_next_links = False
        self.empty_tail = False
        self.between_pages: list[tuple[str, int, Action]] = []  # (label, after page n, action)
        self.pages_served: Counter[str] = Counter()
        self.remaining = 1200
        self.throttles: list[list[Any]] = []  # [path pattern, seconds, times]
        self.rate_limited_at: list[float] = []  # when each 429 was sent
        self._lock = threading.Lock()
        self.server.route("GET", r"/v3\.0/(" + "|".join(COLLECTIONS) + ")")(self._list)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> FakeClever:
        self.server.start()
        # FakeServer writes a reply's headers and body in two sends: without TCP_NODELAY each
        # answer waits for the client's delayed ACK (40+ ms a request, most of a pull's time).
        httpd = self.server._httpd
        assert httpd is not None
        accept = httpd.process_request

        def process_request(request: Any, address: Any) -> None:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            accept(request, address)

        httpd.process_request = process_request  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    # --- scenarios -----------------------------------------------------------------------

    def rate_limited(self, pattern: str, *, seconds: int = 2, times: int = 1) -> None:
        """The next `times` requests whose path matches `pattern` get a Clever 429: empty
        body, no Retry-After, X-RateLimit-Reset `seconds` after the request (unix time)."""
        with self._lock:
            self.throttles.append([re.compile(pattern), seconds, times])

    def after_page(self, label: str, page: int, action: Action) -> None:
        """Run `action` once, right after page `page` (1-based) of `label` was served
        (`users-student`, `sections`, ...)."""
        self.between_pages.append((label, page, action))

    # --- changes -------------------------------------------------------------------------

    def edit_user(self, uid: str, **fields: Any) -> None:
        with self._lock:
            self.data.users[uid].update(fields)
            self.data.users[uid]["last_modified"] = "2026-09-01T12:00:00.000Z"

    def add_user(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.data.users[record["id"]] = record

    def remove_student(self, uid: str) -> None:
        """Gone from users and sections; contacts lose the relationship; a contact with no
        student left is removed."""
        with self._lock:
            del self.data.users[uid]
            for s in self.data.sections.values():
                if uid in s["students"]:
                    s["students"] = [x for x in s["students"] if x != uid]
            for cid, u in list(self.data.users.items()):
                contact = u["roles"].get("contact")
                if contact is None:
                    continue
                kept = [r for r in contact["student_relationships"] if r["student"] != uid]
                if len(kept) != len(contact["student_relationships"]):
                    if kept:
                        contact["student_relationships"] = kept
                    else:
                        del self.data.users[cid]

    def add_to_section(self, section_id: str, uid: str) -> None:
        with self._lock:
            self.data.sections[section_id]["students"].append(uid)

    # --- serving -------------------------------------------------------------------------

    def _list(self, req: Request) -> Reply:
        if (throttled := self._throttled(req)) is not None:
            return throttled
        collection = req.path.rsplit("/", 1)[1]
        try:
            limit = int(req.arg("limit") or DEFAULT_LIMIT)
        except ValueError:
            return self._error(400, "limit must be an integer")
        if limit > MAX_LIMIT:
            return self._error(413, f"limit must be at most {MAX_LIMIT}")
        if limit < 1:
            return self._error(400, "limit must be at least 1")
        role = req.arg("role")
        if role is not None and (collection != "users" or role not in ROLES):
            return self._error(400, f"invalid role {role!r}")
        after = req.arg("starting_after")
        with self._lock:
            records = sorted(self.data.collection(collection).values(), key=lambda r: r["id"])
            if role:
                records = [r for r in records if role in r["roles"]]
            if after:
                records = [r for r in records if r["id"] > after]
            page = copy.deepcopy(records[:limit])
            more = len(records) > limit
        query = [(k, v) for k, v in req.query if k != "starting_after"]
        links = [{"rel": "self", "uri": self._uri(collection, req.query)}]
        if page and (more or self.empty_tail):
            cursor = [("starting_after", page[-1]["id"])]
            links.append({"rel": "next", "uri": self._uri(collection, self._next(query, cursor))})
        elif not page and self.empty_tail:  # an empty page that still points further
            links.append({"rel": "next", "uri": self._uri(collection, req.query)})
        body = {
            "data": [{"data": r, "uri": f"/v3.0/{collection}/{r['id']}"} for r in page],
            "links": links,
        }
        label = "-".join([collection, *([role] if role else [])])
        with self._lock:
            self.pages_served[label] += 1
            served = self.pages_served[label]
            due = [a for a in self.between_pages if a[0] == label and a[1] == served]
            self.between_pages = [a for a in self.between_pages if a not in due]
        for _, _, action in due:
            action()
        return Reply(200, json=body, headers=self._rate_headers())

    def _throttled(self, req: Request) -> Reply | None:
        with self._lock:
            for throttle in self.throttles:
                pattern, seconds, times = throttle
                if times > 0 and pattern.search(req.path):
                    throttle[2] -= 1
                    now = time.time()
                    self.rate_limited_at.append(now)
                    headers = {
                        "X-RateLimit-Limit": "1200",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(int(now) + seconds),
                    }
                    return Reply(429, body=b"", headers=headers)
        return None

    def _next(self, query: list[tuple[str, str]], cursor: list[tuple[str, str]]) -> list:
        return cursor if self.bare_next_links else [*query, *cursor]

    @staticmethod
    def _uri(collection: str, query: list[tuple[str, str]]) -> str:
        return f"/v3.0/{collection}" + (f"?{urlencode(query)}" if query else "")

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            self.remaining = max(0, self.remaining - 1)
            remaining = self.remaining
        return {
            "X-RateLimit-Limit": "1200",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(time.time()) + 60),
        }

    def _error(self, status: int, message: str) -> Reply:
        return Reply(status, json={"message": message}, headers=self._rate_headers())
