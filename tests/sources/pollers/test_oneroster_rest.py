"""The OneRoster 1.1 REST poller against a fake OneRoster server (real HTTP on 127.0.0.1) serving
a district written by `ingestd.oneroster.sample`: whole pulls through `runner.pull_set` and the
pipeline, each misbehaviour of SIS-APIS.md's list, and what a failed pull leaves (nothing but a
rejected set).

What the REST binding cannot carry, so the comparison with the generator's CSV files leaves
it out or states it:

- `status`: blank in a bulk CSV file, always filled in REST ("active" here);
- `dateLastModified`: blank in the generator's bulk files, a required ISO timestamp in REST
  (the diff ignores it): not compared;
- row order (the server's order, compared sorted by sourcedId), quoting style, and empty list
  vs empty text (both an empty cell);
- the manifest: the runner writes its own (versions and `file.*` rows; no gradebook rows, no
  `source.*` rows).

Column order is not carried either, but the runner writes the spec's order: checked.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from ingestd.config import Config, DaemonConfig, TenantConfig
from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.pipeline import sets
from ingestd.pipeline.ingest import Pipeline
from ingestd.sources.pollers import oneroster_rest, oneroster_rest_map
from ingestd.sources.pollers.base import CheckLine, PageArchive, poller_for
from ingestd.sources.pollers.http import (
    ApiClient,
    Auth,
    BearerAuth,
    OAuth1Signer,
    OAuth2ClientCredentials,
)
from ingestd.sources.pollers.runner import PullOutcome, pull_set
from tests.oneroster.corpus import generated
from tests.sources.pollers.fake_oneroster import (
    BASE,
    STAMP,
    FakeOneRoster,
    NoDelayServer,
    Scenario,
    read_district,
)
from tests.sources.pollers.fakehttp import (
    OAuth1Verifier,
    OAuth2Issuer,
    Reply,
    Sleeps,
    StaticBearer,
    assert_archived_as_sent,
)

TENANT = "lakeview"
TOKEN = "static-token-1"
PAGE = 100  # page size asked for in these tests: enrollments come in ~20 pages


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "district", 200, 11)


@pytest.fixture(scope="module")
def expected(district: Path) -> dict[str, pl.DataFrame]:
    """The generator's tables as the API carries them (see the module docstring)."""
    return {e: _comparable(f.with_columns(status=pl.lit("active"))) for e, f in
            read_district(district).items()}  # fmt: skip


def _comparable(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("dateLastModified").fill_null("").sort("sourcedId")


def tenant(**kw: Any) -> TenantConfig:
    kw.setdefault("page_size", PAGE)
    return TenantConfig(
        id=TENANT,
        source="oneroster",
        base_url="http://127.0.0.1:1/unused",  # the tests hand pull_set their own client
        auth="bearer",
        token_file=Path("/nonexistent/token"),
        **kw,
    )


def config(state: Path, **kw: Any) -> Config:
    return Config(daemon=DaemonConfig(state_dir=state), tenants={TENANT: tenant(**kw)})


@dataclass
class Pulled:
    outcome: PullOutcome
    sleeps: Sleeps
    requests: int


def pull(
    state: Path,
    fake: FakeOneRoster,
    auth: Auth | None = None,
    *,
    timeout: float = 5.0,
    **tenant_kw: Any,
) -> Pulled:
    """One pull of the fake through runner.pull_set, with a fast client (no real waits)."""
    sleeps = Sleeps()
    cfg = config(state, **tenant_kw)

    async def go() -> Pulled:
        client = ApiClient(
            fake.url, auth or BearerAuth(TOKEN), timeout=timeout, sleep=sleeps, max_attempts=4
        )
        async with client:
            outcome = await pull_set(cfg, cfg.tenants[TENANT], client)
            return Pulled(outcome, sleeps, client.requests)

    return asyncio.run(go())


def set_tables(state: Path, set_id: str) -> dict[str, pl.DataFrame]:
    raw = sets.set_dir(state, TENANT, set_id) / sets.RAW
    tables = {}
    for entity in spec.ENTITIES:
        path = raw / entity.file_name
        if path.exists():
            frame = pl.read_csv(path, infer_schema=False)
            assert tuple(frame.columns) == entity.column_names, entity.name
            tables[entity.name] = frame
    return tables


def manifest(state: Path, set_id: str) -> dict[str, str]:
    path = sets.set_dir(state, TENANT, set_id) / sets.RAW / spec.MANIFEST_FILE
    rows = path.read_text().splitlines()
    assert rows[0] == "propertyName,value"
    return dict(r.split(",", 1) for r in rows[1:])


def assert_same_district(state: Path, set_id: str, expected: dict[str, pl.DataFrame]) -> None:
    tables = set_tables(state, set_id)
    assert sorted(tables) == sorted(expected)
    for entity, want in expected.items():
        got = _comparable(tables[entity])
        assert got.height == want.height, entity
        assert got.equals(want), f"{entity}: {got.join(want, how='anti', on=got.columns)}"
    stamps = tables["users"]["dateLastModified"].unique().to_list()
    assert stamps == [STAMP]


def events_after(state: Path, after: int) -> list[tuple[str, dict[str, Any]]]:
    with EventStore.open(state) as store:
        return [(t, json.loads(d)) for _, t, _, _, _, d in store.read_events(after=after)]


def accept(state: Path, set_id: str) -> str:
    with EventStore.open(state) as store:
        return Pipeline(state, store).process(set_id).status


def pages_of(records: int, limit: int) -> int:
    """Requests to page through `records`: the pages holding them, then an empty one."""
    return -(-records // limit) + 1


def no_retries(pulled: Pulled) -> None:
    assert pulled.sleeps.waits == []


def make_fake(district: Path, scenario: Scenario | None = None, auth: str = "bearer"):
    fake = FakeOneRoster(district, scenario)
    if auth == "bearer":
        StaticBearer(fake.server, TOKEN)
    return fake


# --- (a) whole pulls, each auth ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["oauth2", "oauth1-sha256", "oauth1-sha1", "bearer"])
def test_full_pull_equals_the_district(
    method: str, district: Path, expected: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    fake = FakeOneRoster(district)
    verifier = issuer = None
    with fake:
        auth: Auth
        if method == "oauth2":
            scopes = ["https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly"]
            issuer = OAuth2Issuer(
                fake.server, "/oauth/token", "cid", "s3cret:&", required_scopes=scopes
            )
            token_url = fake.server.url + "/oauth/token"
            auth = OAuth2ClientCredentials(token_url, "cid", "s3cret:&", scopes)
        elif method.startswith("oauth1"):
            verifier = OAuth1Verifier(fake.server, "consumer", "se cret&")
            signature = "HMAC-SHA1" if method.endswith("sha1") else "HMAC-SHA256"
            auth = OAuth1Signer("consumer", "se cret&", signature)
        else:
            StaticBearer(fake.server, TOKEN)
            auth = BearerAuth(TOKEN)
        pulled = pull(tmp_path, fake, auth)
    outcome = pulled.outcome
    assert outcome.error is None, outcome.error
    assert outcome.warnings == []
    no_retries(pulled)
    assert_same_district(tmp_path, outcome.set_id, expected)
    assert outcome.rows == {e: f.height for e, f in expected.items()}
    assert manifest(tmp_path, outcome.set_id) == {
        "manifest.version": "1.0",
        "oneroster.version": "1.1",
        **{f"file.{e}": "bulk" for e in spec.ENTITY_NAMES},
    }
    # one request per page, pages until an empty one: ceil(n / 100) + 1 per collection
    pages = sum(pages_of(f.height, PAGE) for f in expected.values())
    assert pulled.requests == pages
    if verifier is not None:
        assert verifier.failures == [] and verifier.verified == pages
        assert all(("limit", str(PAGE)) in r.query for r in fake.server.requests)
    if issuer is not None:
        assert issuer.issued == 1
    # every page body kept for audit
    archive = sets.set_dir(tmp_path, TENANT, outcome.set_id) / "pages"
    assert len(list(archive.glob("*.json.gz"))) == pages
    # and the set goes through the pipeline like an upload
    assert accept(tmp_path, outcome.set_id) == "accepted"


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_compressed_transfer_gives_the_same_set_and_keeps_the_servers_bytes(
    compressed: bool, district: Path, expected: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    """A server that gzips its answers gives the same set as one that does not; every page is
    archived as meta line, newline and the body sent, and a gzipped body in the server's own
    bytes (not compressed again)."""
    fake = FakeOneRoster(district, server=NoDelayServer(gzip=compressed, keep_sent=True))
    StaticBearer(fake.server, TOKEN)
    with fake:
        pulled = pull(tmp_path, fake)
    outcome = pulled.outcome
    assert outcome.error is None, outcome.error
    no_retries(pulled)
    assert_same_district(tmp_path, outcome.set_id, expected)
    sent = fake.server.sent
    assert sent is not None
    assert len(sent) == sum(pages_of(f.height, PAGE) for f in expected.values())
    assert all((answer.wire != answer.body) is compressed for answer in sent)
    pages = sets.set_dir(tmp_path, TENANT, outcome.set_id) / "pages"
    assert assert_archived_as_sent(pages, sent) == len(sent)


# --- (b) a second pull after changes at the SIS --------------------------------------------------


def test_second_pull_gives_exactly_the_changes(district: Path, tmp_path: Path) -> None:
    fake = make_fake(district)
    with fake:
        first = pull(tmp_path, fake).outcome
        assert accept(tmp_path, first.set_id) == "accepted"
        after = events_after(tmp_path, 0)
        last_id = len(after)

        users = fake.tables["users"]
        students = users.filter(pl.col("role") == "student")
        edited = students["sourcedId"].to_list()[:3]
        old_emails = {
            r["sourcedId"]: r["email"]
            for r in users.filter(pl.col("sourcedId").is_in(edited)).iter_rows(named=True)
        }
        for sid in edited:
            fake.update("users", sid, email=f"{sid}@new.example.org")
        # a record whose dateLastModified moves with nothing else changed is no update
        fake.update("users", students["sourcedId"][10], stamp="2026-09-09T09:09:09.000Z")
        teacher = users.filter(pl.col("role") == "teacher")["sourcedId"][0]
        gone = fake.remove_user(teacher)
        assert gone
        newcomer = {
            "sourcedId": "u9999999",
            "enabledUser": "true",
            "orgSourcedIds": fake.tables["orgs"]["sourcedId"][1],
            "role": "student",
            "username": "new.kid",
            "userIds": "{SIS:999999}",
            "givenName": "New",
            "familyName": "Kid",
            "grades": "03",
        }
        fake.add("users", newcomer, at=42)
        second = pull(tmp_path, fake).outcome
    assert second.error is None and second.warnings == []
    assert accept(tmp_path, second.set_id) == "accepted"
    events = events_after(tmp_path, last_id)
    assert Counter(t for t, _ in events) == {
        "users.created": 1,
        "users.updated": 3,
        "users.deleted": 1,
        "enrollments.deleted": len(gone),
        "sets.accepted": 1,
    }
    by_type: dict[str, list[dict[str, Any]]] = {}
    for t, data in events:
        by_type.setdefault(t, []).append(data)
    created = by_type["users.created"][0]["object"]
    assert created["sourcedId"] == "u9999999" and created["userIds"] == "{SIS:999999}"
    assert created["grades"] == "03" and created["status"] == "active"
    updates = {d["object"]["sourcedId"]: d for d in by_type["users.updated"]}
    assert set(updates) == set(edited)
    for sid, data in updates.items():
        assert data["object"]["email"] == f"{sid}@new.example.org"
        assert data["previous_attributes"] == {"email": old_emails[sid]}
    assert by_type["users.deleted"][0]["object"]["sourcedId"] == teacher
    assert {d["object"]["sourcedId"] for d in by_type["enrollments.deleted"]} == set(gone)
    assert all(d["object"]["userSourcedId"] == teacher for d in by_type["enrollments.deleted"])
    # event order: creates and updates parents first, deletes children first
    types = [t for t, _ in events]
    assert types.index("enrollments.deleted") < types.index("users.deleted")


# --- (c) misbehaviour that is retried or tolerated ----------------------------------------------


def _retry_after_date() -> str:
    return email.utils.formatdate(time.time() + 30, usegmt=True)


# name -> (scenario, set-up(fake) -> None, check(pulled, fake) -> None)
Setup = Callable[[FakeOneRoster], None]
Check = Callable[[Pulled, FakeOneRoster], None]


def _fault(pattern: str, **how: Any) -> Setup:
    def setup(fake: FakeOneRoster) -> None:
        fake.server.fail_next(pattern, **how)

    return setup


def _waited(low: float, high: float) -> Check:
    def check(pulled: Pulled, fake: FakeOneRoster) -> None:
        assert any(low <= w <= high for w in pulled.sleeps.waits), pulled.sleeps.waits

    return check


def _retried(pulled: Pulled, fake: FakeOneRoster) -> None:
    assert len(pulled.sleeps.waits) == 1


def _timed_out(pulled: Pulled, fake: FakeOneRoster) -> None:
    assert pulled.sleeps.waits  # (a loaded machine may time out elsewhere too: not counted)
    assert fake.server.faults[0].times == 0  # the slow answer was given, and waited out


def _clean(pulled: Pulled, fake: FakeOneRoster) -> None:
    assert pulled.outcome.warnings == []
    no_retries(pulled)


def _requests_of(collection: str, limit: int) -> Check:
    def check(pulled: Pulled, fake: FakeOneRoster) -> None:
        records = fake.tables[collection].height
        assert fake.server.count(rf"{BASE}/{collection}$") == pages_of(records, limit)
        assert pulled.outcome.warnings == []

    return check


def _warned(*phrases: str | Callable[[dict[str, int]], str]) -> Check:
    """The outcome's warnings hold each phrase (a callable is given the fake's record counts
    at the end of the pull)."""

    def check(pulled: Pulled, fake: FakeOneRoster) -> None:
        counts = {e: f.height for e, f in fake.tables.items()}
        text = " | ".join(pulled.outcome.warnings)
        for phrase in phrases:
            assert (phrase if isinstance(phrase, str) else phrase(counts)) in text, text

    return check


def _insert_user(fake: FakeOneRoster) -> None:
    row = {"sourcedId": "u-inserted", "enabledUser": "true", "role": "student",
           "orgSourcedIds": "100", "username": "late", "givenName": "L",
           "familyName": "Ate"}  # fmt: skip
    fake.at("users", 3, lambda: fake.add("users", row, at=0))


def _bump_revision_once(fake: FakeOneRoster) -> None:
    fake.at("enrollments", 4, fake.bump_revision)


def _restarted(pulled: Pulled, fake: FakeOneRoster) -> None:
    orgs = pages_of(fake.tables["orgs"].height, PAGE)
    assert fake.server.count(rf"{BASE}/orgs$") == 2 * orgs  # the whole pull, twice
    assert pulled.outcome.warnings == []


TOLERATED: dict[str, tuple[Scenario, Setup | None, Check]] = {
    "clean": (Scenario(), None, _clean),
    "limit clamped to 37": (Scenario(max_limit=37), None, _requests_of("users", 37)),
    # 200 students: demographics come in two full pages, then an empty one
    "demographics an exact multiple of the page": (
        Scenario(),
        None,
        _requests_of("demographics", PAGE),
    ),
    "no X-Total-Count": (Scenario(total="missing"), None, _clean),
    "ClassLink x-count": (Scenario(total_header="x-count"), None, _clean),
    "X-Total-Count too high": (
        Scenario(total_skew=5),
        None,
        _warned(
            lambda n: (
                f"users: the API's record count says {n['users'] + 5:,}, {n['users']:,} "
                "distinct records were received (paged to an empty page)"
            )
        ),
    ),
    "X-Total-Count too low": (
        Scenario(total_skew=-2),
        None,
        _warned("enrollments: the API's record count says"),
    ),
    "relative Link": (Scenario(link="relative"), None, _clean),
    "no Link": (Scenario(link="missing"), None, _clean),
    "Aeries ~/ hrefs": (Scenario(href="tilde"), None, _clean),
    "wrapper keys students/terms": (
        Scenario(wrappers={"users": "students", "academicSessions": "terms"}),
        None,
        _clean,
    ),
    "JSON booleans": (Scenario(json_booleans=True), None, _clean),
    "429 Retry-After seconds": (
        Scenario(),
        _fault(r"/users$", status=429, headers={"Retry-After": "7"}, after=2),
        _waited(7, 7),
    ),
    "429 Retry-After HTTP date": (
        Scenario(),
        lambda fake: _fault(
            r"/enrollments$", status=429, headers={"Retry-After": _retry_after_date()}, after=5
        )(fake),
        _waited(25, 31),
    ),
    "500": (Scenario(), _fault(r"/enrollments$", status=500, after=3), _retried),
    "502": (Scenario(), _fault(r"/users$", status=502, after=1), _retried),
    "503": (Scenario(), _fault(r"/classes$", status=503), _retried),
    "504": (Scenario(), _fault(r"/courses$", status=504, after=1), _retried),
    "slow past the timeout": (Scenario(), _fault(r"/users$", delay=2.5, after=2), _timed_out),
    "truncated JSON": (Scenario(), _fault(r"/enrollments$", truncate=True, after=7), _retried),
    "truncated gzip": (Scenario(), _fault(r"/users$", bad_gzip="truncated", after=2), _retried),
    "corrupt gzip": (Scenario(), _fault(r"/enrollments$", bad_gzip="corrupt", after=4), _retried),
    "connection reset": (Scenario(), _fault(r"/users$", reset=True, after=4), _retried),
    "records inserted between pages": (
        Scenario(),
        _insert_user,
        _warned(
            "users: 1 records came on two pages",
            lambda n: (
                f"users: the API's record count says {n['users']:,}, {n['users'] - 1:,} distinct"
            ),
        ),
    ),
    "x-perm-rev changes mid-pull": (Scenario(revision="41"), _bump_revision_once, _restarted),
}


@pytest.mark.parametrize("name", list(TOLERATED))
def test_tolerated(
    name: str, district: Path, expected: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    scenario, setup, check = TOLERATED[name]
    fake = make_fake(district, scenario)
    with fake:
        if setup is not None:
            setup(fake)
        # a short timeout only where a timeout is the point: a loaded machine can be slow
        pulled = pull(tmp_path, fake, timeout=1.0 if name.startswith("slow") else 5.0)
    assert pulled.outcome.error is None, pulled.outcome.error
    assert_same_district(tmp_path, pulled.outcome.set_id, expected)
    check(pulled, fake)
    assert accept(tmp_path, pulled.outcome.set_id) == "accepted"


def test_token_expiry_mid_pull(
    district: Path, expected: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    fake = FakeOneRoster(district)
    with fake:
        issuer = OAuth2Issuer(fake.server, "/token", "cid", "sec")
        fake.at("enrollments", 5, issuer.expire_all)
        auth = OAuth2ClientCredentials(fake.server.url + "/token", "cid", "sec")
        pulled = pull(tmp_path, fake, auth)
    assert pulled.outcome.error is None
    assert issuer.issued == 2  # the 401 on page 5 fetched a new token
    statuses = [r.path for r in fake.server.requests]
    assert statuses.count("/token") == 2
    assert_same_district(tmp_path, pulled.outcome.set_id, expected)


def test_oauth1_retries_are_signed_afresh(
    district: Path, expected: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    """A retried request gets a new nonce and timestamp (the verifier refuses replays)."""
    fake = FakeOneRoster(district)
    with fake:
        verifier = OAuth1Verifier(fake.server, "ck", "cs")
        fake.server.fail_next(r"/users$", status=503, after=2)
        fake.server.fail_next(r"/enrollments$", reset=True, after=4)
        pulled = pull(tmp_path, fake, OAuth1Signer("ck", "cs"))
    assert pulled.outcome.error is None
    assert verifier.failures == []
    assert len(pulled.sleeps.waits) == 2
    assert_same_district(tmp_path, pulled.outcome.set_id, expected)


# --- (c) misbehaviour that rejects the pull, leaving the snapshot as it was --------------------


@pytest.fixture(scope="module")
def baseline(district: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A state dir holding one accepted pull of the district."""
    state = tmp_path_factory.mktemp("baseline") / "state"
    fake = make_fake(district)
    with fake:
        outcome = pull(state, fake).outcome
    assert accept(state, outcome.set_id) == "accepted"
    return state, outcome.set_id


def _skewed_oauth1(fake: FakeOneRoster) -> Auth:
    OAuth1Verifier(fake.server, "ck", "cs")
    signer = OAuth1Signer("ck", "cs")
    signer._client.timestamp = str(int(time.time()) - 3600)  # the client's clock an hour slow
    return signer


def _bad_record(fake: FakeOneRoster) -> None:
    fake.at("users", 2, lambda: Reply(json={"users": [{"sourcedId": "x", "orgs": 5}]}))


def _revision_every_page(fake: FakeOneRoster) -> None:
    fake.at("enrollments", 2, fake.bump_revision, repeat=True)


REJECTED: dict[str, tuple[Scenario, Setup | None, str, str]] = {
    # name: (scenario, set-up, outcome.error.code, a phrase of its message)
    "persistent 500 at page 4": (
        Scenario(),
        _fault(r"/enrollments$", status=500, times=1000, after=3),
        "http_500",
        "/enrollments still failing after 4 attempts",
    ),
    "200 with an error body": (
        Scenario(),
        lambda fake: fake.error_page("users", 3, {"error": "database unavailable"}),
        "error_page",
        "users: the API answered 200 with an error: database unavailable",
    ),
    "200 with a failure statusInfoSet": (
        Scenario(),
        lambda fake: fake.error_page(
            "classes",
            1,
            {"statusInfoSet": [{"imsx_codeMajor": "failure", "imsx_description": "try later"}]},
        ),
        "error_page",
        "classes: the API answered 200 with an error: try later",
    ),
    "200 without the collection key": (
        Scenario(),
        lambda fake: fake.error_page("enrollments", 6, {"data": []}),
        "bad_page",
        "enrollments: the API's answer has no `enrollments` list (it holds data)",
    ),
    "200 with a non-list": (
        Scenario(),
        lambda fake: fake.error_page("users", 1, {"users": {"sourcedId": "x"}}),
        "bad_page",
        "`users` in the API's answer is an object, not an array",
    ),
    "200 with HTML": (
        Scenario(),
        _fault(r"/orgs$", status=200, body=b"<html>maintenance</html>", times=1000),
        "not_json",
        "/orgs still failing",
    ),
    "a record of the wrong shape": (
        Scenario(),
        _bad_record,
        "bad_record",
        "users: field `orgs` holds a number where a GUIDRef belongs",
    ),
    "404 for a core collection": (
        Scenario(unavailable={"enrollments": 404}),
        None,
        "http_404",
        "the API has no such endpoint",
    ),
    "403 for a core collection": (
        Scenario(unavailable={"classes": 403}),
        None,
        "http_403",
        "not shared with this application",
    ),
    "x-perm-rev never settles": (
        Scenario(revision="1"),
        _revision_every_page,
        "data_changing",
        "the data changed during the pull 4 times in a row",
    ),
    "429 asking for hours": (
        Scenario(),
        _fault(r"/users$", status=429, headers={"Retry-After": "7200"}, after=1),
        "rate_limited",
        "the server asks to wait 7200 s",
    ),
    "the server ignores offset": (
        Scenario(ignore_offset=True),
        None,
        "paging_stuck",
        "holds only records already received: the API ignores `offset`",
    ),
    "persistent corrupt gzip": (
        Scenario(),
        _fault(r"/classes$", bad_gzip="corrupt", times=1000, after=1),
        "bad_gzip",
        "/classes still failing after 4 attempts (bad_gzip)",
    ),
    "an encoding not asked for (br)": (
        Scenario(),
        _fault(r"/users$", encoding="br", times=1000, after=2),
        "unsupported_encoding",
        "the server sent a body in Content-Encoding 'br'",
    ),
    "persistent truncation": (
        Scenario(),
        _fault(r"/courses$", truncate=True, times=1000, after=1),
        "RemoteProtocolError",
        "/courses still failing after 4 attempts",
    ),
}


@pytest.mark.parametrize("name", [*REJECTED, "OAuth1 clock skew"])
def test_rejected_pull_changes_nothing(
    name: str, district: Path, baseline: tuple[Path, str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(baseline[0], state)
    with EventStore.open(state) as store:
        last_id = store.last_event_id()
    if name == "OAuth1 clock skew":
        scenario, setup, code, phrase = Scenario(), None, "http_401", "authentication failed"
        fake = FakeOneRoster(district, scenario)
        auth: Auth | None = _skewed_oauth1(fake)
    else:
        scenario, setup, code, phrase = REJECTED[name]
        fake = make_fake(district, scenario)
        auth = None
    with fake:
        if setup is not None:
            setup(fake)
        pulled = pull(state, fake, auth)
    outcome = pulled.outcome
    assert outcome.error is not None
    assert outcome.error.code == code, outcome.error
    assert phrase in outcome.error.message
    with EventStore.open(state) as store:
        row = store.get_set(outcome.set_id)
        assert row is not None and row.status == "rejected"
        assert row.summary is not None
        assert row.summary["reasons"] == [{"code": code, "message": outcome.error.message}]
        assert store.snapshot_of(TENANT) == baseline[1]
        # the pipeline will not touch it: a rejected pull is never validated nor diffed
        assert Pipeline(state, store).process(outcome.set_id).status == "rejected"
    events = events_after(state, last_id)
    assert [t for t, _ in events] == ["sets.rejected"]
    assert events[0][1]["set_id"] == outcome.set_id
    # no roster file was written; the pages it did get are kept for audit
    folder = sets.set_dir(state, TENANT, outcome.set_id)
    assert list((folder / sets.RAW).iterdir()) == []
    assert (folder / "pages").is_dir()


# --- (d) demographics not shared ----------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404])
def test_demographics_not_shared(
    status: int,
    district: Path,
    expected: dict[str, pl.DataFrame],
    baseline: tuple[Path, str],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    shutil.copytree(baseline[0], state)
    with EventStore.open(state) as store:
        last_id = store.last_event_id()
    fake = make_fake(district, Scenario(unavailable={"demographics": status}))
    with fake:
        pulled = pull(state, fake)
    outcome = pulled.outcome
    assert outcome.error is None
    assert len(outcome.warnings) == 1
    assert outcome.warnings[0].startswith("demographics: not ")
    assert f"(HTTP {status}); pulled without demographics" in outcome.warnings[0]
    assert "demographics" not in outcome.rows
    assert manifest(state, outcome.set_id)["file.demographics"] == "absent"
    tables = set_tables(state, outcome.set_id)
    assert "demographics" not in tables
    for entity, frame in tables.items():
        assert _comparable(frame).equals(expected[entity])
    assert accept(state, outcome.set_id) == "accepted"
    # absent is not empty: nothing of the demographics known so far is deleted
    assert [t for t, _ in events_after(state, last_id)] == ["sets.accepted"]


# --- check, the mapping table, the fake itself -------------------------------------------------


def test_check_reports_what_is_shared(district: Path) -> None:
    fake = make_fake(district, Scenario(unavailable={"demographics": 403, "courses": 404}))

    async def go() -> list:
        async with ApiClient(fake.url, BearerAuth(TOKEN), timeout=2.0, sleep=Sleeps()) as client:
            poller = poller_for(tenant(), client, PageArchive(None))
            return await poller.check()

    with fake:
        lines = asyncio.run(go())
    by = {line.collection: line for line in lines}
    assert [line.collection for line in lines] == [c.entity for c in oneroster_rest.COLLECTIONS]
    users = fake.tables["users"].height
    assert by["users"].ok and by["users"].detail == f"shared (1 of {users:,} records read)"
    optional = "not shared (403); pulls go without it"  # a pull goes on without it
    assert by["demographics"] == CheckLine("demographics", True, optional)
    assert not by["courses"].ok and "404" in by["courses"].detail  # a pull would fail
    assert all(r.query == [("limit", "1"), ("offset", "0")] for r in fake.server.requests)


def test_mapping_covers_every_spec_column() -> None:
    for entity in spec.ENTITIES:
        columns = tuple(col for col, _, _ in oneroster_rest_map.MAPPING[entity.name])
        assert columns == entity.column_names, entity.name
    assert [c.entity for c in oneroster_rest.COLLECTIONS] == list(spec.ENTITY_NAMES)


def test_values_map_to_csv_forms() -> None:
    map_user = oneroster_rest_map.make_mapper("users", {})
    row = map_user(
        {
            "sourcedId": "u1",
            "status": "active",
            "enabledUser": True,
            "orgs": [{"href": "~/ims/x", "sourcedId": "o1", "type": "org"}, "o2"],
            "userIds": [{"type": "LDAP", "identifier": "12"}, {"type": "SIS", "identifier": "7"}],
            "agents": [],
            "grades": ["09", "10"],
            "middleName": None,
            "identifier": 12345,
        }
    )
    assert row == {
        "sourcedId": "u1",
        "status": "active",
        "enabledUser": "true",
        "orgSourcedIds": "o1,o2",
        "userIds": "{LDAP:12},{SIS:7}",
        "agentSourcedIds": "",
        "grades": "09,10",
        "identifier": "12345",
    }
    enrollment = oneroster_rest_map.make_mapper("enrollments", {})(
        {"sourcedId": "e", "class": {"sourcedId": "c"}, "primary": "TRUE", "school": None}
    )
    assert enrollment == {"sourcedId": "e", "classSourcedId": "c", "primary": "true"}
    assert oneroster_rest_map.make_mapper("classes", {})({"sourcedId": "c", "periods": "1,2"}) == {
        "sourcedId": "c",
        "periods": "1,2",
    }


def test_fake_pages_like_a_oneroster_server(district: Path) -> None:
    """The fake's own behaviour the poller tests rely on: the default page size, clamping,
    Link and total headers, and an OAuth 1.0a verifier that refuses a replayed request."""
    fake = FakeOneRoster(district, Scenario(max_limit=300))
    with fake:
        verifier = OAuth1Verifier(fake.server, "ck", "cs")
        signer = OAuth1Signer("ck", "cs")

        async def get(params: dict[str, str], replay: httpx.Request | None = None) -> Any:
            async with httpx.AsyncClient() as http:
                request = replay or http.build_request("GET", fake.url + "/users", params=params)
                if replay is None:
                    await signer.apply(request, http)
                return request, await http.send(request)

        _, default = asyncio.run(get({}))
        _, clamped = asyncio.run(get({"limit": "500"}))
        request, last = asyncio.run(get({"limit": "500", "offset": "500"}))
        _, replayed = asyncio.run(get({}, replay=request))
    assert len(default.json()["users"]) == 100  # no limit: the spec's default
    users = fake.tables["users"].height
    assert default.headers["x-total-count"] == str(users)
    assert 'offset=100>; rel="next"' in default.headers["link"]
    assert len(clamped.json()["users"]) == 300  # asked for 500, capped without a word
    assert len(last.json()["users"]) == users - 500
    assert 'rel="next"' not in last.headers["link"]
    assert replayed.status_code == 401
    assert verifier.failures == ["nonce missing or replayed"]
