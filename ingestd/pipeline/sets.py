"""A set's folder: `sets/<tenant>/<set_id>/` with `raw/` (the files as received) and reports.

Claiming copies (from the command line) or moves (from the inbox) the files
into a hidden folder, then renames it into place, so a set folder is always
whole; its digest lets an identical re-delivery be recognised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ingestd.config import validate_tenant_id
from ingestd.errors import UsageError
from ingestd.fsutil import fsync_path
from ingestd.ids import new_ulid

SETS = "sets"
RAW = "raw"
COPYING = ".copy-"
MOVING = ".claim-"


def set_dir(state_dir: Path, tenant: str, set_id: str) -> Path:
    """The folder of one set."""
    return state_dir / SETS / tenant / set_id


def raw_input(folder: Path) -> Path:
    """What to validate in a set folder: its raw/ folder, or the single zip inside it."""
    raw = folder / RAW
    files = [p for p in raw.iterdir() if p.is_file()] if raw.is_dir() else []
    if len(files) == 1 and files[0].suffix.lower() == ".zip":
        return files[0]
    return raw


def digest(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the files' names (relative to root) and bytes, in name order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        _digest_file(h, path, root)
    return h.hexdigest()


def _digest_file(h: Any, path: Path, root: Path) -> None:
    h.update(path.relative_to(root).as_posix().encode() + b"\0")
    h.update(path.stat().st_size.to_bytes(8, "big"))
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def claim_copy(state_dir: Path, tenant: str, source: Path) -> tuple[str, Path, str]:
    """Copy a set (a folder or a zip) into a new set folder: (set_id, folder, digest)."""
    validate_tenant_id(tenant)
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory")
    set_id = new_ulid()
    final = set_dir(state_dir, tenant, set_id)
    temp = final.parent / f"{COPYING}{set_id}"  # the source stays: a crash here loses nothing
    raw = temp / RAW
    raw.mkdir(parents=True)
    files = [p for p in sorted(source.iterdir()) if p.is_file()] if source.is_dir() else []
    dirs = [p for p in source.iterdir() if p.is_dir()] if source.is_dir() else []
    # No fsync of the copies: the source stays where it is, and the state that matters
    # (snapshot, events) is made durable by the commit.
    if source.is_dir() and not dirs:  # each copy is hashed while the next is made
        h = hashlib.sha256()
        with ThreadPoolExecutor(1, thread_name_prefix="ingestd-digest") as hasher:
            hashed = [hasher.submit(_digest_file, h, _copy(p, raw), raw) for p in files]
        for done in hashed:
            done.result()
        sha = h.hexdigest()
    else:
        for p in files:
            shutil.copy2(p, raw / p.name)
        for d in dirs:  # a nested folder is reported by the validator, not lost here
            shutil.copytree(d, raw / d.name)
        if not source.is_dir():
            shutil.copy2(source, raw / source.name)
        sha = digest([p for p in raw.rglob("*") if p.is_file()], raw)
    os.replace(temp, final)
    fsync_path(final.parent)
    return set_id, final, sha


def _copy(path: Path, folder: Path) -> Path:
    """Copy `path` into `folder` (data and times); the copy's path."""
    return Path(shutil.copy2(path, folder / path.name))


def claim_move(state_dir: Path, tenant: str, files: list[Path]) -> tuple[str, Path, str]:
    """Move files or folders (of one filesystem, e.g. from the inbox) into a new set folder."""
    validate_tenant_id(tenant)
    set_id = new_ulid()
    final = set_dir(state_dir, tenant, set_id)
    temp = final.parent / f"{MOVING}{set_id}"  # holds received files: never deleted
    raw = temp / RAW
    raw.mkdir(parents=True)
    for p in files:
        os.replace(p, raw / p.name)
    moved = [raw / p.name for p in files]
    sha = digest(
        [q for p in moved for q in ([p] if p.is_file() else p.rglob("*")) if q.is_file()], raw
    )
    os.replace(temp, final)
    fsync_path(final.parent)
    return set_id, final, sha


def orphan_sets(state_dir: Path, known: set[str]) -> list[tuple[str, str, Path]]:
    """Set folders the database does not know (a crash between claim and record).

    Half-made copies are removed (their source still exists); half-made moves are
    completed as sets of their own, since they hold the only copy of what arrived.
    """
    found = []
    root = state_dir / SETS
    if not root.is_dir():
        return found
    for tenant_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in sorted(p for p in tenant_dir.iterdir() if p.is_dir()):
            if folder.name.startswith(COPYING):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if folder.name.startswith(MOVING):
                target = folder.with_name(folder.name.removeprefix(MOVING))
                os.replace(folder, target)
                folder = target
            if folder.name.startswith(".") or folder.name in known:
                continue
            if (folder / RAW).is_dir():
                found.append((tenant_dir.name, folder.name, folder))
    return found


@contextlib.contextmanager
def tenant_lock(state_dir: Path, tenant: str) -> Iterator[None]:
    """An exclusive lock on a tenant's sets across processes (flock; released on exit or
    death, so a killed process never leaves it held)."""
    folder = state_dir / SETS / tenant
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
