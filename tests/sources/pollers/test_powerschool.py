"""The PowerSchool poller against a fake PowerSchool plugin API (real HTTP on 127.0.0.1)
serving a district made by `ingestd.oneroster.sample.generate`: a full pull compared with
the generator's tables, a second pull's events, and every failure scenario's outcome.

What PowerSchool cannot carry, exactly (the expectations below apply it):
- sourcedIds are PowerSchool's ids, not the generator's GUIDs: the district is `district`,
  schools and sections their DCID, terms their DCID (one set of terms PER SCHOOL: each
  generator session comes out once per school), courses `{school}-{course}`, users
  `student-{dcid}` / `staff-{users_dcid}` / `contact-{id}`, student enrollments the CC id,
  teacher enrollments `section-{section}-staff-{users_dcid}`; compared through the fake's
  id mapping;
- district-office staff (orgSourcedIds = the district only) are not in PowerSchool's school
  lists: absent;
- courses: grades, subjects, subjectCodes empty;
- classes: title is "{course title} - Section {n}", classCode "{courseCode}.{n}" (n = the
  generator's classCode suffix), classType always "scheduled", subjects and subjectCodes
  empty, termSourcedIds the one term of the section (a year-long class: the school year, where
  the generator lists both semesters);
- users: userIds is "{SIS:<number>}" only; student numbers lose their leading zeros (numbers
  in PowerSchool); guardians are always enabled, with no userIds;
- demographics: countryOfBirthCode, stateOfBirthAbbreviation, cityOfBirth and
  publicSchoolResidenceStatus empty;
- list columns (orgSourcedIds, agentSourcedIds) compared as sets (order follows the API).
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd.config import Config, DaemonConfig, TenantConfig
from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.pipeline import sets
from ingestd.pipeline.ingest import Pipeline
from ingestd.sources.pollers.base import PageArchive
from ingestd.sources.pollers.http import ApiClient, OAuth2ClientCredentials
from ingestd.sources.pollers.powerschool import PowerSchoolPoller
from ingestd.sources.pollers.runner import PullOutcome, pull_set
from tests.oneroster.corpus import generated
from tests.sources.pollers.fake_powerschool import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN_PATH,
    District,
    FakePowerSchool,
    from_oneroster,
    read_csv,
)
from tests.sources.pollers.fakehttp import FakeServer, Sleeps, assert_archived_as_sent

TENANT = "riverbend-ps"
SMALL_CAPS = {
    "school": 2,  # 3 schools: a second page with ONE school (an object, not a list)
    "term": 4,
    "course": 15,
    "section": 25,
    "student": 20,
    "staff": 10,
    "section_enrollment": 10,
    "schema_table_query": 30,
}
# The failure scenarios: still several pages per school list, one page per section.
FAULT_CAPS = {**SMALL_CAPS, "section_enrollment": 50, "schema_table_query": 100}
SORTED_LISTS = ("orgSourcedIds", "agentSourcedIds")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "ps", 150, 61)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "ps", 45, 8)


@pytest.fixture
def fake(small: Path) -> Iterator[FakePowerSchool]:
    with FakePowerSchool(from_oneroster(small), caps=FAULT_CAPS) as f:
        yield f


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def tenant_for(fake: FakePowerSchool, **kw: Any) -> TenantConfig:
    return TenantConfig(id=TENANT, name="Riverbend (from config)", source="powerschool",
                        base_url=fake.url, client_id=CLIENT_ID,
                        client_secret_file=Path("powerschool.secret"), **kw)  # fmt: skip


def pull(
    fake: FakePowerSchool,
    state: Path,
    *,
    sleeps: Sleeps | None = None,
    timeout: float = 2.0,
    **tenant_kw: Any,
) -> PullOutcome:
    config = Config(daemon=DaemonConfig(state_dir=state))

    async def go() -> PullOutcome:
        auth = OAuth2ClientCredentials(fake.url + TOKEN_PATH, CLIENT_ID, CLIENT_SECRET)
        client = ApiClient(fake.url, auth, timeout=timeout, sleep=sleeps or Sleeps(),
                           max_attempts=4, backoff=0.01)  # fmt: skip
        async with client:
            return await pull_set(config, tenant_for(fake, **tenant_kw), client)

    return asyncio.run(go())


def tables(state: Path, set_id: str) -> dict[str, list[dict[str, str]]]:
    raw = sets.set_dir(state, TENANT, set_id) / sets.RAW
    return {e: read_csv(raw / f"{e}.csv") for e in spec.ENTITY_NAMES if (raw / f"{e}.csv").exists()}


def manifest(state: Path, set_id: str) -> dict[str, str]:
    raw = sets.set_dir(state, TENANT, set_id) / sets.RAW
    with (raw / spec.MANIFEST_FILE).open(newline="") as f:
        return {k: v for k, v in list(csv.reader(f))[1:]}


def normal(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {}
    for row in rows:
        row = dict(row)
        for col in SORTED_LISTS:
            if col in row:
                row[col] = ",".join(sorted(filter(None, row[col].split(","))))
        out[row["sourcedId"]] = row
    return out


def process(state: Path, set_id: str):
    with EventStore.open(state) as store:
        return Pipeline(state, store).process(set_id)


def events_after(state: Path, after: int) -> list[tuple[str, dict[str, Any]]]:
    with EventStore.open(state) as store:
        return [(t, json.loads(d)) for _, t, _, _, _, d in store.read_events(after=after)]


def last_event(state: Path) -> int:
    with EventStore.open(state) as store:
        return store.last_event_id()


# --- what the pull must equal: the generator's tables through the mapping ----------------------


def user_sid(ids: dict, generator_sid: str) -> str | None:
    kind = ids["users", generator_sid]
    return None if kind is None else f"{kind[0]}-{kind[1]}"


def expected_tables(folder: Path, d: District) -> dict[str, list[dict[str, str]]]:
    g = {e: read_csv(folder / f"{e}.csv") for e in spec.ENTITY_NAMES}
    ids = d.ids
    blank = {e.name: dict.fromkeys(e.column_names, "") for e in spec.ENTITIES}
    schools = [s["id"] for s in d.schools]
    out: dict[str, list[dict[str, str]]] = {e: [] for e in spec.ENTITY_NAMES}

    def org(sid: str) -> str:
        return "district" if ids["orgs", sid] is None else str(ids["orgs", sid])

    for o in g["orgs"]:
        parent = org(o["parentSourcedId"]) if o["parentSourcedId"] else ""
        out["orgs"].append({**blank["orgs"], "sourcedId": org(o["sourcedId"]), "name": o["name"],
                            "type": o["type"], "identifier": o["identifier"],
                            "parentSourcedId": parent})  # fmt: skip
    year = next(s for s in g["academicSessions"] if s["type"] == "schoolYear")["sourcedId"]
    for s in g["academicSessions"]:
        for school in schools:
            term = ids["academicSessions", s["sourcedId"]]
            parent = s["parentSourcedId"]
            out["academicSessions"].append({
                **s, "sourcedId": str(term[school]),
                "parentSourcedId": str(ids["academicSessions", parent][school]) if parent else "",
            })  # fmt: skip
    for c in g["courses"]:
        school, cid = ids["courses", c["sourcedId"]]
        out["courses"].append({**blank["courses"], "sourcedId": f"{school}-{cid}",
                               "schoolYearSourcedId": str(ids["academicSessions", year][school]),
                               "title": c["title"], "courseCode": c["courseCode"],
                               "orgSourcedId": str(school)})  # fmt: skip
    titles = {c["sourcedId"]: c["title"] for c in g["courses"]}
    codes = {c["sourcedId"]: c["courseCode"] for c in g["courses"]}
    parents = {s["sourcedId"]: s["parentSourcedId"] for s in g["academicSessions"]}
    for c in g["classes"]:
        school, cid = ids["courses", c["courseSourcedId"]]
        n = c["classCode"].rsplit("-", 1)[-1]
        terms = c["termSourcedIds"].split(",")
        term = parents[terms[0]] if len(terms) > 1 else terms[0]  # a year-long section: the year
        out["classes"].append({
            **blank["classes"], "sourcedId": str(ids["classes", c["sourcedId"]]),
            "title": f"{titles[c['courseSourcedId']]} - Section {n}", "grades": c["grades"],
            "courseSourcedId": f"{school}-{cid}", "classCode": f"{codes[c['courseSourcedId']]}.{n}",
            "classType": "scheduled", "location": c["location"], "schoolSourcedId": str(school),
            "termSourcedIds": str(ids["academicSessions", term][school]), "periods": c["periods"],
        })  # fmt: skip

    def users(field: str) -> str:
        return ",".join(s for s in (user_sid(ids, u) for u in field.split(",") if u) if s)

    for u in g["users"]:
        sid = user_sid(ids, u["sourcedId"])
        if sid is None:
            continue  # district-office staff
        row = {**u, "sourcedId": sid, "orgSourcedIds": ",".join(
            org(o) for o in u["orgSourcedIds"].split(",") if ids["orgs", o] is not None
        ), "agentSourcedIds": users(u["agentSourcedIds"])}  # fmt: skip
        if u["role"] == "student":
            row.update(
                identifier=str(int(u["identifier"])), userIds=f"{{SIS:{int(u['identifier'])}}}"
            )
        elif u["role"] in ("teacher", "administrator"):
            row.update(userIds=f"{{SIS:{u['identifier']}}}")
        else:
            row.update(userIds="", enabledUser="true")
        out["users"].append(row)
    not_carried = ("countryOfBirthCode", "stateOfBirthAbbreviation", "cityOfBirth",
                   "publicSchoolResidenceStatus")  # fmt: skip
    for row in g["demographics"]:
        out["demographics"].append({**row, **dict.fromkeys(not_carried, ""),
                                    "sourcedId": user_sid(ids, row["sourcedId"])})  # fmt: skip
    for e in g["enrollments"]:
        kind = ids["enrollments", e["sourcedId"]]
        sid = f"section-{kind[1]}-staff-{kind[2]}" if kind[0] == "teacher" else str(kind[1])
        school = ids["orgs", e["schoolSourcedId"]]
        out["enrollments"].append({**e, "sourcedId": sid,
                                   "classSourcedId": str(ids["classes", e["classSourcedId"]]),
                                   "schoolSourcedId": str(school),
                                   "userSourcedId": user_sid(ids, e["userSourcedId"])})  # fmt: skip
    return out


# --- (a) a full pull equals the generator's district ----------------------------------------


def test_full_pull_equals_the_generated_district(big: Path, state: Path):
    district = from_oneroster(big)
    with FakePowerSchool(district, caps=SMALL_CAPS) as fake:
        outcome = pull(fake, state)
        assert outcome.error is None, outcome.error
        assert outcome.warnings == []
        got = tables(state, outcome.set_id)
        want = expected_tables(big, district)
        for entity in spec.ENTITY_NAMES:
            g, w = normal(got[entity]), normal(want[entity])
            assert g.keys() == w.keys(), entity
            diffs = [
                (sid, k, g[sid][k], w[sid][k])
                for sid in w
                for k in w[sid]
                if g[sid][k] != w[sid][k]
            ]
            assert diffs == [], f"{entity}: {diffs[:5]}"
        # The API's shapes were all exercised: single-record pages, empty pages, OAuth.
        assert fake.single_object_pages > 0 and fake.empty_pages > 0
        assert fake.issuer.issued == 1
        token = fake.requests_to(TOKEN_PATH)[0]
        assert token.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert token.body == b"grant_type=client_credentials"
        # Page sizes came from the metadata, and every page said which it was.
        for req in fake.requests_to(r"/ws/v1/school/\d+/student$"):
            assert req.arg("pagesize") == "20" and int(req.arg("page")) >= 1
            assert "demographics" in req.arg("expansions")
        # Dropped section enrollments are left out (the fake lists some).
        dropped = {r["id"] for rs in district.enrollments.values() for r in rs if r["dropped"]}
        assert dropped and not dropped & {int(r["sourcedId"]) for r in got["enrollments"]
                                          if r["role"] == "student"}  # fmt: skip
    assert process(state, outcome.set_id).status == "accepted"
    pages = sorted((sets.set_dir(state, TENANT, outcome.set_id) / "pages").iterdir())
    assert len(pages) == outcome.requests  # every API answer is archived


def test_a_second_identical_pull_changes_nothing(fake: FakePowerSchool, state: Path):
    first = pull(fake, state)
    assert process(state, first.set_id).status == "accepted"
    mark = last_event(state)
    second = pull(fake, state)
    assert tables(state, second.set_id) == tables(state, first.set_id)
    assert process(state, second.set_id).status in ("accepted", "duplicate")
    assert [t for t, _ in events_after(state, mark) if not t.startswith("sets.")] == []


# --- (b) changes on the server between two pulls -> exactly the expected events -------------


def test_second_pull_after_changes_gives_exactly_the_expected_events(big: Path, state: Path):
    d = from_oneroster(big)
    with FakePowerSchool(d, caps=SMALL_CAPS) as fake:
        first = pull(fake, state)
        assert process(state, first.set_id).status == "accepted"
        mark = last_event(state)
        before = {r["sourcedId"]: r for r in tables(state, first.set_id)["users"]}

        edited, removed, new_student, guardians = change_district(d)
        gone_ccs = d.remove_student(removed)
        new_ccs = d.add_student(*new_student)
        second = pull(fake, state)
        assert second.error is None, second.error
        outcome = process(state, second.set_id)
        assert outcome.status == "accepted", outcome.summary

    events = events_after(state, mark)
    kinds = Counter(t for t, _ in events)
    new_sid = f"student-{d.student_seq.n}"
    removed_sid = f"student-{removed}"
    assert kinds == Counter({
        "users.created": 1, "demographics.created": 1, "enrollments.created": len(new_ccs),
        "users.updated": 1,
        "users.deleted": 1 + len(guardians), "demographics.deleted": 1,
        "enrollments.deleted": len(gone_ccs),
        "sets.accepted": 1,
    })  # fmt: skip
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for t, data in events:
        by_kind.setdefault(t, []).append(data)
    assert by_kind["users.created"][0]["object"]["sourcedId"] == new_sid
    assert by_kind["demographics.created"][0]["object"]["sourcedId"] == new_sid
    assert {e["object"]["sourcedId"] for e in by_kind["enrollments.created"]} == {
        str(i) for i in new_ccs
    }
    update = by_kind["users.updated"][0]
    assert update["object"]["sourcedId"] == f"student-{edited}"
    assert update["object"]["email"] == "changed.address@students.example.org"
    assert update["previous_attributes"] == {"email": before[f"student-{edited}"]["email"]}
    assert {e["object"]["sourcedId"] for e in by_kind["users.deleted"]} == {
        removed_sid,
        *(f"contact-{c}" for c in guardians),
    }
    assert by_kind["demographics.deleted"][0]["object"]["sourcedId"] == removed_sid
    assert {e["object"]["sourcedId"] for e in by_kind["enrollments.deleted"]} == {
        str(i) for i in gone_ccs
    }


def change_district(d: District):
    """Pick the changes: an email edited; a student removed whose guardians have no other
    child and whose classes keep their grades without them; a new student, in two sections
    that already have their grade. Returns (edited dcid, removed dcid, add_student args,
    the removed student's contact ids)."""
    by_section: dict[int, list[int]] = {}
    for sec, records in d.enrollments.items():
        by_section[sec] = [r["student_id"] for r in records if not r["dropped"]]
    grade = {s["id"]: s["school_enrollment"]["grade_level"] for s in d.all_students()}
    kids_of: dict[str, set[str]] = {}
    for c in d.contacts:
        kids_of.setdefault(c["contact_id"], set()).add(c["student_dcid"])

    def removable(dcid: int) -> bool:
        mine = [c["contact_id"] for c in d.contacts if c["student_dcid"] == str(dcid)]
        if not mine or any(kids_of[c] != {str(dcid)} for c in mine):
            return False
        return all(
            any(o != dcid and grade[o] == grade[dcid] for o in members)
            for members in by_section.values()
            if dcid in members
        )

    students = d.all_students()
    removed = next(s["id"] for s in students if removable(s["id"]))
    guardians = sorted({c["contact_id"] for c in d.contacts if c["student_dcid"] == str(removed)})
    edited = next(s["id"] for s in students if s["id"] != removed)
    d.set_email(edited, "changed.address@students.example.org")
    model = next(s for s in students if s["id"] not in (removed, edited))
    school = model["school_enrollment"]["school_id"]
    mine = [sec for sec, members in by_section.items() if model["id"] in members][:2]
    record = copy.deepcopy(model)
    del record["id"]
    record.update(local_id=7654321, student_username="nnewcomer7654",
                  name={"first_name": "Nora", "last_name": "Newcomer"},
                  contact_info={"email": "nnewcomer7654@students.example.org"})  # fmt: skip
    return edited, removed, (school, record, mine), guardians


# --- (c) failures: retried and recovered ----------------------------------------------------


@pytest.fixture(scope="module")
def baseline(small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The tables of an undisturbed pull of the same district (ids are deterministic)."""
    state = tmp_path_factory.mktemp("baseline")
    with FakePowerSchool(from_oneroster(small), caps=FAULT_CAPS) as fake:
        outcome = pull(fake, state)
    assert outcome.error is None
    return tables(state, outcome.set_id)


def recovered(fake: FakePowerSchool, state: Path, baseline: dict, **kw: Any) -> PullOutcome:
    outcome = pull(fake, state, **kw)
    assert outcome.error is None, outcome.error
    assert tables(state, outcome.set_id) == baseline
    return outcome


STUDENT_PAGES = r"/ws/v1/school/\d+/student$"


def test_429_waits_as_retry_after_says(fake: FakePowerSchool, state: Path, baseline: dict):
    sleeps = Sleeps()
    fake.server.fail_next(STUDENT_PAGES, status=429, headers={"Retry-After": "7"}, after=1)
    recovered(fake, state, baseline, sleeps=sleeps)
    assert 7.0 in sleeps.waits


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried(status: int, fake: FakePowerSchool, state: Path,
                                   baseline: dict):  # fmt: skip
    fake.server.fail_next(r"/section_enrollment$", status=status, times=2, after=3)
    outcome = recovered(fake, state, baseline)
    assert outcome.requests > 0


@pytest.mark.parametrize(
    "fault",
    [{"truncate": True}, {"reset": True}, {"delay": 1.0}],
    ids=["truncated-json", "connection-reset", "slow-past-timeout"],
)
def test_transport_faults_are_retried(fault: dict, fake: FakePowerSchool, state: Path,
                                      baseline: dict):  # fmt: skip
    fake.server.fail_next(r"/ws/v1/school/\d+/section$", after=1, **fault)
    recovered(fake, state, baseline, timeout=0.4)


def test_gzip_transfer_gives_the_same_set_and_archives_the_servers_bytes(
    small: Path, state: Path, baseline: dict
):
    server = FakeServer(gzip=True, keep_sent=True)
    fake = FakePowerSchool(from_oneroster(small), caps=FAULT_CAPS, server=server)
    with fake:
        outcome = recovered(fake, state, baseline)
    assert server.sent is not None
    sent = [a for a in server.sent if TOKEN_PATH not in a.url]
    assert sent and all(a.wire != a.body for a in sent)
    pages = sets.set_dir(state, TENANT, outcome.set_id) / "pages"
    assert assert_archived_as_sent(pages, sent) == len(sent)


def test_token_invalidated_mid_pull_reauthenticates_and_continues(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    fake.regenerate_after(25)
    recovered(fake, state, baseline)
    assert fake.issuer.issued == 2
    assert len(fake.requests_to(TOKEN_PATH)) == 2


def test_records_inserted_between_pages_are_all_read_once(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    d = fake.district
    school = biggest_school(d)
    assert len(d.students[school]) > SMALL_CAPS["student"]  # more than one page
    record = copy.deepcopy(d.students[school][0])
    del record["id"]
    record.update(local_id=1234567, student_username="inserted1234",
                  contact_info={"email": "inserted@students.example.org"})  # fmt: skip
    fake.after_page(rf"/ws/v1/school/{school}/student$", 1,
                    lambda: d.add_student(school, record, [], index=0))  # fmt: skip
    outcome = pull(fake, state)
    assert outcome.error is None, outcome.error
    users = tables(state, outcome.set_id)["users"]
    ids = [u["sourcedId"] for u in users]
    assert len(ids) == len(set(ids))
    assert f"student-{d.student_seq.n}" in ids
    assert len(ids) == len(baseline["users"]) + 1
    # The list was read again after its count moved.
    assert len(fake.requests_to(rf"/ws/v1/school/{school}/student/count$")) >= 3


def test_a_record_removed_between_pages_hides_no_other_record(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    d = fake.district
    school = biggest_school(d)
    victim = d.students[school][0]["id"]
    fake.after_page(rf"/ws/v1/school/{school}/student$", 1, lambda: d.remove_student(victim))
    outcome = pull(fake, state)
    assert outcome.error is None, outcome.error
    got = {u["sourcedId"] for u in tables(state, outcome.set_id)["users"]}
    want = {u["sourcedId"] for u in baseline["users"]} - {f"student-{victim}"}
    # Guardians of the victim alone go with them; nobody else is missing.
    assert want - got <= {
        u["sourcedId"] for u in baseline["users"] if u["role"] in ("parent", "guardian")
    }
    assert {u for u in want - got if u.startswith(("student-", "staff-"))} == set()


@pytest.mark.parametrize("style", ["outer", "blank"])
def test_empty_page_shapes(style: str, fake: FakePowerSchool, state: Path, baseline: dict):
    fake.empty_page = style
    school = fake.district.schools[0]["id"]
    fake.caps["student"] = len(fake.district.students[school])  # one full page, then empty
    recovered(fake, state, baseline)
    assert fake.empty_pages > 0


def test_total_an_exact_multiple_of_the_page_size(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    d = fake.district
    school = d.schools[0]["id"]
    fake.caps["student"] = len(d.students[school])  # one full page, then an empty one
    recovered(fake, state, baseline)
    pages = [r.arg("page") for r in fake.requests_to(rf"/ws/v1/school/{school}/student$")]
    assert pages == ["1", "2"]


def test_page_size_never_above_the_metadata_cap(fake: FakePowerSchool, state: Path, baseline: dict):
    recovered(fake, state, baseline, page_size=500)
    caps = {"student": 20, "staff": 10, "section": 25, "section_enrollment": 50, "term": 4}
    for what, cap in caps.items():
        asked = {int(r.arg("pagesize")) for r in fake.requests_to(rf"/{what}$")}
        assert asked == {cap}, what
    # A tenant page_size below the caps is used as is.
    fake.server.requests.clear()
    recovered(fake, state, baseline, page_size=7)
    asked = {r.arg("pagesize") for r in fake.requests_to(r"/ws/v1/") if r.arg("pagesize")}
    assert asked == {"2", "4", "7"}  # schools and terms: capped at 2 and 4


@pytest.mark.parametrize("status", [403, 404])
def test_guardian_query_refused_pulls_without_guardians(
    status: int, fake: FakePowerSchool, state: Path, baseline: dict
):
    fake.guardian_status = status
    outcome = pull(fake, state)
    assert outcome.error is None
    assert len(outcome.warnings) == 1 and f"HTTP {status}" in outcome.warnings[0]
    users = tables(state, outcome.set_id)["users"]
    assert not [u for u in users if u["role"] in ("parent", "guardian", "relative")]
    assert all(u["agentSourcedIds"] == "" for u in users)
    want = [u for u in baseline["users"] if u["role"] not in ("parent", "guardian")]
    assert len(users) == len(want)


def test_no_district_endpoint_names_the_district_from_config(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    fake.district_endpoint = False
    outcome = pull(fake, state)
    orgs = tables(state, outcome.set_id)["orgs"]
    assert orgs[0] == {**baseline["orgs"][0], "name": "Riverbend (from config)", "identifier": ""}
    assert orgs[1:] == baseline["orgs"][1:]


def test_demographics_not_granted_declares_the_file_absent(
    fake: FakePowerSchool, state: Path, baseline: dict
):
    first = pull(fake, state)
    assert process(state, first.set_id).status == "accepted"
    mark = last_event(state)
    fake.demographics_granted = False
    outcome = pull(fake, state)
    assert outcome.error is None and "demographics not pulled" in outcome.warnings[0]
    assert manifest(state, outcome.set_id)["file.demographics"] == "absent"
    assert process(state, outcome.set_id).status == "accepted"
    assert [t for t, _ in events_after(state, mark) if not t.startswith("sets.")] == []


# --- (c) failures: the pull is a rejected set, the snapshot untouched -----------------------


def accepted_first(fake: FakePowerSchool, state: Path) -> tuple[str, int]:
    first = pull(fake, state)
    assert process(state, first.set_id).status == "accepted"
    with EventStore.open(state) as store:
        snapshot = store.snapshot_of(TENANT)
    assert snapshot is not None
    return snapshot, last_event(state)


def rejected(
    fake: FakePowerSchool, state: Path, code: str, arrange: Callable[[], object]
) -> PullOutcome:
    """An accepted pull, then `arrange()` the trouble, then a pull that must be rejected with
    `code`, leaving the snapshot as it was, nothing pending and no record event."""
    snapshot, mark = accepted_first(fake, state)
    arrange()
    outcome = pull(fake, state)
    assert outcome.error is not None and outcome.error.code == code, outcome.error
    with EventStore.open(state) as store:
        row = store.get_set(outcome.set_id)
        assert row is not None and row.status == "rejected"
        assert row.summary is not None
        assert row.summary["reasons"] == [{"code": code, "message": outcome.error.message}]
        assert store.snapshot_of(TENANT) == snapshot
        assert store.pending_sets() == []
    assert [t for t, _ in events_after(state, mark)] == ["sets.rejected"]
    raw = sets.set_dir(state, TENANT, outcome.set_id) / sets.RAW
    assert list(raw.iterdir()) == []  # nothing that could be validated or diffed
    return outcome


def biggest_school(d: District) -> int:
    return max(d.schools, key=lambda s: len(d.students[s["id"]]))["id"]


def test_persistent_500_at_a_later_page_rejects_and_deletes_nothing(
    fake: FakePowerSchool, state: Path
):
    school = biggest_school(fake.district)
    assert len(fake.district.students[school]) > SMALL_CAPS["student"]
    # Page 1 answers; page 2 and every retry of it: 500.
    outcome = rejected(fake, state, "http_500", lambda: fake.server.fail_next(
        rf"/ws/v1/school/{school}/student$", status=500, times=10_000, after=1
    ))  # fmt: skip
    assert f"/ws/v1/school/{school}/student" in outcome.error.message
    assert "4 attempts" in outcome.error.message
    pages = sets.set_dir(state, TENANT, outcome.set_id) / "pages"
    assert any(p.name.endswith("-students.json.gz") for p in pages.iterdir())


def test_staff_not_shared_rejects(fake: FakePowerSchool, state: Path):
    outcome = rejected(fake, state, "http_403", lambda: fake.server.fail_next(
        r"/ws/v1/school/\d+/staff", status=403, times=10_000
    ))  # fmt: skip
    assert "not shared" in outcome.error.message


def test_secret_regenerated_mid_pull_rejects(fake: FakePowerSchool, state: Path):
    outcome = rejected(fake, state, "token_refused", lambda: fake.after_page(
        r"/ws/v1/district/school$", 1, lambda: fake.change_secret("a-new-secret")
    ))  # fmt: skip
    assert "client_id and the secret" in outcome.error.message


def test_a_200_with_an_error_body_rejects(fake: FakePowerSchool, state: Path):
    outcome = rejected(fake, state, "bad_response", lambda: fake.server.fail_next(
        r"/ws/v1/school/\d+/course$", status=200, body=b'{"message": "Internal error"}'
    ))  # fmt: skip
    assert "has no 'courses'" in outcome.error.message


def test_a_list_that_keeps_changing_rejects(fake: FakePowerSchool, state: Path):
    d = fake.district
    school = biggest_school(d)
    template = copy.deepcopy(d.students[school][0])
    del template["id"]

    def arrange() -> None:
        for n in range(3):  # every pass sees the list grow after its first page
            record = {**copy.deepcopy(template), "local_id": 4000000 + n,
                      "student_username": f"moving{n}"}  # fmt: skip
            fake.after_page(rf"/ws/v1/school/{school}/student$", 1,
                            lambda r=record: d.add_student(school, r, []))  # fmt: skip

    outcome = rejected(fake, state, "unstable_list", arrange)
    assert "kept changing" in outcome.error.message


def test_a_count_above_what_the_pages_hold_rejects(fake: FakePowerSchool, state: Path):
    school = biggest_school(fake.district)
    outcome = rejected(fake, state, "count_mismatch", lambda: fake.overcount(
        rf"/ws/v1/school/{school}/staff/count$", 1
    ))  # fmt: skip
    assert "/count says" in outcome.error.message


# --- ingestd check ------------------------------------------------------------------------------


def test_check_reports_each_list(fake: FakePowerSchool):
    fake.guardian_status = 403

    async def go():
        auth = OAuth2ClientCredentials(fake.url + TOKEN_PATH, CLIENT_ID, CLIENT_SECRET)
        async with ApiClient(fake.url, auth, timeout=2.0, sleep=Sleeps()) as client:
            return await PowerSchoolPoller(tenant_for(fake), client, PageArchive(None)).check()

    lines = {line.collection: line for line in asyncio.run(go())}
    assert set(lines) == {"metadata", "district", "schools", "terms", "courses", "sections",
                          "students", "staff", "section_enrollments", "guardians"}  # fmt: skip
    assert all(line.ok for line in lines.values())  # no guardians: pulls go on without them
    assert lines["guardians"].detail == "not shared (HTTP 403); pulls go without it"
    assert lines["schools"].detail == "shared (1 of 3 records read)"
    assert "student 20" in lines["metadata"].detail
