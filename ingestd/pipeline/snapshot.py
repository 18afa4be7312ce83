"""Snapshots: a tenant's accepted state, one Parquet file per entity, per accepted set.

`snapshots/<tenant>/<set_id>/<entity>.parquet`, written to a hidden temp folder,
fsynced, then renamed into place, so a snapshot folder is always complete. The
last `retention` snapshots are kept, so any two of them can be diffed again.

Each file may also hold the rows' fingerprints (columns `__h1`, `__h2`), so the
next diff need not hash the old rows again; `fingerprints.json` beside them
names the columns each file's fingerprints cover and the hash probe of the
polars that made them. Files without them (older ingestd) are read as they
are; their fingerprints are computed when needed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import polars as pl

from ingestd.fsutil import fsync_path
from ingestd.oneroster import spec
from ingestd.pipeline.diff import H1, H2, Fingerprints, fingerprint_probe

SNAPSHOTS = "snapshots"
FINGERPRINTS = "fingerprints.json"  # {"probe": ..., "columns": {entity: [column, ...]}}
Prints = Fingerprints | Callable[[], Fingerprints | None] | None


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
        self._todo: queue.Queue[tuple[str, pl.DataFrame, Prints] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingestd-snapshot", daemon=True)
        self._thread.start()

    def add(self, entity: str, frame: pl.DataFrame, fingerprints: Prints = None) -> None:
        """Write `frame` as the entity's file; `fingerprints` (or a function giving them,
        called in the writer's thread) are stored with it."""
        self._todo.put((entity, frame, fingerprints))

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
            while (item := self._todo.get()) is not None:
                started = time.perf_counter()
                self._write(*item)
                self.busy += time.perf_counter() - started
        except BaseException as exc:  # raised by finish()
            self._error = exc
            while self._todo.get() is not None:  # let add() and _close() go on
                pass

    def _write(self, entity: str, frame: pl.DataFrame, fingerprints: Prints) -> None:
        path = self.temp / f"{entity}.parquet"
        prints = fingerprints() if callable(fingerprints) else fingerprints
        if prints is not None and prints.hashes.height == frame.height:
            frame = pl.concat([frame, prints.hashes.select(H1, H2)], how="horizontal")
            self._printed[entity] = list(prints.columns)
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
    tables: dict[str, pl.DataFrame] = {}
    prints: dict[str, Fingerprints] = {}
    if set_id is None:
        return tables, prints
    folder = snapshot_dir(state_dir, tenant, set_id)
    printed = _fingerprint_columns(folder)
    for entity in spec.ENTITY_NAMES:
        path = folder / f"{entity}.parquet"
        if not path.exists():
            continue
        frame = pl.read_parquet(path)
        if H1 in frame.columns:
            if entity in printed:
                prints[entity] = Fingerprints(printed[entity], frame.select(H1, H2))
            frame = frame.drop(H1, H2, strict=False)
        tables[entity] = frame
    return tables, prints


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
