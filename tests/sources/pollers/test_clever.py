"""The Clever API v3.0 poller against a fake Clever (real HTTP on 127.0.0.1, fake_clever.py)
serving a district written by `ingestd.oneroster.sample`: a whole pull through
`runner.pull_set` and the pipeline, a second pull after changes and its events, Clever's
paging quirks, every fault of SIS-APIS.md's list that Clever shows, and what a failed pull
leaves (a rejected set, the snapshot as it was, no delete).

What Clever cannot carry, so the pulled tables equal the generator's only after this view of
them (`clever_view` below applies exactly these, nothing else):

- orgs: nothing lost.
- academicSessions: Clever has only the terms its sections use, one per section (a class over
  both semesters gets the school year): the grading periods Q1-Q4 are lost; the semesters come
  out as type `term` (the school year, derived from dates, stays `schoolYear`).
- courses: only courses some section uses exist; grades, subjects, subjectCodes are empty.
- classes: grades keeps only the first (lowest) grade (a Clever section has one); termSourcedIds
  is the one Clever term (the school year for year-long classes, not "S1,S2"); subjects is
  Clever's category of the course's subject (fake_clever.clever_subject); classType is
  `homeroom` for Clever's "homeroom/advisory" category, so advisories come out `homeroom`;
  location and subjectCodes are empty.
- users: enabledUser is always `true` (Clever lists active users only); userIds keeps only
  the {SIS:...} item (no {LDAP:...}); district-office administrators are Clever district
  admins: no username (the email stands in), no identifier, no userIds; contacts' names are
  one string in Clever, split at the first space: givenName = the first word, familyName =
  the rest (middle name included), middleName empty.
- demographics: a student of two races comes out with demographicRaceTwoOrMoreRaces `true`
  and the five race columns empty; a student with no race has all six empty;
  countryOfBirthCode, stateOfBirthAbbreviation, cityOfBirth and publicSchoolResidenceStatus
  are empty.
- enrollments: sourcedId is derived (`<class>-<user>`), beginDate and endDate are empty.
- status and dateLastModified are empty in both.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ingestd.config import Config, DaemonConfig, TenantConfig
from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.pipeline import sets
from ingestd.pipeline.ingest import Pipeline
from ingestd.sources.pollers.base import PageArchive
from ingestd.sources.pollers.clever import CleverPoller
from ingestd.sources.pollers.clever_map import map_roster
from ingestd.sources.pollers.http import ApiClient, BearerAuth
from ingestd.sources.pollers.runner import PullOutcome, pull_set
from tests.oneroster.corpus import generated
from tests.sources.pollers.fake_clever import (
    TOKEN,
    FakeClever,
    clever_subject,
    from_oneroster,
    sis_id,
    term_of,
)
from tests.sources.pollers.fakehttp import FakeServer, Sleeps, assert_archived_as_sent

TENANT = "cedar-valley"
PAGE = 50  # ~150 students and ~230 contacts: several pages each
Row = dict[str, str]
RACES = (
    "americanIndianOrAlaskaNative",
    "asian",
    "blackOrAfricanAmerican",
    "nativeHawaiianOrOtherPacificIslander",
    "white",
)
TWO = "demographicRaceTwoOrMoreRaces"


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "district", 150, 11)


@pytest.fixture
def fake(district: Path) -> Any:
    with FakeClever(from_oneroster(district)) as f:
        yield f


@pytest.fixture(scope="module")
def baseline(district: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digest of a clean pull's raw files: every fault that is retried must give it."""
    with FakeClever(from_oneroster(district)) as f:
        pulled = pull(f, tmp_path_factory.mktemp("baseline"))
    assert pulled.outcome.error is None and pulled.outcome.digest
    return pulled.outcome.digest


def tenant(page_size: int | None = PAGE) -> TenantConfig:
    # pull_set is handed its own client: token_file is never read
    return TenantConfig(
        id=TENANT, source="clever", token_file=Path("/nonexistent"), page_size=page_size
    )


class Pulled:
    def __init__(self, outcome: PullOutcome, sleeps: Sleeps, retries: int) -> None:
        self.outcome, self.sleeps, self.retries = outcome, sleeps, retries


def pull(
    fake: FakeClever,
    state: Path,
    *,
    token: str = TOKEN,
    page_size: int | None = PAGE,
    timeout: float = 5.0,
    sleeps: Sleeps | None = None,
) -> Pulled:
    """One pull through runner.pull_set with a client built here (fast waits, short timeout)."""
    sleeps = sleeps or Sleeps()
    config = Config(daemon=DaemonConfig(state_dir=state))

    async def go() -> Pulled:
        client = ApiClient(fake.url, BearerAuth(token), sleep=sleeps, timeout=timeout, backoff=0.01)
        async with client:
            outcome = await pull_set(config, tenant(page_size), client)
            return Pulled(outcome, sleeps, client.retries)

    return asyncio.run(go())


def process(state: Path, set_id: str) -> str:
    with EventStore.open(state) as store:
        return Pipeline(state, store).process(set_id).status


def last_event(state: Path) -> int:
    with EventStore.open(state) as store:
        return store.last_event_id()


def events_after(state: Path, after: int) -> list[tuple[str, dict[str, Any]]]:
    with EventStore.open(state) as store:
        return [(t, json.loads(d)) for _, t, _, _, _, d in store.read_events(after=after)]


def snapshot_of(state: Path) -> str | None:
    with EventStore.open(state) as store:
        return store.snapshot_of(TENANT)


def read(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def pulled_tables(state: Path, set_id: str) -> dict[str, dict[str, Row]]:
    raw = sets.set_dir(state, TENANT, set_id) / sets.RAW
    out = {}
    for entity in spec.ENTITIES:
        path = raw / entity.file_name
        if path.exists():
            with path.open(newline="", encoding="utf-8") as f:
                assert tuple(next(csv.reader(f))) == entity.column_names
            out[entity.name] = {r["sourcedId"]: r for r in read(path)}
    return out


def clever_view(district: Path) -> dict[str, dict[str, Row]]:
    """The generator's tables as Clever carries them: exactly clever_map's docstring list."""
    g = {e: read(district / f"{e}.csv") for e in spec.ENTITY_NAMES}
    sessions = {r["sourcedId"]: r for r in g["academicSessions"]}
    courses = {r["sourcedId"]: r for r in g["courses"]}
    district_id = next(o["sourcedId"] for o in g["orgs"] if o["type"] == "district")
    out: dict[str, dict[str, Row]] = {"orgs": {r["sourcedId"]: r for r in g["orgs"]}}

    classes, used_terms, used_courses = {}, set(), set()
    for c in g["classes"]:
        term = term_of(c["termSourcedIds"].split(","), sessions)
        subject = clever_subject(courses[c["courseSourcedId"]]["subjects"])
        used_terms.add(term)
        used_courses.add(c["courseSourcedId"])
        classes[c["sourcedId"]] = {
            **c,
            "grades": c["grades"].split(",")[0],
            "termSourcedIds": term,
            "subjects": subject,
            "classType": "homeroom" if subject == "homeroom/advisory" else "scheduled",
            "location": "",
            "subjectCodes": "",
        }
    out["classes"] = classes
    out["academicSessions"] = {
        s: {**sessions[s], "type": "schoolYear" if sessions[s]["type"] == "schoolYear" else "term"}
        for s in used_terms
    }
    out["courses"] = {
        c: {**courses[c], "grades": "", "subjects": "", "subjectCodes": ""} for c in used_courses
    }

    users = {}
    for u in g["users"]:
        sis = sis_id(u["userIds"])
        row = {**u, "enabledUser": "true", "userIds": f"{{SIS:{sis}}}" if sis else ""}
        if u["role"] == "administrator" and u["orgSourcedIds"] == district_id:
            row.update(username=u["email"], identifier="", userIds="")
        elif u["role"] in ("parent", "guardian"):
            full = " ".join(x for x in (u["givenName"], u["middleName"], u["familyName"]) if x)
            given, family = full.split(" ", 1)
            row.update(givenName=given, familyName=family, middleName="")
        users[u["sourcedId"]] = row
    out["users"] = users

    demographics = {}
    for d in g["demographics"]:
        row = {
            **d,
            "countryOfBirthCode": "",
            "stateOfBirthAbbreviation": "",
            "cityOfBirth": "",
            "publicSchoolResidenceStatus": "",
        }
        races = [c for c in RACES if d[c] == "true"]
        if len(races) > 1 or d[TWO] == "true":
            row.update(dict.fromkeys(RACES, ""), **{TWO: "true"})
        elif not races:
            row.update(dict.fromkeys((*RACES, TWO), ""))
        demographics[d["sourcedId"]] = row
    out["demographics"] = demographics

    out["enrollments"] = {
        f"{e['classSourcedId']}-{e['userSourcedId']}": {
            **e,
            "sourcedId": f"{e['classSourcedId']}-{e['userSourcedId']}",
            "beginDate": "",
            "endDate": "",
        }
        for e in g["enrollments"]
    }
    return out


def assert_tables_equal(got: dict[str, dict[str, Row]], want: dict[str, dict[str, Row]]) -> None:
    assert sorted(got) == sorted(want)
    for entity in want:
        g, w = got[entity], want[entity]
        assert g.keys() == w.keys(), (entity, sorted(g.keys() ^ w.keys())[:5])
        wrong = [(k, {c: (g[k][c], w[k][c]) for c in w[k] if g[k][c] != w[k][c]}) for k in w]
        wrong = [x for x in wrong if x[1]]
        assert not wrong, (entity, len(wrong), wrong[:3])


def students_of(fake: FakeClever) -> list[str]:
    return sorted(uid for uid, u in fake.data.users.items() if "student" in u["roles"])


# --- (a) a whole pull --------------------------------------------------------------------------


def test_full_pull_equals_the_district(district: Path, fake: FakeClever, tmp_path: Path) -> None:
    state = tmp_path / "state"
    pulled = pull(fake, state)
    outcome = pulled.outcome
    assert outcome.error is None, outcome.error
    assert outcome.warnings == []
    assert pulled.sleeps.waits == [] and pulled.retries == 0

    assert_tables_equal(pulled_tables(state, outcome.set_id), clever_view(district))
    manifest = (sets.set_dir(state, TENANT, outcome.set_id) / sets.RAW / "manifest.csv").read_text()
    assert all(f"file.{e},bulk" in manifest for e in spec.ENTITY_NAMES)

    # Paging followed Clever's relative next links: after the first page of a listing every
    # request carries the cursor and the listing's own role and limit.
    requests = [r for r in fake.server.requests if r.path.startswith("/v3.0/")]
    assert len(requests) == outcome.requests
    cursors = [r for r in requests if r.arg("starting_after")]
    assert cursors and all(r.arg("limit") == str(PAGE) for r in requests)
    assert {r.arg("role") for r in cursors if r.path == "/v3.0/users"} == {"student", "contact"}
    # every page body is archived with the set
    pages = sets.set_dir(state, TENANT, outcome.set_id) / "pages"
    assert len(list(pages.glob("*.json.gz"))) == outcome.requests

    assert process(state, outcome.set_id) == "accepted"


def test_gzip_transfer_gives_the_same_set_and_archives_the_servers_bytes(
    district: Path, baseline: str, tmp_path: Path
) -> None:
    fake = FakeClever(from_oneroster(district), server=FakeServer(gzip=True, keep_sent=True))
    with fake:
        pulled = pull(fake, tmp_path / "state")
    outcome = pulled.outcome
    assert outcome.error is None, outcome.error
    assert outcome.digest == baseline
    assert fake.server.sent is not None
    sent = [a for a in fake.server.sent if a.url.split("/", 3)[3].startswith("v3.0/")]
    assert len(sent) == outcome.requests and all(a.wire != a.body for a in sent)
    pages = sets.set_dir(tmp_path / "state", TENANT, outcome.set_id) / "pages"
    assert assert_archived_as_sent(pages, sent) == outcome.requests


def test_check_reads_each_collection(fake: FakeClever) -> None:
    async def check(token: str) -> list[Any]:
        async with ApiClient(fake.url, BearerAuth(token), sleep=Sleeps(), timeout=5) as client:
            return await CleverPoller(tenant(), client, PageArchive(None)).check()

    lines = asyncio.run(check(TOKEN))
    assert [(x.collection, x.ok) for x in lines] == [
        ("districts", True),
        ("schools", True),
        ("terms", True),
        ("courses", True),
        ("sections", True),
        ("users-student", True),
        ("demographics", True),
        ("users-teacher", True),
        ("users-staff", True),
        ("users-district_admin", True),
        ("users-contact", True),
    ]
    refused = asyncio.run(check("not-the-token"))
    assert refused and all(not x.ok and "HTTP 401" in x.detail for x in refused)


# --- (b) a second pull after changes -----------------------------------------------------------


def test_second_pull_gives_exactly_the_changes(fake: FakeClever, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = pull(fake, state)
    assert process(state, first.outcome.set_id) == "accepted"
    after = last_event(state)

    data = fake.data
    students = students_of(fake)
    kids_of = {
        uid: [r["student"] for r in u["roles"]["contact"]["student_relationships"]]
        for uid, u in data.users.items()
        if "contact" in u["roles"]
    }
    # removed: a student with a sibling, so the shared contacts stay and lose one child
    removed = next(s for s in students if any(s in k and len(k) > 1 for k in kids_of.values()))
    edited = next(s for s in students if s != removed)
    school = data.users[edited]["roles"]["student"]["school"]
    # added: another student of the same school joins a section they were not in
    added, section = next(
        (s, sec["id"])
        for sec in sorted(data.sections.values(), key=lambda x: x["id"])
        if sec["school"] == school
        for s in students
        if s not in (removed, edited)
        and data.users[s]["roles"]["student"]["school"] == school
        and s not in sec["students"]
    )
    sections_of_removed = [s["id"] for s in data.sections.values() if removed in s["students"]]
    old_email = data.users[edited]["email"]

    fake.edit_user(edited, email="renamed.student@students.example.org")
    fake.remove_student(removed)
    fake.add_to_section(section, added)

    second = pull(fake, state)
    assert second.outcome.error is None
    assert process(state, second.outcome.set_id) == "accepted"

    expected: Counter[tuple[str, str]] = Counter()
    expected["users.updated", edited] += 1
    expected["users.deleted", removed] += 1
    expected["demographics.deleted", removed] += 1
    for contact, kids in kids_of.items():
        if removed in kids:
            expected["users.updated" if len(kids) > 1 else "users.deleted", contact] += 1
    for sec in sections_of_removed:
        expected["enrollments.deleted", f"{sec}-{removed}"] += 1
    expected["enrollments.created", f"{section}-{added}"] += 1
    assert len(sections_of_removed) > 1

    events = events_after(state, after)
    records = [(t, d) for t, d in events if not t.startswith("sets.")]
    assert Counter((t, d["object"]["sourcedId"]) for t, d in records) == expected
    assert [t for t, _ in events if t.startswith("sets.")] == ["sets.accepted"]
    changes = {d["object"]["sourcedId"]: d.get("previous_attributes") for t, d in records}
    assert changes[edited] == {"email": old_email}
    for contact, kids in kids_of.items():
        if removed in kids and len(kids) > 1:
            assert "agentSourcedIds" in changes[contact]
            assert set(changes[contact]) <= {"agentSourcedIds", "orgSourcedIds"}
            assert removed in changes[contact]["agentSourcedIds"].split(",")


# --- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["bare_next_links", "empty_tail"])
def test_paging_variants_give_the_same_set(
    variant: str, fake: FakeClever, baseline: str, tmp_path: Path
) -> None:
    setattr(fake, variant, True)
    pulled = pull(fake, tmp_path / "state")
    assert pulled.outcome.error is None
    assert pulled.outcome.digest == baseline
    terms = [r for r in fake.server.requests if r.path == "/v3.0/terms"]
    if variant == "empty_tail":
        # 3 terms fit one page; its next link leads to an empty page whose own next link
        # is not followed
        assert len(terms) == 2 and terms[1].arg("starting_after")
    else:
        # Clever's documented bare link (`?starting_after=<id>`): role and limit put back
        later = [r for r in fake.server.requests if r.arg("starting_after")]
        assert later and all(r.arg("limit") == str(PAGE) for r in later)
        assert all(r.arg("role") for r in later if r.path == "/v3.0/users")


def test_records_inserted_between_pages(fake: FakeClever, tmp_path: Path) -> None:
    """Clever pages by id cursor: a record inserted behind the cursor waits for the next pull,
    one ahead of it is read; nothing is read twice or skipped; a section member not among the
    users read is left out of the enrollments (with a warning), not a dangling reference."""
    students = students_of(fake)
    template = fake.data.users[students[0]]
    school = template["roles"]["student"]["school"]
    section = next(s["id"] for s in fake.data.sections.values() if s["school"] == school)

    def student(uid: str) -> dict[str, Any]:
        record = copy.deepcopy(template)
        record.update(id=uid, email=f"{uid[:8]}@students.example.org")
        record["roles"]["student"].update(sis_id=uid[:8], student_number=uid[:8])
        record["roles"]["student"]["credentials"] = {"district_username": f"new{uid[:8]}"}
        return record

    ahead = student("ffffffff-0000-4000-8000-000000000001")
    behind = student("00000000-0000-4000-8000-000000000001")
    assert behind["id"] < students[0] and ahead["id"] > students[-1]

    def insert() -> None:
        for record in (ahead, behind):
            fake.add_user(record)
            fake.add_to_section(section, record["id"])

    fake.after_page("users-student", 1, insert)
    state = tmp_path / "state"
    pulled = pull(fake, state)
    assert pulled.outcome.error is None
    tables = pulled_tables(state, pulled.outcome.set_id)
    pulled_students = {k for k, r in tables["users"].items() if r["role"] == "student"}
    assert pulled_students == {*students, ahead["id"]}
    assert f"{section}-{ahead['id']}" in tables["enrollments"]
    assert f"{section}-{behind['id']}" not in tables["enrollments"]
    assert any("1 section members are not among the users" in w for w in pulled.outcome.warnings)
    assert process(state, pulled.outcome.set_id) == "accepted"
    # the next pull reads the one that was behind the cursor
    again = pull(fake, state)
    again_users = pulled_tables(state, again.outcome.set_id)["users"]
    assert behind["id"] in again_users and ahead["id"] in again_users


# --- (c) faults: retried and recovered ---------------------------------------------------------


RETRIED = {
    "500": {"status": 500, "body": b'{"message":"Internal Server Error"}'},
    "502": {"status": 502, "body": b"<html><body>502 Bad Gateway</body></html>"},
    "503": {"status": 503, "body": b""},
    "truncated body": {"truncate": True},  # Content-Length promised, half sent, closed
    "cut json": {"status": 200, "body": b'{"data": [{"data": {"id": "5'},  # complete but cut
    "connection reset": {"reset": True},
    "slow past the timeout": {"delay": 3.0},  # the client gives up after 1 s
}


@pytest.mark.parametrize("fault", list(RETRIED))
def test_retried_faults_recover(
    fault: str, fake: FakeClever, baseline: str, tmp_path: Path
) -> None:
    fake.server.fail_next(r"^/v3\.0/users$", times=1, after=1, **RETRIED[fault])  # page 2
    slow = fault.startswith("slow")
    pulled = pull(fake, tmp_path / "state", timeout=1.0 if slow else 5.0)
    assert pulled.outcome.error is None, pulled.outcome.error
    assert pulled.retries == 1 if not slow else pulled.retries >= 1  # a busy host: 1 s is short
    assert pulled.outcome.digest == baseline


def test_clever_429_waits_until_the_reset_time(
    fake: FakeClever, baseline: str, tmp_path: Path
) -> None:
    """Clever's 429: empty body, no Retry-After, X-RateLimit-Reset (unix time) 2 s ahead."""
    fake.rate_limited(r"^/v3\.0/sections$", seconds=2)
    sleeps = Sleeps(real=True)
    pulled = pull(fake, tmp_path / "state", sleeps=sleeps)
    assert pulled.outcome.error is None
    assert pulled.outcome.digest == baseline
    # one wait, as long as the reset says (the jittered backoff would be a few ms)
    assert len(sleeps.waits) == 1 and 0.5 < sleeps.waits[0] <= 2.0
    assert fake.server.count(r"^/v3\.0/sections$") == 3 + 1  # 140 sections, 50 a page


# --- (c) faults: the pull is rejected, the snapshot stays ----------------------------------------


def _bad_token(fake: FakeClever) -> dict[str, Any]:
    return {"token": "expired-or-revoked"}


def _too_large(fake: FakeClever) -> dict[str, Any]:
    return {"page_size": 10_001}


def _fault(pattern: str, **how: Any) -> Any:
    def arm(fake: FakeClever) -> dict[str, Any]:
        fake.server.fail_next(pattern, **how)
        return {}

    return arm


REJECTED = {
    # name: (arm the fault -> pull arguments, code, words of the reason, requests to `path`)
    "limit over 10,000 (413)": (_too_large, "http_413", ["10,000", "page_size"], 1),
    "400": (
        _fault(r"^/v3\.0/sections$", status=400, body=b'{"message":"bad request"}'),
        "http_400",
        ["sections", "HTTP 400"],
        1,
    ),
    "501": (_fault(r"^/v3\.0/courses$", status=501, body=b""), "http_501", ["HTTP 501"], 1),
    "401 bad token": (_bad_token, "http_401", ["token_file", "HTTP 401"], 2),
    "200 without a data array": (
        _fault(r"^/v3\.0/schools$", status=200, body=b'{"error":"district paused"}'),
        "bad_response",
        ["schools", "no data array"],
        1,
    ),
    "persistent 500 at page 3": (
        _fault(r"^/v3\.0/users$", times=100, after=2, status=500, body=b"{}"),
        "http_500",
        ["still failing after 6 attempts"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_failed_pull_is_rejected_and_deletes_nothing(
    case: str, fake: FakeClever, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = pull(fake, state)
    assert process(state, first.outcome.set_id) == "accepted"
    after = last_event(state)
    before = len(fake.server.requests)

    arm, code, words, requests = REJECTED[case]
    failed = pull(fake, state, **arm(fake))
    outcome = failed.outcome
    assert outcome.error is not None and outcome.error.code == code
    with EventStore.open(state) as store:
        row = store.get_set(outcome.set_id)
        assert row is not None and row.status == "rejected"
        (reason,) = row.summary["reasons"]
    assert reason["code"] == code
    assert all(w in reason["message"] for w in words), reason["message"]
    # the snapshot is the first pull's; no record event at all, so no delete
    assert snapshot_of(state) == first.outcome.set_id
    assert [t for t, _ in events_after(state, after)] == ["sets.rejected"]
    if requests is not None:  # not retried (a 401 is tried once more after re-auth)
        failing = [r for r in fake.server.requests[before:]][-1].path
        assert sum(r.path == failing for r in fake.server.requests[before:]) == requests


# --- the mapping's corners -------------------------------------------------------------------


def test_mapping_corners() -> None:
    """Multi-role users, staff titles, contact relationships, the school-year heuristic,
    courses over several schools, enumerations Clever has and OneRoster lacks."""
    student = {"school": "s1", "schools": ["s1"], "sis_id": "1"}
    raw: dict[str, list[dict[str, Any]]] = {
        "districts": [{"id": "d1", "name": "District", "mdr_number": "77"}],
        "schools": [
            {"id": "s1", "district": "d1", "name": "One", "school_number": "001"},
            {"id": "s2", "district": "d1", "name": "Two", "state_id": "ST2", "nces_id": ""},
        ],
        "terms": [
            {"id": "y", "name": "2026-27", "start_date": "2026-08-17", "end_date": "2027-06-04"},
            {"id": "f", "name": "Fall", "start_date": "2026-08-17", "end_date": "2027-01-15"},
            {"id": "q", "name": "Q1", "start_date": "2026-08-17", "end_date": "2026-10-23"},
            {"id": "u", "name": "Undated"},
        ],
        "courses": [
            {"id": "c1", "district": "d1", "name": "Algebra", "number": "ALG"},
            {"id": "c2", "district": "d1", "name": "Band", "number": "BAND"},
            {"id": "c3", "district": "d1", "name": "Unused"},
        ],
        "users": [
            {
                "id": "t1",
                "email": "t1@x.org",
                "name": {"first": "Ann", "last": "Lee"},
                "roles": {
                    "teacher": {
                        "school": "s1",
                        "schools": ["s1"],
                        "sis_id": "T1",
                        "teacher_number": "",
                        "credentials": {"district_username": "alee"},
                    },
                    "staff": {"schools": ["s2"], "staff_id": "S1", "title": "Principal"},
                },
            },
            {
                "id": "t2",
                "name": {"first": "Bo", "last": "Ng"},
                "roles": {"teacher": {"school": "s1", "sis_id": "T2"}},
            },
            {
                "id": "a1",
                "email": "a1@x.org",
                "name": {"first": "Cy", "last": "Oz"},
                "roles": {
                    "staff": {"schools": ["s1"], "staff_id": "A1", "title": "Paraprofessional"}
                },
            },
            {
                "id": "da",
                "email": "boss@x.org",
                "name": {"first": "Di", "last": "Po"},
                "roles": {"district_admin": {"title": "Superintendent"}},
            },
            {
                "id": "k1",
                "name": {"first": "Kim", "last": "Ra"},
                "roles": {
                    "student": {
                        **student,
                        "grade": "Kindergarten",
                        "dob": "8/27/2019",
                        "gender": "X",
                        "race": "Two or More Races",
                        "hispanic_ethnicity": "Y",
                    }
                },
            },
            {
                "id": "k2",
                "name": {"first": "Lu", "last": "Su"},
                "roles": {
                    "student": {**student, "sis_id": "2", "grade": "PostGraduate", "race": "W"}
                },
            },
            {
                "id": "k3",
                "name": {"first": "Mo", "last": "Tu"},
                "roles": {"student": {**student, "sis_id": "3", "grade": "Freshman"}},
            },
            {
                "id": "g1",
                "email": "g1@x.org",
                "name": {"first": "", "last": "Ana María de la Cruz"},
                "roles": {
                    "contact": {
                        "student_relationships": [{"student": "k1", "relationship": "Grandparent"}]
                    }
                },
            },
            {
                "id": "g2",
                "email": "g2@x.org",
                "name": {"last": "Raj Patel"},
                "roles": {
                    "contact": {
                        "sis_id": "G2",
                        "phone": "5035550100",
                        "phone_type": "Cell",
                        "student_relationships": [
                            {"student": "k2", "relationship": "Aunt/Uncle"},
                            {"student": "k1", "relationship": "Parent"},
                        ],
                    }
                },
            },
            {
                "id": "g3",
                "name": {"last": "Solo"},
                "roles": {"contact": {"student_relationships": [{"student": "gone"}]}},
            },
        ],
        "sections": [
            {
                "id": "x1",
                "school": "s1",
                "course": "c1",
                "term_id": "f",
                "subject": "math",
                "grade": "5",
                "teacher": "t1",
                "teachers": ["t2", "t1"],
                "students": ["k1", "k2", "ghost"],
            },
            {"id": "x2", "school": "s2", "course": "c2", "term_id": "q", "students": ["k1"]},
            {
                "id": "x3",
                "school": "s1",
                "course": "c2",
                "term_id": "y",
                "subject": "homeroom/advisory",
            },
        ],
    }
    roster = map_roster(raw)
    t = {e: {r["sourcedId"]: r for r in rows} for e, rows in roster.tables.items()}

    assert t["orgs"]["d1"]["identifier"] == "77" and t["orgs"]["s2"]["identifier"] == "ST2"
    assert t["orgs"]["s1"]["identifier"] == "001" and t["orgs"]["s1"]["parentSourcedId"] == "d1"
    sessions = {
        k: (r["type"], r["parentSourcedId"], r["schoolYear"])
        for k, r in t["academicSessions"].items()
    }
    assert sessions == {
        "y": ("schoolYear", "", "2027"),
        "f": ("term", "y", "2027"),
        "q": ("term", "y", "2027"),  # inside the fall term too, but that one is no school year
        "u": ("term", "", ""),
    }
    courses = {k: (r["orgSourcedId"], r["schoolYearSourcedId"]) for k, r in t["courses"].items()}
    assert courses == {"c1": ("s1", "y"), "c2": ("d1", "y"), "c3": ("d1", "")}
    assert t["classes"]["x1"]["grades"] == "05" and t["classes"]["x1"]["classType"] == "scheduled"
    assert t["classes"]["x3"]["classType"] == "homeroom"

    users = t["users"]
    assert (users["t1"]["role"], users["t1"]["orgSourcedIds"]) == ("teacher", "s1,s2")
    assert (users["t1"]["username"], users["t1"]["identifier"]) == ("alee", "T1")
    assert users["t2"]["username"] == "T2"  # no credentials, no email: the SIS id
    assert (users["a1"]["role"], users["a1"]["userIds"]) == ("aide", "{SIS:A1}")
    assert (users["da"]["role"], users["da"]["orgSourcedIds"], users["da"]["username"]) == (
        "administrator",
        "d1",
        "boss@x.org",
    )
    assert [users[k]["grades"] for k in ("k1", "k2", "k3")] == ["KG", "PS", "ext:Freshman"]
    g1, g2, g3 = users["g1"], users["g2"], users["g3"]
    assert (g1["role"], g1["givenName"], g1["familyName"]) == (
        "relative",
        "Ana",
        "María de la Cruz",
    )
    assert (g2["role"], g2["phone"], g2["sms"], g2["userIds"]) == (
        "parent",
        "5035550100",
        "5035550100",
        "{SIS:G2}",
    )
    assert (g2["agentSourcedIds"], g2["orgSourcedIds"]) == ("k2,k1", "s1")
    assert (g3["role"], g3["givenName"], g3["familyName"], g3["orgSourcedIds"]) == (
        "guardian",
        "",
        "Solo",
        "d1",
    )
    assert users["k1"]["agentSourcedIds"] == "g1,g2"

    k1, k2 = t["demographics"]["k1"], t["demographics"]["k2"]
    assert (k1["birthDate"], k1["sex"], k1["hispanicOrLatinoEthnicity"]) == (
        "2019-08-27",
        "ext:X",
        "true",
    )
    assert [k1[c] for c in (*RACES, TWO)] == ["", "", "", "", "", "true"]
    assert [k2[c] for c in (*RACES, TWO)] == ["false", "false", "false", "false", "true", "false"]
    assert "k3" not in t["demographics"]

    enrollments = {k: (r["role"], r["primary"]) for k, r in t["enrollments"].items()}
    assert enrollments == {
        "x1-t2": ("teacher", "false"),
        "x1-t1": ("teacher", "true"),
        "x1-k1": ("student", ""),
        "x1-k2": ("student", ""),
        "x2-k1": ("student", ""),
    }
    assert any("1 section members" in w for w in roster.warnings)
    assert any("1 contact relationships" in w for w in roster.warnings)
    assert any("1 terms have no start or end date" in w for w in roster.warnings)
