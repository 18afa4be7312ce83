"""The SQLite event store on real database files: schema, the commit transaction, reads, cursors."""

from __future__ import annotations

import contextlib
import gc
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl
import pytest

from ingestd.errors import IngestError
from ingestd.events.store import (
    MIGRATIONS,
    PAGE_SIZE,
    EventBatch,
    EventRange,
    EventStore,
    StoreError,
)

# Values that JSON and the bulk path (texts rendered in a second thread) must carry unchanged.
TRICKY = [
    "plain",
    'a "quoted" value',
    "back\\slash",
    "line\nbreak\ttab\r",
    "control \x01\x1f\x7f",
    "nul \x00 inside",
    "Nguyễn Chloé 漢字",
    "emoji 😀 and 𝄞",
    "\u2028\u2029",
    "</script>/",
    "",
    " ",
]


def texts(n: int, prefix: str = "u") -> list[str]:
    """`n` distinct event data objects as JSON text, some with awkward characters."""
    out = []
    for i in range(n):
        value = TRICKY[i % len(TRICKY)]
        obj = {"object": {"sourcedId": f"{prefix}-{i}", "givenName": value}}
        out.append(json.dumps(obj, ensure_ascii=i % 2 == 0))
    return out


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ingestd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[EventStore]:
    with EventStore(db_path) as s:
        yield s


def received(store: EventStore, set_id: str, tenant: str = "t1") -> str:
    store.add_set(set_id, tenant, "cli", f"digest-{set_id}")
    return set_id


def sequence(db_path: Path) -> int | None:
    """The AUTOINCREMENT counter of events, read by a connection of our own."""
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return row[0] if row else None


def raw(db_path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def event_threads() -> int:
    return sum(1 for t in threading.enumerate() if t is not threading.main_thread())


def wait_threads(baseline: int) -> int:
    """Helper threads still alive after a failed insert, once the failure was let go."""
    gc.collect()
    deadline = time.monotonic() + 5
    while event_threads() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return event_threads()


# --- schema --------------------------------------------------------------------------------


def test_fresh_database_has_every_migration_and_wal(store: EventStore, db_path: Path) -> None:
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # as another process sees the file
    assert raw(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tenants", "sets", "events", "event_batches", "cursors"} <= tables


def test_reopening_does_not_migrate_again(db_path: Path) -> None:
    with EventStore(db_path) as s:
        received(s, "S1")
        s.decide_set("S1", "accepted", {"n": 1}, events=[EventBatch("users.created", ["{}"])])
    cookie = raw(db_path, "PRAGMA schema_version")  # bumped by every schema change
    with EventStore(db_path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.get_set("S1").status == "accepted"
        assert [r[0] for r in s.read_events()] == [1]
    with EventStore.open(db_path.parent) as s:
        assert s.path == db_path
        assert s.last_event_id() == 1
    assert raw(db_path, "PRAGMA schema_version") == cookie


def test_new_databases_get_16k_pages_and_older_ones_keep_theirs(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "ingestd.db"
    with EventStore(fresh) as s:
        assert s.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16_384
    older = tmp_path / "older" / "ingestd.db"
    older.parent.mkdir()
    db = sqlite3.connect(older)  # as an earlier ingestd made it: 4 KiB pages, WAL
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")  # not empty: the page size is fixed
    db.close()
    with EventStore(older) as s:
        assert s.db.execute("PRAGMA page_size").fetchone()[0] == 4096
        received(s, "S1")
        rng = s.decide_set("S1", "accepted", {}, events=[EventBatch("users.created", texts(70))])
        assert rng == EventRange(1, 70)
    assert raw(older, "PRAGMA page_size") == [(4096,)]
    assert raw(older, "PRAGMA integrity_check") == [("ok",)]


def test_newer_schema_is_refused(db_path: Path) -> None:
    EventStore(db_path).close()
    newer = len(MIGRATIONS) + 1
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {newer}")
    db.close()
    with pytest.raises(StoreError) as err:
        EventStore(db_path)
    message = str(err.value)
    assert str(db_path) in message
    assert f"schema version {newer}" in message
    assert f"newer than this ingestd ({len(MIGRATIONS)})" in message
    assert "upgrade ingestd" in message
    assert err.value.exit_code == 2
    assert raw(db_path, "PRAGMA user_version") == [(newer,)]  # left as it was


def test_a_file_that_is_no_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an SQLite database, just bytes" * 100)
    with pytest.raises(StoreError, match="cannot open the database"):
        EventStore(db_path)


# --- decide_set: the one commit transaction --------------------------------------------------


def test_bulk_and_small_batches_get_consecutive_ids_in_order(
    store: EventStore, db_path: Path
) -> None:
    received(store, "S0")
    rng0 = store.decide_set("S0", "rejected", {}, events=[EventBatch("sets.rejected", ["{}"])])
    assert rng0 == EventRange(1, 1)

    big = texts(100_000)
    small = texts(3, prefix="s")
    received(store, "S1")
    rng = store.decide_set(
        "S1",
        "accepted",
        {"what": "big"},
        events=[
            EventBatch("users.created", pl.Series(big, dtype=pl.String)),
            EventBatch("classes.updated", small),
            EventBatch("sets.accepted", [json.dumps({"status": "accepted"})]),
        ],
        accept=True,
    )
    assert rng == EventRange(2, 100_005)
    assert rng.count == 100_004

    rows = store.read_events(after=1)
    assert [r[0] for r in rows] == list(range(2, 100_006))
    assert [r[5] for r in rows] == [*big, *small, '{"status": "accepted"}']
    assert [json.loads(r[5]) for r in rows[:100]] == [json.loads(t) for t in big[:100]]
    assert {r[1] for r in rows[:100_000]} == {"users.created"}
    assert [r[1] for r in rows[100_000:]] == ["classes.updated"] * 3 + ["sets.accepted"]
    assert {(r[3], r[4]) for r in rows} == {("t1", "S1")}
    assert len({r[2] for r in rows}) == 1  # one commit, one `created`

    decided = store.get_set("S1")
    assert decided.status == "accepted" and decided.summary == {"what": "big"}
    assert store.snapshot_of("t1") == "S1"
    assert sequence(db_path) == 100_005
    assert raw(db_path, "SELECT first_id, last_id, tenant, set_id FROM event_batches") == [
        (1, 1, "t1", "S0"),
        (2, 100_005, "t1", "S1"),
    ]
    assert list(store.iter_events(after=99_990, page=4)) == store.read_events(after=99_990)


def test_small_batch_alone(store: EventStore) -> None:
    received(store, "S1")
    data = texts(3)
    rng = store.decide_set(
        "S1", "accepted", {}, events=[EventBatch("users.created", pl.Series(data))]
    )
    assert rng == EventRange(1, 3)
    assert [(r[0], r[1], r[5]) for r in store.read_events()] == [
        (i + 1, "users.created", d) for i, d in enumerate(data)
    ]


@pytest.mark.parametrize("n", [64, 65, 20_000, 20_001, 40_001])
def test_batch_sizes_around_the_chunk_edges(store: EventStore, n: int) -> None:
    data = texts(n)
    received(store, "S1")
    rng = store.decide_set("S1", "accepted", {}, events=[EventBatch("users.created", data)])
    assert rng == EventRange(1, n)
    rows = store.read_events()
    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert [r[5] for r in rows] == data


def test_decide_without_events_inserts_nothing(store: EventStore, db_path: Path) -> None:
    received(store, "S1")
    rng = store.decide_set("S1", "duplicate", {"same": True}, base_set_id="S0")
    assert rng.count == 0 and rng.first == 1
    assert store.read_events() == []
    assert raw(db_path, "SELECT * FROM event_batches") == []
    row = store.get_set("S1")
    assert (row.status, row.base_set_id) == ("duplicate", "S0")


def test_decide_set_refuses_unknown_sets_and_statuses(store: EventStore) -> None:
    with pytest.raises(StoreError, match="no set NOPE"):
        store.decide_set("NOPE", "accepted", {})
    received(store, "S1")
    with pytest.raises(ValueError):
        store.decide_set("S1", "approved-ish", {})
    assert store.get_set("S1").status == "received"


def test_events_are_invisible_to_readers_until_the_commit(store: EventStore, db_path: Path) -> None:
    """While decide_set builds a later batch, another connection sees none of the earlier ones."""
    seen: list[int] = []

    class Watching(Sequence[str]):
        def __len__(self) -> int:
            return 100

        def __getitem__(self, i: int) -> str:  # type: ignore[override]
            if i >= 100:
                raise IndexError(i)
            if i == 0:
                seen.append(raw(db_path, "SELECT COUNT(*) FROM events")[0][0])
            return "{}"

    received(store, "S1")
    store.decide_set(
        "S1",
        "accepted",
        {},
        events=[
            EventBatch("users.created", texts(30_000)),
            EventBatch("users.updated", Watching()),
        ],
    )
    assert seen and set(seen) == {0}
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(30_100,)]


def test_before_commit_runs_last_inside_the_transaction(store: EventStore, db_path: Path) -> None:
    seen: list[tuple] = []

    def before_commit() -> None:  # what another connection sees at that moment
        seen.append((raw(db_path, "SELECT COUNT(*) FROM events")[0][0], sequence(db_path)))
        seen.append(store.db.execute("SELECT status FROM sets WHERE id = 'S1'").fetchone())

    received(store, "S1")
    rng = store.decide_set(
        "S1",
        "accepted",
        {},
        events=[EventBatch("users.created", texts(30_000))],
        accept=True,
        before_commit=before_commit,
    )
    assert rng == EventRange(1, 30_000)
    assert seen == [(0, None), ("accepted",)]  # all done in the transaction, nothing visible
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(30_000,)]


def test_a_failing_before_commit_rolls_everything_back(store: EventStore, db_path: Path) -> None:
    last = _committed_before(store)
    received(store, "S1")

    def snapshot_failed() -> None:
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        store.decide_set(
            "S1",
            "accepted",
            {},
            events=[EventBatch("users.created", texts(30_000))],
            accept=True,
            before_commit=snapshot_failed,
        )
    _assert_rolled_back(store, db_path, last)


@pytest.mark.parametrize("fails", [False, True])
def test_a_durable_commit_syncs_the_wal_and_then_normal_again(
    store: EventStore, fails: bool
) -> None:
    """synchronous=FULL for that transaction only (2 = FULL, 1 = NORMAL)."""
    during: list[int] = []

    def before_commit() -> None:
        during.append(store.db.execute("PRAGMA synchronous").fetchone()[0])
        if fails:
            raise RuntimeError("failed")

    received(store, "S1")
    with contextlib.nullcontext() if not fails else pytest.raises(RuntimeError):
        store.decide_set(
            "S1",
            "accepted",
            {},
            events=[EventBatch("users.created", texts(100))],
            before_commit=before_commit,
            durable=True,
        )
    assert during == [2]
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert store.get_set("S1").status == ("received" if fails else "accepted")
    store.decide_set("S1", "rejected", {}, from_status=("received", "accepted"))
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_a_set_is_decided_once_when_two_connections_race(db_path: Path) -> None:
    """Two recoverers (two `ingestd ingest` after a crash, or the daemon and the CLI) both
    read the set as `received`; the one that commits second must not insert its events again."""
    with EventStore(db_path) as one, EventStore(db_path) as two:
        received(one, "S1")
        assert [r.id for r in two.pending_sets()] == ["S1"]
        two_begins = threading.Event()
        failures: list[BaseException] = []

        def on_sql(sql: str) -> None:  # sqlite's own statement trace, nothing of ours replaced
            if sql.startswith("BEGIN"):
                two_begins.set()

        def second() -> None:
            try:
                two.decide_set(
                    "S1", "accepted", {}, events=[EventBatch("users.created", texts(100))]
                )
            except IngestError:
                pass  # refusing is right
            except BaseException as exc:
                failures.append(exc)

        class ReleaseWhenTwoWaits(Sequence[str]):
            """Read inside one's transaction: lets `two` read the set, then waits for it."""

            def __len__(self) -> int:
                return 100

            def __getitem__(self, i: int) -> str:  # type: ignore[override]
                if i >= 100:
                    raise IndexError(i)
                if i == 0:
                    two.db.set_trace_callback(on_sql)
                    thread.start()
                    assert two_begins.wait(10)  # two has read S1 as received, now it waits
                return "{}"

        thread = threading.Thread(target=second)
        one.decide_set(
            "S1", "accepted", {}, events=[EventBatch("users.created", ReleaseWhenTwoWaits())]
        )
        thread.join(30)
        two.db.set_trace_callback(None)
        assert not thread.is_alive() and not failures
        assert one.last_event_id() == 100  # S1's events once, not twice
        assert one.get_set("S1").status == "accepted"


# --- a failure inside the transaction rolls everything back -----------------------------------


class Exploding(Sequence[str]):
    """Event texts whose reading fails part way (as a bug or a full disk in a renderer would)."""

    def __init__(self, n: int, fail_at: int) -> None:
        self.n, self.fail_at = n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if i >= self.n:
            raise IndexError(i)
        if i == self.fail_at:
            raise RuntimeError("renderer failed")
        return "{}"


def _committed_before(store: EventStore) -> int:
    received(store, "S0")
    rng = store.decide_set(
        "S0", "accepted", {}, events=[EventBatch("orgs.created", texts(70))], accept=True
    )
    return rng.last


def _assert_rolled_back(store: EventStore, db_path: Path, last: int) -> None:
    assert store.last_event_id() == last
    assert store.read_events(after=last) == []
    assert raw(db_path, f"SELECT COUNT(*) FROM events WHERE id > {last}") == [(0,)]
    assert raw(db_path, "SELECT last_id FROM event_batches") == [(last,)]
    assert sequence(db_path) == last
    row = store.get_set("S1")
    assert (row.status, row.decided, row.summary) == ("received", None, None)
    assert store.snapshot_of("t1") == "S0"
    assert [r.id for r in store.pending_sets()] == ["S1"]
    # the store is usable again and the next commit's ids follow without a gap
    rng = store.decide_set("S1", "accepted", {}, events=[EventBatch("users.created", texts(5))])
    assert rng == EventRange(last + 1, last + 5)
    assert [r[0] for r in store.read_events()] == list(range(1, last + 6))


def test_rollback_when_reading_a_batch_fails(store: EventStore, db_path: Path) -> None:
    last = _committed_before(store)
    baseline = event_threads()
    received(store, "S1")
    with pytest.raises(RuntimeError, match="renderer failed"):
        store.decide_set(
            "S1",
            "accepted",
            {"x": 1},
            events=[
                EventBatch("users.created", pl.Series(texts(45_000))),
                EventBatch("users.updated", texts(3)),
                EventBatch("users.deleted", Exploding(1_000, fail_at=500)),
            ],
            accept=True,
        )
    assert wait_threads(baseline) == baseline
    _assert_rolled_back(store, db_path, last)


def test_rollback_when_sqlite_fails_on_a_small_batch(store: EventStore, db_path: Path) -> None:
    last = _committed_before(store)
    received(store, "S1")
    with pytest.raises(sqlite3.IntegrityError):
        store.decide_set(
            "S1",
            "accepted",
            {},
            events=[
                EventBatch("users.created", texts(50_000)),
                EventBatch(None, texts(2)),  # type: ignore[arg-type]  # events.type NOT NULL
            ],
            accept=True,
        )
    _assert_rolled_back(store, db_path, last)


def test_rollback_when_sqlite_fails_in_the_middle_of_a_bulk_batch(
    store: EventStore, db_path: Path
) -> None:
    """A null text in the third 20,000-row chunk: two chunks are in, the prefetch thread busy."""
    last = _committed_before(store)
    baseline = event_threads()
    data: list[str | None] = list(texts(100_000))
    data[45_000] = None
    received(store, "S1")
    with pytest.raises(sqlite3.IntegrityError):
        store.decide_set(
            "S1",
            "accepted",
            {},
            events=[EventBatch("users.created", pl.Series(data, dtype=pl.String))],
            accept=True,
        )
    assert wait_threads(baseline) == baseline
    _assert_rolled_back(store, db_path, last)


def test_rollback_when_the_bulk_insert_of_a_second_batch_fails(
    store: EventStore, db_path: Path
) -> None:
    last = _committed_before(store)
    received(store, "S1")
    with pytest.raises(sqlite3.IntegrityError):
        store.decide_set(
            "S1",
            "accepted",
            {},
            events=[
                EventBatch("users.created", texts(30_000)),
                EventBatch(None, pl.Series(texts(30_000))),  # type: ignore[arg-type]
            ],
        )
    _assert_rolled_back(store, db_path, last)


# --- reading the log ---------------------------------------------------------------------------


def _two_tenants(store: EventStore) -> None:
    """Commits of tenants a and b interleaved, bulk and small, with and without a set."""
    received(store, "A1", "a")
    store.decide_set(
        "A1",
        "accepted",
        {},
        events=[
            EventBatch("users.created", texts(3, "a1")),
            EventBatch("enrollments.created", texts(100, "a1e")),
            EventBatch("sets.accepted", ["{}"]),
        ],
        accept=True,
    )
    received(store, "B1", "b")
    store.decide_set(
        "B1",
        "accepted",
        {},
        events=[EventBatch("users.created", texts(2, "b1")), EventBatch("sets.accepted", ["{}"])],
        accept=True,
    )
    store.add_events("a", [EventBatch("sets.incomplete", ['{"missing": ["users.csv"]}'])])
    received(store, "B2", "b")
    store.decide_set("B2", "rejected", {}, events=[EventBatch("sets.rejected", ["{}"])])
    received(store, "A2", "a")
    store.decide_set(
        "A2",
        "accepted",
        {},
        events=[
            EventBatch("users.updated", pl.Series(texts(70, "a2"))),
            EventBatch("users.deleted", texts(1, "a2d")),
            EventBatch("sets.accepted", ["{}"]),
        ],
        accept=True,
    )
    store.add_events("b", [EventBatch("sets.incomplete", ["{}"])])
    received(store, "B3", "b")  # received, undecided: no events yet


def test_read_events_filters_across_interleaved_tenants(store: EventStore) -> None:
    _two_tenants(store)
    everything = store.read_events()
    n = len(everything)
    assert n == 104 + 3 + 1 + 1 + 72 + 1
    assert [r[0] for r in everything] == list(range(1, n + 1))
    tenants = [r[3] for r in everything]
    assert tenants == ["a"] * 104 + ["b"] * 3 + ["a"] + ["b"] + ["a"] * 72 + ["b"]
    assert everything[107][4] is None  # a's set-less event
    assert everything[-1][4] is None

    from fnmatch import fnmatchcase

    afters = [0, 1, 2, 50, 103, 104, 105, 107, 108, 109, 110, 150, 181, n, n + 5]
    for tenant in (None, "a", "b", "nobody"):
        for glob in (None, "users.*", "sets.*", "*.created", "Users.*"):
            for after in afters:
                for limit in (None, 0, 1, 3, 100, 1000):
                    expected = [
                        r
                        for r in everything
                        if r[0] > after
                        and (tenant is None or r[3] == tenant)
                        and (glob is None or fnmatchcase(r[1], glob))
                    ][:limit]
                    got = store.read_events(after=after, tenant=tenant, type_glob=glob, limit=limit)
                    assert got == expected, (tenant, glob, after, limit)


def test_iter_events_pages_through_a_tenant(store: EventStore) -> None:
    _two_tenants(store)
    for tenant in ("a", "b", None):
        for page in (1, 2, 7, 10_000):
            assert list(store.iter_events(tenant=tenant, page=page)) == store.read_events(
                tenant=tenant
            )
    assert list(store.iter_events(after=100, tenant="a", type_glob="users.*", page=3)) == (
        store.read_events(after=100, tenant="a", type_glob="users.*")
    )


def test_readers_in_another_connection_see_whole_commits(store: EventStore, db_path: Path) -> None:
    _two_tenants(store)
    with EventStore(db_path) as reader:
        assert reader.read_events(tenant="b") == store.read_events(tenant="b")
        version = reader.data_version()
        received(store, "B4", "b")
        store.decide_set("B4", "accepted", {}, events=[EventBatch("users.created", texts(80))])
        assert reader.data_version() != version
        new = reader.read_events(after=182, tenant="b")
        assert [r[0] for r in new] == list(range(183, 263))


def test_add_events_without_a_set(store: EventStore, db_path: Path) -> None:
    rng = store.add_events(
        "lincoln",
        [
            EventBatch("sets.incomplete", ['{"files": 1}', '{"files": 2}']),
            EventBatch("sets.incomplete", texts(200)),
        ],
    )
    assert rng == EventRange(1, 202)
    rows = store.read_events(tenant="lincoln")
    assert [r[0] for r in rows] == list(range(1, 203))
    assert {(r[1], r[3], r[4]) for r in rows} == {("sets.incomplete", "lincoln", None)}
    assert [r[5] for r in rows[:2]] == ['{"files": 1}', '{"files": 2}']
    assert raw(db_path, "SELECT first_id, last_id, tenant, set_id FROM event_batches") == [
        (1, 202, "lincoln", None)
    ]
    assert store.list_sets() == []
    empty = store.add_events("lincoln", [])
    assert empty.count == 0 and empty.first == 203
    assert raw(db_path, "SELECT COUNT(*) FROM event_batches") == [(1,)]
    received(store, "S1", "lincoln")
    rng = store.decide_set("S1", "accepted", {}, events=[EventBatch("users.created", ["{}"])])
    assert rng == EventRange(203, 203)


def test_add_events_rolls_back_as_a_whole(store: EventStore, db_path: Path) -> None:
    store.add_events("t1", [EventBatch("sets.incomplete", ["{}"])])
    with pytest.raises(RuntimeError):
        store.add_events(
            "t1",
            [EventBatch("sets.incomplete", texts(100)), EventBatch("x.y", Exploding(80, 40))],
        )
    assert store.last_event_id() == 1
    assert sequence(db_path) == 1
    assert store.add_events("t1", [EventBatch("sets.incomplete", ["{}"])]) == EventRange(2, 2)


# --- sink cursors --------------------------------------------------------------------------


def test_cursors_never_go_backwards(db_path: Path) -> None:
    with EventStore(db_path) as s:
        assert s.cursor("webhook") == 0
        s.set_cursor("webhook", 10)
        s.set_cursor("webhook", 5)
        assert s.cursor("webhook") == 10
        s.set_cursor("webhook", 10)
        s.set_cursor("webhook", 12)
        s.set_cursor("nats", 3)
        s.set_cursor("webhook", 0)
        assert (s.cursor("webhook"), s.cursor("nats"), s.cursor("other")) == (12, 3, 0)
    with EventStore(db_path) as s:
        assert (s.cursor("webhook"), s.cursor("nats")) == (12, 3)
        s.set_cursor("nats", 2)
        assert s.cursor("nats") == 3
