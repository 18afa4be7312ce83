"""Snapshots: a tenant's accepted state, one Parquet file per entity, per accepted set.

`snapshots/<tenant>/<set_id>/<entity>.parquet`, written to a hidden temp folder,
fsynced, then renamed into place, so a snapshot folder is always complete. The
last `retention` snapshots are kept, so any two of them can be diffed again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl

from ingestd.fsutil import fsync_path
from ingestd.oneroster import spec

SNAPSHOTS = "snapshots"


def snapshot_dir(state_dir: Path, tenant: str, set_id: str) -> Path:
    """Where the snapshot of `set_id` lives."""
    return state_dir / SNAPSHOTS / tenant / set_id


def write_snapshot(
    state_dir: Path, tenant: str, set_id: str, tables: dict[str, pl.DataFrame]
) -> Path:
    """Write the tables durably and atomically; an existing snapshot of the same set is replaced."""
    final = snapshot_dir(state_dir, tenant, set_id)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    temp = parent / f".tmp-{set_id}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    for entity, frame in tables.items():
        path = temp / f"{entity}.parquet"
        frame.write_parquet(path, compression="lz4", statistics=False)  # fastest to read back
        fsync_path(path)
    fsync_path(temp)
    if final.exists():  # a crashed earlier attempt of this same set
        shutil.rmtree(final)
    os.replace(temp, final)
    fsync_path(parent)
    return final


def read_snapshot(state_dir: Path, tenant: str, set_id: str | None) -> dict[str, pl.DataFrame]:
    """The tables of a snapshot (empty before the tenant's first accepted set)."""
    if set_id is None:
        return {}
    folder = snapshot_dir(state_dir, tenant, set_id)
    return {
        e: pl.read_parquet(folder / f"{e}.parquet")
        for e in spec.ENTITY_NAMES
        if (folder / f"{e}.parquet").exists()
    }


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
