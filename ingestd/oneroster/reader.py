"""Read a OneRoster set (a directory or a zip) into polars tables of strings, with line numbers.

`archive` finds the files safely, `csvfile` parses each one; this module
matches file names to entities and reads the manifest.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.archive import (
    Entry,
    NotAZip,
    ReadLimits,
    classify,
    dir_entries,
    zip_entries,
)
from ingestd.oneroster.csvfile import BOM, LINE, RawTable, decode, read_table
from ingestd.oneroster.report import FileSummary, Report

__all__ = ["LINE", "RawSet", "RawTable", "ReadLimits", "read_set"]


@dataclass(slots=True)
class RawSet:
    """What the reader found in a set: tables by entity, the manifest, and everything else."""

    source: str
    tables: dict[str, RawTable] = field(default_factory=dict)
    manifest: dict[str, tuple[str, int]] | None = None  # key -> (value, line)
    manifest_name: str | None = None
    other_files: list[str] = field(default_factory=list)  # kept, not part of rostering
    unreadable: set[str] = field(default_factory=set)  # entities whose file was rejected
    prior: dict[str, pl.DataFrame] | None = None  # the last accepted state, if read against it
    prior_entities: tuple[str, ...] | None = None  # the files of the set that made `prior`


TableReader = Callable[[Entry, str, Report], "RawTable | None"]  # entry, entity, report


def read_set(
    path: Path,
    report: Report,
    limits: ReadLimits | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    prints: bool = False,
    read: TableReader | None = None,
) -> RawSet:
    """Read the set at `path` (directory or zip); problems go to `report`. `prints`: with
    the line prints of every file; `read` reads each entity file instead of `read_table`
    (entry, entity, report)."""
    limits = limits or ReadLimits()
    if read is None:

        def read(entry: Entry, entity: str, report: Report) -> RawTable | None:
            return read_table(entry.load(), entity, entry.name, report, prints=prints)

    raw = RawSet(source=str(path))
    if path.is_dir():
        entries = list(dir_entries(path, report))
    else:
        try:
            entries = zip_entries(path, report, limits)
        except NotAZip:
            report.reject(
                "not_a_set",
                f"{path.name} is neither a directory nor a zip archive",
                "give the folder holding the CSV files, or the zip the SIS exported",
            )
            return raw
        if report.rejected:
            return raw
    seen: dict[str, str] = {}
    for entry in entries:
        kind, entity, exact = classify(entry.name)
        if kind == "temp":
            report.warn(
                "temp_file_ignored",
                f"{entry.name} looks like an unfinished upload (temp name) and was ignored",
                "let the upload finish; the client renames it when done",
                file=entry.name,
            )
            continue
        if kind in ("unknown", "gradebook"):
            raw.other_files.append(entry.name)
            if kind == "unknown":
                report.warn(
                    "unknown_file",
                    f"{entry.name} is not a OneRoster rostering file; kept, not processed",
                    "remove it from the export if it does not belong there",
                    file=entry.name,
                )
            continue
        key = entity or "manifest"
        if key in seen:
            report.reject(
                "ambiguous_file",
                f"both {seen[key]} and {entry.name} would be read as {key}",
                "send one file per entity, named exactly as OneRoster says",
                file=entry.name,
            )
            continue
        seen[key] = entry.name
        if not exact:
            proper = f"{entity}.csv" if entity else spec.MANIFEST_FILE
            report.warn(
                "file_name_variant",
                f"{entry.name} was read as {proper}",
                f"name the file exactly {proper} (names are case-sensitive)",
                file=entry.name,
            )
        if progress is not None:
            progress(f"reading {entry.name}")
        if entity is None:
            raw.manifest = _read_manifest(entry.load(), entry.name, report)
            raw.manifest_name = entry.name
            continue
        table = read(entry, entity, report)
        if table is None:
            raw.unreadable.add(entity)
        else:
            raw.tables[entity] = table
            report.files[entry.name] = FileSummary(
                entity=entity,
                name=entry.name,
                rows=table.data_lines,
                dropped_rows=table.dropped_lines,
            )
    return raw


def manifest_modes(data: bytes) -> dict[str, str] | None:
    """What a manifest.csv declares per entity (`bulk`, `delta`, `absent`, lowercased), or
    None if it cannot be read (the validator then reports why)."""
    manifest = _read_manifest(data, spec.MANIFEST_FILE, Report(source=spec.MANIFEST_FILE))
    if manifest is None:
        return None
    return {
        entity: manifest[f"file.{entity}"][0].lower()
        for entity in spec.ENTITY_NAMES
        if f"file.{entity}" in manifest
    }


def _read_manifest(data: bytes, name: str, report: Report) -> dict[str, tuple[str, int]] | None:
    """manifest.csv as key -> (value, line); header `propertyName,value`, any row order."""
    text = decode(data.removeprefix(BOM), name, report)
    if text is None:
        return None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != list(spec.MANIFEST_HEADER):
        report.reject(
            "manifest_header",
            f"{name} must start with the header propertyName,value",
            "re-export the manifest, or remove it to let the files present decide",
            file=name,
        )
        return None
    out: dict[str, tuple[str, int]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            report.warn(
                "manifest_row",
                f"manifest row has {len(row)} fields instead of 2; ignored",
                "each manifest row is propertyName,value",
                file=name,
                line=lineno,
            )
            continue
        out[row[0].strip()] = (row[1].strip(), lineno)
    return out
