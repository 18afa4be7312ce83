"""Snapshots: a tenant's accepted state, one Parquet file per entity, per accepted set.

`snapshots/<tenant>/<set_id>/<entity>.parquet`, written to a hidden temp folder,
fsynced, then renamed into place, so a snapshot folder is always complete. The
last `retention` snapshots are kept, so any two of them can be diffed again.

Each file may also hold the rows' fingerprints (columns `__h1`, `__h2`; the
file's metadata names the columns they cover and the hash probe of the polars
that made them), so the next diff need not hash the old rows again. Files
without them (older ingestd) are read as they are; their fingerprints are
computed when needed.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import cache
from pathlib import Path

import polars as pl

from ingestd.fsutil import fsync_path
from ingestd.oneroster import spec
from ingestd.pipeline.diff import H1, H2, Fingerprints, fingerprint_probe

SNAPSHOTS = "snapshots"
_FINGERPRINTS = "ingestd.fingerprints"  # parquet metadata key


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
    final = snapshot_dir(state_dir, tenant, set_id)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    temp = parent / f".tmp-{set_id}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    for entity, frame in tables.items():
        path = temp / f"{entity}.parquet"
        prints = (fingerprints or {}).get(entity)
        metadata = None
        if prints is not None and prints.hashes.height == frame.height:
            frame = pl.concat([frame, prints.hashes.select(H1, H2)], how="horizontal")
            metadata = {_FINGERPRINTS: json.dumps({"columns": prints.columns, "probe": _probe()})}
        # lz4, no statistics: the fastest to write and to read back whole
        frame.write_parquet(path, compression="lz4", statistics=False, metadata=metadata)
        fsync_path(path)
    fsync_path(temp)
    if final.exists():  # a crashed earlier attempt of this same set
        shutil.rmtree(final)
    os.replace(temp, final)
    fsync_path(parent)
    return final


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
    for entity in spec.ENTITY_NAMES:
        path = folder / f"{entity}.parquet"
        if not path.exists():
            continue
        frame = pl.read_parquet(path)
        if H1 in frame.columns:
            meta = json.loads(pl.read_parquet_metadata(path).get(_FINGERPRINTS, "{}"))
            if meta.get("probe") == _probe() and isinstance(meta.get("columns"), list):
                prints[entity] = Fingerprints(tuple(meta["columns"]), frame.select(H1, H2))
            frame = frame.drop(H1, H2, strict=False)
        tables[entity] = frame
    return tables, prints


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
