"""Snapshots: a tenant's accepted state, per entity, per accepted set.

`snapshots/<tenant>/<set_id>/`, written to a hidden temp folder, fsynced, then
renamed into place, so a snapshot folder is always complete. The last
`retention` snapshots are kept, so any two of them can be diffed again.

An entity is stored whole (`<entity>.parquet`) or, when few of its rows differ
from an earlier whole file, as that file plus the difference:
`<entity>.base.parquet` is a hard link to the earlier file (no copy, and the
folder stays self-contained: pruning another snapshot never breaks this one),
`<entity>.delta.parquet` holds the rows not found in it, and
`<entity>.order.parquet` gives, row by row, where each row of the state comes
from (a row of the base, or base rows + a row of the delta). Reading gives back
exactly the state that was written, in its order. A day of ordinary changes to
a large district then writes 2% of the rows instead of all of them; once more
than `DELTA_MAX_SHARE` of the rows differ from the base, the entity is written
whole again and becomes the next base.

Each file may also hold the rows' fingerprints (columns `__h1`, `__h2`), so the
next diff need not hash the old rows again; `fingerprints.json` beside them
names the columns each file's fingerprints cover and the hash probe of the
polars that made them. Files without them (older ingestd) are read as they
are; their fingerprints are computed when needed.

`<entity>.lines.parquet` holds, row for row with the state, the prints of the line
each row was read from (`oneroster/lineprints.py`; null where none), and
`lines.json` the seeds of each entity's prints and the entity files of the set:
the next set is then read against this state (`oneroster/carry.py`), and only
its changed lines are parsed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from ingestd.fsutil import fsync_path
from ingestd.oneroster import spec
from ingestd.oneroster.lineprints import L1, L2
from ingestd.pipeline.carry import StateAssembly
from ingestd.pipeline.diff import H1, H2, Fingerprints, fingerprint_probe

SNAPSHOTS = "snapshots"
FINGERPRINTS = "fingerprints.json"  # {"probe": ..., "columns": {entity: [column, ...]}}
LINES = "lines.json"  # {"files": [entity, ...], "seeds": {entity: [seed, seed]}}
DELTA_MAX_SHARE = 0.2  # above this share of rows not in the base, an entity is written whole
ORDER = "__src"
Prints = Fingerprints | Callable[[], Fingerprints | None] | None


class SnapshotError(Exception):
    """A snapshot folder that cannot be read back as it was written."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the rows of one loaded entity are stored: the whole file they come from, and
    (for an entity stored as a difference) which of them are rows of that file."""

    base: Path  # a whole file (or a hard link to one)
    base_rows: int
    columns: tuple[str, ...]  # the file's columns, fingerprints included
    printed: tuple[str, ...] | None  # the columns its fingerprints cover, if trusted
    base_row: pl.Series | None  # per loaded row, its row in `base` or null; None: the same row

    def rows_in_base(self, from_old: pl.Series) -> pl.Series:
        """Per new row, the row of `base` it is identical to (null: none), given per new
        row the loaded row it is identical to."""
        return from_old if self.base_row is None else self.base_row.gather(from_old)


@dataclass(frozen=True, slots=True)
class Reuse:
    """What a new entity file may take from an earlier whole file: per row, its row there."""

    origin: Origin
    base_row: pl.Series  # UInt32, null: not in the base


@dataclass(slots=True)
class Snapshot:
    """A loaded snapshot: tables, the fingerprints stored with them, where each entity's
    rows are stored (for the next snapshot to reuse), and the rows' line prints."""

    tables: dict[str, pl.DataFrame]
    fingerprints: dict[str, Fingerprints]
    origins: dict[str, Origin]
    lines: dict[str, pl.DataFrame] = field(default_factory=dict)  # entity -> L1, L2 per row
    seeds: dict[str, tuple[int, int]] = field(default_factory=dict)  # what they are seeded with
    files: tuple[str, ...] | None = None  # the entity files of the set that made it


def snapshot_dir(state_dir: Path, tenant: str, set_id: str) -> Path:
    """Where the snapshot of `set_id` lives."""
    return state_dir / SNAPSHOTS / tenant / set_id


def write_snapshot(
    state_dir: Path,
    tenant: str,
    set_id: str,
    tables: dict[str, pl.DataFrame],
    fingerprints: dict[str, Fingerprints | None] | None = None,
) -> Path:
    """Write the tables (with their rows' fingerprints, when given) durably and atomically;
    an existing snapshot of the same set is replaced."""
    writer = SnapshotWriter(state_dir, tenant, set_id)
    try:
        for entity, frame in tables.items():
            writer.add(entity, frame, (fingerprints or {}).get(entity))
        return writer.finish()
    finally:
        writer.abort()


class SnapshotWriter:
    """A snapshot written entity by entity, as the diffs come, in a thread of its own (polars
    and the disk work while the caller goes on); `finish` puts it in place, `abort` drops it.

    Files go to a hidden temp folder, each fsynced; `finish` waits for them, fsyncs the
    folder and renames it into place, so a snapshot folder is always complete.
    """

    def __init__(self, state_dir: Path, tenant: str, set_id: str) -> None:
        self.final = snapshot_dir(state_dir, tenant, set_id)
        self.temp = self.final.parent / f".tmp-{set_id}"
        self.busy = 0.0  # seconds the thread spent writing
        self._printed: dict[str, list[str]] = {}  # entity -> columns of its fingerprints
        self._lines: dict[str, Any] | None = None  # what lines.json says
        self._todo: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingestd-snapshot", daemon=True)
        self._thread.start()

    def add(
        self,
        entity: str,
        frame: pl.DataFrame,
        fingerprints: Prints = None,
        reuse: Reuse | None = None,
        lines: pl.DataFrame | None = None,
    ) -> None:
        """Write `frame` as the entity's file; `fingerprints` (or a function giving them,
        called in the writer's thread) are stored with it. With `reuse`, only the rows not
        in the earlier file are written, if they are few (see the module docstring).
        `lines`: the rows' line prints (L1, L2), row for row."""
        self._todo.put(lambda: self._write(entity, frame, fingerprints, reuse, lines))

    def add_assembled(
        self, entity: str, assembly: StateAssembly, origin: Origin | None = None
    ) -> None:
        """Write the state `assembly` builds from the snapshot (`origin`: where the
        snapshot's rows are stored) and the rows read today; only the rows not in the
        earlier file are written when they are few."""
        self._todo.put(lambda: self._write_assembled(entity, assembly, origin))

    def describe_lines(self, files: tuple[str, ...], seeds: dict[str, tuple[int, int]]) -> None:
        """Record the entity files of the set and the seeds of each entity's line prints."""
        self._lines = {"files": list(files), "seeds": {e: list(s) for e, s in seeds.items()}}

    def finish(self) -> Path:
        """Wait for every file, then put the snapshot in place (raises what writing raised)."""
        self._close()
        if self._error is not None:
            raise self._error
        started = time.perf_counter()
        parent = self.final.parent
        if self._printed:
            about = {"probe": _probe(), "columns": self._printed}
            path = self.temp / FINGERPRINTS
            path.write_text(json.dumps(about, sort_keys=True) + "\n", encoding="utf-8")
            fsync_path(path)
        if self._lines is not None:
            path = self.temp / LINES
            path.write_text(json.dumps(self._lines, sort_keys=True) + "\n", encoding="utf-8")
            fsync_path(path)
        fsync_path(self.temp)
        if self.final.exists():  # a crashed earlier attempt of this same set
            shutil.rmtree(self.final)
        os.replace(self.temp, self.final)
        fsync_path(parent)
        self.busy += time.perf_counter() - started
        return self.final

    def abort(self) -> None:
        """Stop (after the file being written) and remove what was written; no-op once
        `finish` put the snapshot in place."""
        self._close()
        if self.temp.exists():
            shutil.rmtree(self.temp, ignore_errors=True)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._todo.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            started = time.perf_counter()
            self.final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp.mkdir()
            self.busy += time.perf_counter() - started
            while (work := self._todo.get()) is not None:
                started = time.perf_counter()
                work()
                self.busy += time.perf_counter() - started
        except BaseException as exc:  # raised by finish()
            self._error = exc
            while self._todo.get() is not None:  # let add() and _close() go on
                pass

    def _write(
        self,
        entity: str,
        frame: pl.DataFrame,
        fingerprints: Prints,
        reuse: Reuse | None,
        lines: pl.DataFrame | None,
    ) -> None:
        if lines is not None and lines.height == frame.height:
            _write_parquet(lines.select(L1, L2), self.temp / f"{entity}.lines.parquet")
        prints = fingerprints() if callable(fingerprints) else fingerprints
        printed: tuple[str, ...] | None = None
        if prints is not None and prints.hashes.height == frame.height:
            frame = pl.concat([frame, prints.hashes.select(H1, H2)], how="horizontal")
            printed = prints.columns
            self._printed[entity] = list(printed)
        if reuse is not None and self._write_difference(entity, frame, printed, reuse):
            return
        _write_parquet(frame, self.temp / f"{entity}.parquet")

    def _write_difference(
        self, entity: str, frame: pl.DataFrame, printed: tuple[str, ...] | None, reuse: Reuse
    ) -> bool:
        """Store `frame` as its base plus the rows not in it; False (nothing written) when
        that does not apply: fingerprints of other columns, other columns, too many rows
        not in the base, or a file system without hard links."""
        origin, base_row = reuse.origin, reuse.base_row
        if (
            printed is None
            or origin.printed != printed
            or origin.columns != tuple(frame.columns)
            or base_row.len() != frame.height
            or base_row.null_count() > DELTA_MAX_SHARE * frame.height
            or origin.base_rows + frame.height >= 2**32
        ):
            return False
        return self._write_linked(entity, origin, base_row, lambda fresh: frame.filter(fresh))

    def _write_linked(
        self,
        entity: str,
        origin: Origin,
        base_row: pl.Series,
        fresh_rows: Callable[[pl.Series], pl.DataFrame],
    ) -> bool:
        """The entity as a hard link to its base, the rows not in it (`fresh_rows` of the
        mask of those rows) and the order; False (nothing written) without hard links."""
        try:
            os.link(origin.base, self.temp / f"{entity}.base.parquet")
        except OSError:
            return False
        fresh = base_row.is_null()
        order = pl.select(
            pl.when(fresh)
            .then(origin.base_rows - 1 + fresh.cast(pl.Int64).cum_sum())
            .otherwise(base_row)
            .cast(pl.UInt32)
            .alias(ORDER)
        )
        _write_parquet(fresh_rows(fresh), self.temp / f"{entity}.delta.parquet")
        _write_parquet(order, self.temp / f"{entity}.order.parquet")
        return True

    def _write_assembled(self, entity: str, assembly: StateAssembly, origin: Origin | None) -> None:
        _write_parquet(assembly.lines.select(L1, L2), self.temp / f"{entity}.lines.parquet")
        pieces, printed = assembly.pieces()
        if printed is not None:
            self._printed[entity] = list(printed)
        if (
            origin is not None
            and printed is not None
            and origin.printed == printed
            and origin.columns == tuple(pieces.columns)
            and origin.base_rows + assembly.height < 2**32
        ):
            base_row = origin.rows_in_base(assembly.old_row)
            if base_row.null_count() <= DELTA_MAX_SHARE * assembly.height and self._write_linked(
                entity, origin, base_row, lambda fresh: pieces[assembly.source(fresh)]
            ):
                return
        whole = pl.concat([pieces], rechunk=True)[assembly.source()]
        _write_parquet(whole, self.temp / f"{entity}.parquet")


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    # lz4, no statistics: the fastest to write and to read back whole
    frame.write_parquet(path, compression="lz4", statistics=False)
    fsync_path(path)


def read_snapshot(state_dir: Path, tenant: str, set_id: str | None) -> dict[str, pl.DataFrame]:
    """The tables of a snapshot (empty before the tenant's first accepted set)."""
    return load_snapshot(state_dir, tenant, set_id)[0]


def load_snapshot(
    state_dir: Path, tenant: str, set_id: str | None
) -> tuple[dict[str, pl.DataFrame], dict[str, Fingerprints]]:
    """The tables of a snapshot, and the fingerprints stored with them that this polars
    still computes the same way."""
    snapshot = open_snapshot(state_dir, tenant, set_id)
    return snapshot.tables, snapshot.fingerprints


def open_snapshot(state_dir: Path, tenant: str, set_id: str | None) -> Snapshot:
    """A snapshot's tables, trusted fingerprints and origins (empty before the tenant's
    first accepted set)."""
    snapshot = Snapshot({}, {}, {})
    for _ in load_snapshot_entities(state_dir, tenant, set_id, snapshot):
        pass
    return snapshot


def load_snapshot_entities(
    state_dir: Path, tenant: str, set_id: str | None, snapshot: Snapshot
) -> Iterator[str]:
    """Fill `snapshot` entity by entity (in spec order), yielding each entity's name once
    it is in. Before the first entity, `snapshot.files` and `snapshot.seeds` (the entities
    whose rows have line prints, as lines.json says) are set."""
    if set_id is None:
        return
    folder = snapshot_dir(state_dir, tenant, set_id)
    printed = _fingerprint_columns(folder)
    files, seeds = _line_seeds(folder)
    snapshot.files = files
    snapshot.seeds = dict(seeds)
    for entity in spec.ENTITY_NAMES:
        loaded = _read_entity(folder, entity)
        if loaded is None:
            continue
        frame, origin = loaded
        trusted = printed.get(entity) if H1 in frame.columns else None
        if trusted is not None:
            snapshot.fingerprints[entity] = Fingerprints(trusted, frame.select(H1, H2))
        snapshot.origins[entity] = replace(origin, printed=trusted)
        snapshot.tables[entity] = frame.drop(H1, H2, strict=False)
        lines = folder / f"{entity}.lines.parquet"
        prints = pl.read_parquet(lines) if entity in seeds and lines.exists() else None
        if prints is not None and prints.height == frame.height and prints.columns == [L1, L2]:
            snapshot.lines[entity] = prints
        yield entity
    for entity in list(snapshot.seeds):
        if entity not in snapshot.lines:
            del snapshot.seeds[entity]


def _line_seeds(folder: Path) -> tuple[tuple[str, ...] | None, dict[str, tuple[int, int]]]:
    """What lines.json says: the entity files of the set, and each entity's seeds."""
    try:
        about = json.loads((folder / LINES).read_text(encoding="utf-8"))
        files = tuple(str(e) for e in about["files"])
        seeds = {str(e): (int(s[0]), int(s[1])) for e, s in about["seeds"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None, {}
    return files, seeds


def _read_entity(folder: Path, entity: str) -> tuple[pl.DataFrame, Origin] | None:
    """One entity's stored rows (fingerprint columns included) and where they come from."""
    whole = folder / f"{entity}.parquet"
    if whole.exists():
        frame = pl.read_parquet(whole)
        return frame, Origin(whole, frame.height, tuple(frame.columns), None, None)
    delta = folder / f"{entity}.delta.parquet"
    if not delta.exists():
        return None
    base_path = folder / f"{entity}.base.parquet"
    try:
        base = pl.read_parquet(base_path)
        rows = pl.read_parquet(delta)
        order = pl.read_parquet(folder / f"{entity}.order.parquet")[ORDER]
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise SnapshotError(
            f"{folder}: {entity} cannot be read back ({exc.__class__.__name__})"
        ) from exc
    if (
        base.schema != rows.schema
        or order.dtype != pl.UInt32
        or order.null_count()
        or (order.len() and order.max() >= base.height + rows.height)  # type: ignore[operator]
    ):
        raise SnapshotError(f"{folder}: {entity}'s base, rows and order do not fit together")
    frame = pl.concat([base, rows], rechunk=True)[order]  # one chunk: gathers twice as fast
    in_base = pl.select(pl.when(order < base.height).then(order)).to_series()
    return frame, Origin(base_path, base.height, tuple(base.columns), None, in_base)


def _fingerprint_columns(folder: Path) -> dict[str, tuple[str, ...]]:
    """entity -> the columns its stored fingerprints cover, if this polars made them."""
    try:
        about = json.loads((folder / FINGERPRINTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(about, dict) or about.get("probe") != _probe():
        return {}
    columns = about.get("columns")
    if not isinstance(columns, dict):
        return {}
    return {
        e: tuple(c)
        for e, c in columns.items()
        if isinstance(c, list) and all(isinstance(x, str) for x in c)
    }


@cache
def _probe() -> str:
    return fingerprint_probe()


def prune_snapshots(state_dir: Path, tenant: str, keep: set[str], retention: int) -> list[str]:
    """Remove all but the newest `retention` snapshots (never one in `keep`); returns removed."""
    parent = state_dir / SNAPSHOTS / tenant
    if not parent.is_dir():
        return []
    names = sorted(
        (p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
        reverse=True,
    )
    removed = []
    for name in names[max(retention, 1) :]:
        if name in keep:
            continue
        shutil.rmtree(parent / name, ignore_errors=True)
        removed.append(name)
    return removed
