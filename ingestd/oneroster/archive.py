"""Where a set's files come from: a directory or a zip, checked for safety before anything is read.

A zip is judged from its central directory (paths, symlinks, encryption,
nested archives, declared sizes and ratios) before any entry is expanded, and
each entry is read with a cap of one byte over its declared size.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.oneroster import spec
from ingestd.oneroster.report import Report, excerpt

TEMP_SUFFIXES = (".filepart", ".part", ".tmp")
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz", ".zst")
_RATIO_MIN_BYTES = 1 << 20  # tiny entries compress absurdly well and harm nobody


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds on what a zip may expand to, checked from its directory before anything is read."""

    max_total_bytes: int = 2 << 30
    max_ratio: float = 100.0
    max_entries: int = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a set: its name inside the set and how to load its bytes."""

    name: str  # path inside the set, for messages
    load: Callable[[], bytes]
    path: Path | None = None  # the file itself, when the set is a folder


class NotAZip(Exception):
    """The path is a file but not a readable zip archive."""


def classify(name: str) -> tuple[str, str | None, bool]:
    """Kind of a file name in a set: (kind, entity, exact) with kind one of
    entity, manifest, gradebook, temp, unknown; `exact` False for tolerated variants."""
    base = PurePosixPath(name).name
    if base.startswith(".") or base.lower().endswith(TEMP_SUFFIXES):
        return "temp", None, True
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if ext and ext.lower() != "csv":
        return "unknown", None, True
    exact = ext == "csv"
    for entity in spec.ENTITY_NAMES:
        if stem == entity:
            return "entity", entity, exact
        if stem.lower() == entity.lower():
            return "entity", entity, False
    if stem.lower() == "manifest":
        return "manifest", None, exact and stem == "manifest"
    for g in spec.GRADEBOOK_NAMES:
        if stem.lower() == g.lower():
            return "gradebook", g, exact and stem == g
    return "unknown", None, True


def dir_entries(path: Path, report: Report) -> Iterator[Entry]:
    """The files of a set folder (or of its single subfolder, with a warning)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(classify(p.name)[0] in ("entity", "manifest") for p in files) and len(dirs) == 1:
        report.warn(
            "nested_folder",
            f"the files were found inside the folder {dirs[0].name}/",
            "put the CSV files at the top of the set",
        )
        yield from (
            Entry(f"{dirs[0].name}/{e.name}", e.load, e.path) for e in dir_entries(dirs[0], report)
        )
        return
    for p in files:
        yield Entry(p.name, p.read_bytes, p)


def zip_entries(path: Path, report: Report, limits: ReadLimits) -> list[Entry]:
    """Check the zip's directory (paths, nesting, sizes) before reading any entry."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise NotAZip from exc
    infos = [i for i in zf.infolist() if not i.is_dir()]
    name = path.name
    if len(infos) > limits.max_entries:
        report.reject(
            "zip_too_many_entries",
            f"{name} holds {len(infos)} files (limit {limits.max_entries})",
            "export only the OneRoster files",
            file=name,
        )
        return []
    total = 0
    for info in infos:
        entry = info.filename.replace("\\", "/")
        parts = PurePosixPath(entry).parts
        if entry.startswith("/") or (len(entry) > 1 and entry[1] == ":") or ".." in parts:
            report.reject(
                "zip_unsafe_path",
                f"{name} holds an entry with an unsafe path ({excerpt(entry)!r})",
                "export the files with plain relative names at the root of the zip",
                file=name,
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            report.reject(
                "zip_symlink",
                f"{name} holds a symbolic link ({excerpt(entry)!r})",
                "export regular files only",
                file=name,
            )
        if info.flag_bits & 0x1:
            report.reject(
                "zip_encrypted",
                f"{name} holds an encrypted entry ({excerpt(entry)!r})",
                "export the zip without a password",
                file=name,
            )
        if entry.lower().endswith(ARCHIVE_SUFFIXES):
            report.reject(
                "zip_nested_archive",
                f"{name} holds another archive ({excerpt(entry)!r})",
                "put the CSV files directly in one zip",
                file=name,
            )
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
            report.reject(
                "zip_bomb",
                f"{name}: entry {excerpt(entry)!r} expands {ratio:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1)",
                "this does not look like a roster export; check what was uploaded",
                file=name,
            )
    if total > limits.max_total_bytes:
        report.reject(
            "zip_too_large",
            f"{name} expands to {total} bytes (limit {limits.max_total_bytes})",
            "split the export or raise [ingest] max_zip_total_bytes",
            file=name,
        )
    if report.rejected:
        return []
    roots = {
        PurePosixPath(i.filename).parts[0]
        for i in infos
        if len(PurePosixPath(i.filename).parts) > 1
    }
    at_root = [i for i in infos if len(PurePosixPath(i.filename).parts) == 1]
    prefix = ""
    if not at_root and len(roots) == 1:
        prefix = f"{next(iter(roots))}/"
        report.warn(
            "nested_folder",
            f"the files of {name} are inside the folder {prefix}",
            "zip the CSV files themselves, not the folder holding them",
            file=name,
        )
    entries = []
    for info in infos:
        if not info.filename.startswith(prefix) or "/" in info.filename[len(prefix) :]:
            report.warn(
                "unknown_file",
                f"{name}: entry {excerpt(info.filename)!r} is in a subfolder and was ignored",
                "put the CSV files at the root of the zip",
                file=name,
            )
            continue
        entries.append(Entry(info.filename, _zip_loader(zf, info, name, report)))
    return entries


def _zip_loader(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, report: Report
) -> Callable[[], bytes]:
    def load() -> bytes:
        # Read at most one byte more than the directory declares: a lying header is a bomb.
        try:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
            report.reject(
                "zip_corrupt",
                f"{name}: entry {excerpt(info.filename)!r} cannot be decompressed",
                "upload the zip again; it is damaged or uses an unsupported compression",
                file=name,
            )
            return b""
        if len(data) > info.file_size:
            report.reject(
                "zip_bomb",
                f"{name}: entry {excerpt(info.filename)!r} is larger than its header says",
                "this does not look like a roster export; check what was uploaded",
                file=name,
            )
            return b""
        return data

    return load
