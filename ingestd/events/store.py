"""The SQLite store (`<state_dir>/ingestd.db`, WAL): tenants, sets, the change-event log, cursors.

Events are only ever inserted inside the transaction that also records a set's
outcome, so a crash leaves either all of a set's events or none. Ids come from
`INTEGER PRIMARY KEY AUTOINCREMENT`: strictly increasing, never reused.

A million events must go in at SQLite's own pace, so bulk batches are rendered
to JSON texts by polars in a second thread while SQLite inserts the previous
chunk (statements of 200 rows each, one bound text per row). Instead of
an index on events by tenant (a quarter of the insert cost), `event_batches`
records each transaction's id range and tenant; tenant queries walk those
ranges by primary key.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from ingestd.errors import IngestError

DB_NAME = "ingestd.db"
SET_STATUSES = ("received", "rejected", "held", "accepted", "duplicate", "superseded")
ANY_SNAPSHOT = object()  # decide_set: no expectation about the tenant's snapshot
_CHUNK = 20_000  # events rendered at a time
PAGE_SIZE = 16_384  # of new databases
_SMALL = 64  # batches up to this size are rendered in the inserting thread
_ROWS = 200  # events per INSERT statement
_T = TypeVar("_T")

MIGRATIONS: tuple[str, ...] = (
    # 1: the first release
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        snapshot_set_id TEXT,
        last_accepted TEXT,
        created TEXT NOT NULL
    );
    CREATE TABLE sets (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        digest TEXT,
        received TEXT NOT NULL,
        decided TEXT,
        base_set_id TEXT,
        summary TEXT,
        report_path TEXT
    );
    CREATE INDEX sets_by_tenant ON sets (tenant, id);
    CREATE INDEX sets_by_status ON sets (status, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        tenant TEXT NOT NULL,
        set_id TEXT,
        created TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE event_batches (
        first_id INTEGER PRIMARY KEY,
        last_id INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        set_id TEXT
    );
    CREATE INDEX event_batches_by_tenant ON event_batches (tenant, last_id);
    CREATE TABLE cursors (
        sink TEXT PRIMARY KEY,
        event_id INTEGER NOT NULL,
        updated TEXT NOT NULL
    );
    """,
)


class StoreError(IngestError):
    """The database is unusable (newer schema, corrupt, not writable)."""

    code = "store"
    exit_code = 2


class AlreadyDecided(StoreError):
    """The set was decided by another process meanwhile (two recoverers of one set)."""

    code = "already_decided"


class StaleBase(StoreError):
    """Another set of the tenant was accepted since this one was diffed: diff it again."""

    code = "stale_base"


def utc_now() -> str:
    """Now as ISO 8601 UTC with milliseconds: 2026-11-29T02:14:07.512Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events of one type: each event's `data` object as JSON text, given as texts, or as
    a frame plus the polars expression that renders a row's JSON (rendered while
    SQLite inserts the previous chunk, so the two cores work at once)."""

    type: str
    data: pl.Series | Sequence[str] | pl.DataFrame
    render: pl.Expr | None = None

    def __len__(self) -> int:
        return self.data.height if isinstance(self.data, pl.DataFrame) else len(self.data)

    def frame(self) -> pl.DataFrame:
        """The batch as a frame with one column, `v`, or `data` and its `render` expression."""
        if isinstance(self.data, pl.DataFrame):
            return self.data
        values = self.data if isinstance(self.data, pl.Series) else list(self.data)
        return pl.DataFrame({"v": pl.Series(values, dtype=pl.String)})

    def expression(self) -> pl.Expr:
        """The expression giving each row's JSON text."""
        return self.render if self.render is not None else pl.col("v")


@dataclass(frozen=True, slots=True)
class SetRow:
    """One set as the store knows it."""

    id: str
    tenant: str
    source: str
    status: str
    digest: str | None
    received: str
    decided: str | None
    base_set_id: str | None
    summary: dict[str, Any] | None
    report_path: str | None


@dataclass(frozen=True, slots=True)
class EventRange:
    """Ids of the events a commit inserted (empty when first > last)."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return max(0, self.last - self.first + 1)


class EventStore:
    """One connection to ingestd.db; one writer at a time (SQLite's rule), readers alongside."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open ({exc.__class__.__name__})") from None
        try:
            self._check_version()  # before anything changes the file
            # Pages of 16 KiB for a new database (an existing one keeps its own): a commit
            # of a million events goes in a sixth faster and checkpoints in a third less time.
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._set_wal()
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: fewer spills in big commits
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoint, atomic
            self.db.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint()
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(
                f"{path}: cannot open the database ({exc.__class__.__name__})"
            ) from None
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def open(cls, state_dir: Path) -> EventStore:
        """The store of a state directory."""
        return cls(state_dir / DB_NAME)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ------------------------------------------------------------------------

    def _check_version(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this ingestd "
                f"({len(MIGRATIONS)}); upgrade ingestd"
            )

    def _set_wal(self) -> None:
        # Switching to WAL takes a lock without waiting for it (no busy handler): when two
        # processes open a brand-new database at once, one is told "locked". Try again.
        for attempt in range(100):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.02)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            # Another process (the daemon starting while an operator runs a command) may
            # have applied it while we waited for the lock: read the version again.
            if self.db.execute("PRAGMA user_version").fetchone()[0] >= number:
                self.db.execute("COMMIT")
                continue
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        """PRAGMA user_version."""
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    # --- tenants and sets ----------------------------------------------------------------

    def snapshot_of(self, tenant: str) -> str | None:
        """The set id of the tenant's current snapshot (None before its first accepted set)."""
        row = self.db.execute(
            "SELECT snapshot_set_id FROM tenants WHERE id = ?", (tenant,)
        ).fetchone()
        return row[0] if row else None

    def tenants(self) -> list[tuple[str, str | None, str | None]]:
        """(tenant, snapshot set id, last accepted time) for every tenant seen."""
        return self.db.execute(
            "SELECT id, snapshot_set_id, last_accepted FROM tenants ORDER BY id"
        ).fetchall()

    def add_set(self, set_id: str, tenant: str, source: str, digest: str | None) -> None:
        """Record a claimed set as `received`."""
        now = utc_now()
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO tenants (id, created) VALUES (?, ?)", (tenant, now)
            )
            self.db.execute(
                "INSERT INTO sets (id, tenant, source, status, digest, received) "
                "VALUES (?, ?, ?, 'received', ?, ?)",
                (set_id, tenant, source, digest, now),
            )

    def get_set(self, set_id: str) -> SetRow | None:
        """One set, or None."""
        row = self.db.execute(f"SELECT {_SET_COLUMNS} FROM sets WHERE id = ?", (set_id,)).fetchone()
        return _set_row(row) if row else None

    def list_sets(
        self, tenant: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[SetRow]:
        """Sets, newest first, filtered by tenant and status."""
        sql = f"SELECT {_SET_COLUMNS} FROM sets WHERE 1=1"
        args: list[Any] = []
        if tenant:
            sql += " AND tenant = ?"
            args.append(tenant)
        if status:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [_set_row(r) for r in self.db.execute(sql, args)]

    def set_ids(self) -> set[str]:
        """The ids of every set recorded (cheap: no summaries parsed)."""
        return {row[0] for row in self.db.execute("SELECT id FROM sets")}

    def pending_sets(self) -> list[SetRow]:
        """Sets left `received` (claimed, not decided), oldest first."""
        rows = self.db.execute(
            f"SELECT {_SET_COLUMNS} FROM sets WHERE status = 'received' ORDER BY id"
        )
        return [_set_row(r) for r in rows]

    def decide_set(
        self,
        set_id: str,
        status: str,
        summary: dict[str, Any],
        *,
        report_path: str | None = None,
        base_set_id: str | None = None,
        events: Iterable[EventBatch] = (),
        accept: bool = False,
        from_status: tuple[str, ...] = ("received",),
        expect_snapshot: str | object | None = ANY_SNAPSHOT,
        before_commit: Callable[[], None] | None = None,
        durable: bool = False,
    ) -> EventRange:
        """In one transaction: insert `events`, record the set's outcome and, when `accept`,
        point the tenant at this set's snapshot and supersede its older held sets. The set
        must still be in one of `from_status` (else AlreadyDecided) and, if given, the
        tenant's snapshot must still be `expect_snapshot` (else StaleBase).

        `before_commit` runs last inside the transaction (an exception rolls it back): the
        pipeline waits there for the snapshot it writes meanwhile. `durable` syncs the
        WAL at COMMIT (synchronous=FULL), so the set survives a power cut with no
        checkpoint after it; otherwise it is durable at the next `checkpoint()`."""
        if status not in SET_STATUSES:
            raise ValueError(status)
        row = self.get_set(set_id)
        if row is None:
            raise StoreError(f"no set {set_id}")
        now = utc_now()
        with self._write(durable=durable):
            (status_now,) = self.db.execute(
                "SELECT status FROM sets WHERE id = ?", (set_id,)
            ).fetchone()
            if status_now not in from_status:
                raise AlreadyDecided(f"set {set_id} is already {status_now}")
            if (
                expect_snapshot is not ANY_SNAPSHOT
                and self.snapshot_of(row.tenant) != expect_snapshot
            ):
                raise StaleBase(f"the snapshot of {row.tenant} moved while {set_id} was diffed")
            first = self._next_event_id()
            for batch in events:
                self._insert(batch, row.tenant, set_id, now)
            last = self._next_event_id() - 1
            if last >= first:
                self.db.execute(
                    "INSERT INTO event_batches (first_id, last_id, tenant, set_id) "
                    "VALUES (?, ?, ?, ?)",
                    (first, last, row.tenant, set_id),
                )
            self.db.execute(
                "UPDATE sets SET status = ?, decided = ?, summary = ?, report_path = "
                "COALESCE(?, report_path), base_set_id = COALESCE(?, base_set_id) WHERE id = ?",
                (status, now, json.dumps(summary), report_path, base_set_id, set_id),
            )
            if accept:
                self.db.execute(
                    "UPDATE tenants SET snapshot_set_id = ?, last_accepted = ? WHERE id = ?",
                    (set_id, now, row.tenant),
                )
                self.db.execute(
                    "UPDATE sets SET status = 'superseded', decided = ? "
                    "WHERE tenant = ? AND status = 'held' AND id < ?",
                    (now, row.tenant, set_id),
                )
            if before_commit is not None:
                before_commit()
        return EventRange(first, last)

    def add_events(self, tenant: str, events: Iterable[EventBatch]) -> EventRange:
        """Insert events that belong to no set's decision (e.g. sets.incomplete)."""
        now = utc_now()
        with self._write():
            first = self._next_event_id()
            for batch in events:
                self._insert(batch, tenant, None, now)
            last = self._next_event_id() - 1
            if last >= first:
                self.db.execute(
                    "INSERT INTO event_batches (first_id, last_id, tenant, set_id) "
                    "VALUES (?, ?, ?, NULL)",
                    (first, last, tenant),
                )
        return EventRange(first, last)

    # --- events ------------------------------------------------------------------------

    def read_events(
        self,
        *,
        after: int = 0,
        tenant: str | None = None,
        type_glob: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, str, str, str, str | None, str]]:
        """Events with id > after, oldest first: (id, type, created, tenant, set_id, data)."""
        args: list[Any] = []
        if tenant:
            sql = (
                "SELECT e.id, e.type, e.created, e.tenant, e.set_id, e.data "
                "FROM event_batches b JOIN events e ON e.id BETWEEN b.first_id AND b.last_id "
                "WHERE b.tenant = ? AND b.last_id > ? AND e.id > ?"
            )
            args += [tenant, after, after]
        else:
            sql = "SELECT id, type, created, tenant, set_id, data FROM events e WHERE e.id > ?"
            args.append(after)
        if type_glob:
            sql += " AND e.type GLOB ?"
            args.append(type_glob)
        sql += " ORDER BY e.id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self.db.execute(sql, args).fetchall()

    def iter_events(self, *, after: int = 0, page: int = 10_000, **filters: Any) -> Iterator[tuple]:
        """All matching events after `after`, read page by page."""
        while True:
            rows = self.read_events(after=after, limit=page, **filters)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none)."""
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def data_version(self) -> int:
        """Changes when another connection commits (PRAGMA data_version)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # --- sink cursors --------------------------------------------------------------------

    def cursor(self, sink: str) -> int:
        """The last event id `sink` acknowledged (0 when it has none)."""
        row = self.db.execute("SELECT event_id FROM cursors WHERE sink = ?", (sink,)).fetchone()
        return row[0] if row else 0

    def set_cursor(self, sink: str, event_id: int) -> None:
        """Advance `sink`'s cursor (never backwards)."""
        with self._write():
            self.db.execute(
                "INSERT INTO cursors (sink, event_id, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (sink) DO UPDATE SET event_id = MAX(event_id, excluded.event_id), "
                "updated = excluded.updated",
                (sink, event_id, utc_now()),
            )

    # --- internals -------------------------------------------------------------------------

    def _write(self, *, durable: bool = False) -> _Transaction:
        return _Transaction(self.db, durable=durable)

    def _next_event_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return (row[0] if row else 0) + 1

    def _insert(self, batch: EventBatch, tenant: str, set_id: str | None, created: str) -> None:
        # Statements of _ROWS rows each (multi-row VALUES), with the batch's constant columns
        # as literals: executemany binds one text per row, and SQLite's per-statement work
        # (AUTOINCREMENT bookkeeping among it) is paid once per _ROWS rows. Half the CPU of
        # a statement per row, and a third less again than JSON arrays through json_each.
        constants = ", ".join(_literal(v) for v in (batch.type, tenant, set_id, created))
        frame, render = batch.frame(), batch.expression()
        if frame.height <= _SMALL:
            self._insert_texts(constants, frame.select(render).to_series().to_list())
            return
        for chunk in _prefetch(_texts(frame, render)):
            self._insert_texts(constants, chunk)

    def _insert_texts(self, constants: str, texts: list[str]) -> None:
        """Insert `texts` in order, as `_ROWS`-row statements and one for the rest."""
        whole = len(texts) - len(texts) % _ROWS
        if whole:
            rows = iter(texts[:whole])
            self.db.executemany(_values_sql(constants, _ROWS), zip(*[rows] * _ROWS, strict=True))
        if whole < len(texts):
            rest = texts[whole:]
            self.db.execute(_values_sql(constants, len(rest)), rest)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (run after a commit, outside any transaction).

        Automatic checkpoints are off: they would run inside the commit of a large set
        and double its time. The pipeline calls this once the set is decided, or leaves it
        to its caller (`Pipeline(checkpoint_after_set=False)`: commits are then durable
        by themselves) to run from a background task, on a connection of its own
        (PASSIVE: it never blocks writers or readers). Closing the last connection of
        the database checkpoints too.
        """
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; `durable`: the COMMIT
    syncs the WAL (synchronous=FULL for this transaction only)."""

    def __init__(self, db: sqlite3.Connection, *, durable: bool = False) -> None:
        self.db = db
        self.durable = durable

    def __enter__(self) -> None:
        if self.durable:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._restore()

    def _restore(self) -> None:
        if self.durable:
            self.db.execute("PRAGMA synchronous=NORMAL")


_SET_COLUMNS = (
    "id, tenant, source, status, digest, received, decided, base_set_id, summary, report_path"
)


def _set_row(row: tuple) -> SetRow:
    values = list(row)
    values[8] = json.loads(values[8]) if values[8] else None
    return SetRow(*values)


def _texts(frame: pl.DataFrame, render: pl.Expr) -> Iterator[list[str]]:
    """Each row's JSON text, `_CHUNK` rows at a time."""
    for start in range(0, frame.height, _CHUNK):
        yield frame.slice(start, _CHUNK).select(render).to_series().to_list()


def _values_sql(constants: str, rows: int) -> str:
    """INSERT of `rows` events with the given constant columns, one text parameter each."""
    one = f"({constants}, ?)"
    return "INSERT INTO events (type, tenant, set_id, created, data) VALUES " + ",".join(
        [one] * rows
    )


def _literal(value: str | None) -> str:
    """`value` as an SQL literal (type, tenant, set id, time: ingestd's own strings)."""
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _prefetch(chunks: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Build the next chunks in a second thread while the caller inserts this one."""
    out: queue.Queue[object] = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                out.put(chunk)
        except BaseException as exc:
            failure.append(exc)
        finally:
            out.put(done)

    worker = threading.Thread(target=produce, name="ingestd-event-json", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not done:
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        worker.join()
    if failure:
        raise failure[0]
