"""Validate a OneRoster 1.1 set: a Report of every problem, and the clean tables.

File-level problems reject the set. Row-level problems drop the row (and the
rows that reference it), unless a file loses more than
`max_invalid_rows_percent` of its rows: then the set is rejected. All checks
are polars expressions over whole columns; only small tables (orgs, sessions)
are walked in Python, for parent cycles.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.lineprints import L1, L2, CarriedRows, NotCarried
from ingestd.oneroster.reader import LINE, RawSet, RawTable, ReadLimits, read_set
from ingestd.oneroster.references import check_references
from ingestd.oneroster.report import Report, Severity, excerpt
from ingestd.oneroster.rules import Check, duplicates, value_checks

OnReady = Callable[["ValidatedSet", str], None]  # (the result so far, an entity now final)
_TARGETS = {r.target for r in spec.REFERENCES}  # entities other rows point to
# Header-only files of these entities are what a broken bulk export looks like.
_MUST_HAVE_ROWS = ("orgs", "users")


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What the validator enforces; built from the [ingest] config section."""

    max_invalid_rows_percent: float = 1.0
    required_entities: tuple[str, ...] = spec.ENTITY_NAMES  # used when there is no manifest
    limits: ReadLimits = field(default_factory=ReadLimits)
    max_examples: int = 20


@dataclass(slots=True)
class ValidatedSet:
    """The outcome: the report, clean tables (entity -> frame of strings), modes, dropped ids."""

    report: Report
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # entity -> bulk | delta
    dropped_ids: dict[str, list[str]] = field(default_factory=dict)
    dropped_rows: dict[str, pl.DataFrame] = field(default_factory=dict)  # as read, if parsed
    other_files: list[str] = field(default_factory=list)
    prints: dict[str, pl.DataFrame] = field(default_factory=dict)
    """Per entity whose lines were printed (every file bulk), row for row with its table:
    LINE, and the line prints L1, L2 (null where the row had anything to report)."""
    seeds: dict[str, tuple[int, int]] = field(default_factory=dict)  # what prints are seeded with
    carried: dict[str, CarriedRows] = field(default_factory=dict)
    """Entities read against the last accepted state: their table holds only the rows
    parsed now; the others are these rows of the state (`carry.py`)."""

    @property
    def accepted(self) -> bool:
        """True when the set may go on to the diff."""
        return self.report.accepted


def validate_set(
    path: Path,
    policy: ValidationPolicy | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    prints: bool = False,
    on_ready: OnReady | None = None,
) -> ValidatedSet:
    """Read and validate the set at `path` (directory or zip); `prints`: with the line
    prints of the rows (for the next set to be read against this one). `on_ready`: see
    validate_raw."""
    policy = policy or ValidationPolicy()
    report = Report(source=str(path), max_examples=policy.max_examples)
    raw = read_set(path, report, policy.limits, progress, prints=prints)
    return validate_raw(raw, report, policy, progress, on_ready)


def validate_raw(
    raw: RawSet,
    report: Report,
    policy: ValidationPolicy,
    progress: Callable[[str], None] | None = None,
    on_ready: OnReady | None = None,
) -> ValidatedSet:
    """Validate what the reader found; the report gets every issue. `on_ready(result,
    entity)` is called as soon as an entity's outputs in `result` are final (its table,
    prints, dropped rows), before the other entities are done and before it is known
    whether the set is accepted."""
    progress = progress or _quiet
    out = ValidatedSet(report=report, other_files=list(raw.other_files))
    if report.rejected and not raw.tables:
        return out
    modes = _modes(raw, report, policy)
    tables: dict[str, RawTable] = {e: raw.tables[e] for e in spec.ENTITY_NAMES if e in modes}
    carried = {e: t.carried for e, t in tables.items() if t.carried is not None}
    if carried and set(modes.values()) != {"bulk"}:
        raise NotCarried("a file is not bulk")
    if carried and set(modes) != set(raw.prior_entities or ()):
        raise NotCarried("the set has other files than the last accepted one")
    frames: dict[str, pl.DataFrame] = {}
    all_ids: dict[str, pl.DataFrame] = {}
    dropped_counts: dict[str, int] = {}
    noisy: dict[str, list[pl.Series]] = {e: [] for e in tables}
    for entity, table in tables.items():
        progress(f"checking {table.name}")
        checked = _check_table(table, modes[entity], report, noisy[entity])
        if checked is None:
            continue
        frame, dropped = checked
        all_ids[entity] = table.frame.select(LINE, "sourcedId")
        if table.carried is not None and entity in _TARGETS:  # their ids (no LINE: unused)
            carried_ids = table.carried.ids().select(
                pl.lit(None, pl.UInt32).alias(LINE), "sourcedId"
            )
            all_ids[entity] = pl.concat([all_ids[entity], carried_ids])
        frames[entity] = frame
        dropped_counts[entity] = dropped
    for entity in list(frames):
        progress(f"checking references of {tables[entity].name}")
        if entity in carried:
            # Carried rows pointing to rows gone today are checked (and reported) with the
            # rows read today, as a whole read would.
            hit = _carried_hits(entity, carried[entity], frames, carried, raw.prior)
            if hit is not None:
                frames[entity] = _uncarry(tables[entity], frames[entity], hit)
                carried[entity] = tables[entity].carried  # type: ignore[assignment]
        frames[entity], lost = check_references(
            entity, frames, all_ids, tables, report, modes, noisy[entity], carried
        )
        dropped_counts[entity] += lost
        # A row dropped by this very check may be the target of a carried row of the same
        # entity (users' agents): that row would have to be reported too.
        if (
            entity in carried
            and lost
            and _carried_hits(entity, carried[entity], frames, carried, raw.prior, entity)
            is not None
        ):
            raise NotCarried(f"a carried row of {entity} points to a row dropped today")
        _outputs(out, entity, tables[entity], frames[entity], dropped_counts[entity], modes)
        _add_prints(out, entity, tables[entity], frames[entity], noisy[entity], modes)
        if on_ready is not None and not report.rejected:
            on_ready(out, entity)
    for entity in frames:  # what the report says of each file, in order
        table = tables[entity]
        total_dropped = table.dropped_lines + dropped_counts[entity]
        summary = report.files.get(table.name)
        if summary is not None:
            summary.dropped_rows = total_dropped
            summary.mode = modes[entity]
        if (
            table.data_lines
            and total_dropped * 100.0 / table.data_lines > policy.max_invalid_rows_percent
        ):
            report.reject(
                "too_many_invalid_rows",
                f"{table.name}: {total_dropped} of {table.data_lines} rows are invalid "
                f"(limit {policy.max_invalid_rows_percent:g}%)",
                "fix the errors listed for this file and export again",
                file=table.name,
            )
    return out


def _outputs(
    out: ValidatedSet,
    entity: str,
    table: RawTable,
    frame: pl.DataFrame,
    dropped: int,
    modes: dict[str, str],
) -> None:
    """An entity's outputs, once its rows are final: clean table, dropped rows and ids."""
    out.dropped_ids[entity] = []
    if table.dropped_lines + dropped:
        rows = table.frame.join(frame.select(LINE), on=LINE, how="anti").drop(LINE)
        out.dropped_rows[entity] = rows
        out.dropped_ids[entity] = _dropped_ids(rows, frame)
    if table.carried is not None:
        out.carried[entity] = table.carried
    out.tables[entity] = _clean(frame, spec.ENTITY_BY_NAME[entity])
    out.modes[entity] = modes[entity]


def _add_prints(
    out: ValidatedSet,
    entity: str,
    table: RawTable,
    frame: pl.DataFrame,
    noisy: list[pl.Series],
    modes: dict[str, str],
) -> None:
    """The line prints of an entity's rows, when every file of the set is bulk."""
    if table.prints is not None and table.seeds is not None and set(modes.values()) == {"bulk"}:
        out.prints[entity] = _row_prints(frame[LINE], table.prints, noisy)
        out.seeds[entity] = table.seeds


def _row_prints(lines: pl.Series, prints: pl.DataFrame, noisy: list[pl.Series]) -> pl.DataFrame:
    """LINE, L1, L2 of rows read from `lines`; null prints where a row is among `noisy`."""
    at = prints.select(pl.all().gather(lines.cast(pl.Int64) - 2))
    if noisy:
        quiet = ~lines.is_in(pl.concat(noisy).cast(pl.UInt32).implode())
        at = at.select(pl.when(quiet).then(pl.all()))
    return pl.concat([pl.DataFrame([lines.alias(LINE)]), at.select(L1, L2)], how="horizontal")


def _carried_hits(
    entity: str,
    rows: CarriedRows,
    frames: dict[str, pl.DataFrame],
    carried: dict[str, CarriedRows],
    prior: dict[str, pl.DataFrame] | None,
    target: str | None = None,
) -> pl.Series | None:
    """Per row of the last accepted state (`rows.prior`): True where it is carried today
    and points to a row (of `target`, if given) that was good in that state and is not
    today (gone, dropped, of another type); None when there is none."""
    hit: pl.Series | None = None
    for ref in (r for r in spec.REFERENCES if r.entity == entity):
        if ref.target not in frames or target not in (None, ref.target):
            continue
        target_rows = carried.get(ref.target)
        before = prior.get(ref.target) if prior is not None else None
        if before is None:
            raise NotCarried(f"{ref.target} is not in the last accepted state")
        was = pl.col("sourcedId").is_not_null()
        if target_rows is not None:
            was = was & ~pl.lit(target_rows.taken)  # carried target rows are good today
        if ref.target_type is not None:
            was = was & (pl.col("type") == ref.target_type)
        now = frames[ref.target]
        if ref.target_type is not None:
            now = now.filter(pl.col("type") == ref.target_type)
        lost = before.filter(was).filter(~pl.col("sourcedId").is_in(now["sourcedId"].implode()))
        if lost.is_empty():
            continue
        gone = lost["sourcedId"].implode()
        column = spec.ENTITY_BY_NAME[entity].column(ref.column)
        if column.is_list:  # item by item (trimmed, as the reference check reads them)
            mask = _list_points_to(rows.prior, ref.column, gone)
        else:
            mask = rows.prior.select(pl.col(ref.column).is_in(gone).fill_null(False)).to_series()
        mask = mask & rows.taken
        if mask.any():
            hit = mask if hit is None else hit | mask
    return hit


def _list_points_to(frame: pl.DataFrame, column: str, ids: pl.Series) -> pl.Series:
    """Per row of `frame`: True where an item (trimmed) of the list field `column` is one
    of `ids` (imploded). Rows of one item are looked up whole; only the others are split."""
    values = frame.select(pl.col(column).alias("v"))
    several = values.select(pl.col("v").str.contains(",", literal=True).fill_null(False))
    mask = values.select(pl.col("v").str.strip_chars().is_in(ids).fill_null(False)).to_series()
    if not several.to_series().any():
        return mask
    pointing = (
        values.with_row_index("i")
        .filter(several.to_series())
        .select("i", item=pl.col("v").str.split(","))
        .explode("item")
        .filter(pl.col("item").str.strip_chars().is_in(ids))["i"]
    )
    return mask.scatter(pointing, True)


def _uncarry(table: RawTable, frame: pl.DataFrame, hit: pl.Series) -> pl.DataFrame:
    """Move the carried rows `hit` (a mask over the prior rows) of `table` among the rows
    read today: into its raw frame and into `frame` (its rows being checked), by LINE.
    They were valid and quiet in the last state, so the value rules have nothing to say."""
    rows = table.carried
    assert rows is not None
    moving = hit.gather(rows.prior_rows)
    moved = rows.prior[rows.prior_rows.filter(moving)].with_columns(
        rows.lines.filter(moving).alias(LINE)
    )
    table.frame = pl.concat([table.frame, moved.select(table.frame.columns)]).sort(LINE)
    table.carried = CarriedRows(
        prior=rows.prior,
        prior_rows=rows.prior_rows.filter(~moving),
        lines=rows.lines.filter(~moving),
        taken=rows.taken & ~hit,
        prints=rows.prints.filter(~moving),
    )
    return pl.concat([frame, moved.select(frame.columns)]).sort(LINE)


# --- manifest and required files -------------------------------------------------------


def _quiet(_: str) -> None:
    pass


def _modes(raw: RawSet, report: Report, policy: ValidationPolicy) -> dict[str, str]:
    """entity -> bulk|delta for every entity to process; missing required files reject."""
    present = {e: t.name for e, t in raw.tables.items()}
    modes: dict[str, str] = {}
    if raw.manifest is None:
        if raw.manifest_name is not None:
            return modes  # the manifest itself was rejected
        for entity in spec.ENTITY_NAMES:
            if entity in present:
                modes[entity] = "bulk"
            elif entity in policy.required_entities:
                _missing_file(entity, report, "", raw)
        return modes
    name = raw.manifest_name
    manifest = raw.manifest
    known_file_keys = {f"file.{e}" for e in (*spec.ENTITY_NAMES, *spec.GRADEBOOK_NAMES)}
    for key, (value, line) in manifest.items():
        if key in known_file_keys:
            if value not in spec.MANIFEST_MODES:
                report.reject(
                    "manifest_value",
                    f"manifest.csv line {line}: {key} is {excerpt(value)!r}; "
                    "it must be absent, bulk or delta",
                    "fix the manifest row",
                    file=name,
                )
            continue
        if key in spec.MANIFEST_KNOWN_KEYS:
            continue
        guess = difflib.get_close_matches(key, [*spec.MANIFEST_KNOWN_KEYS, *known_file_keys], n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else "remove the row"
        report.warn(
            "manifest_unknown_key", f"unknown manifest property {key!r}", hint, name, line=line
        )
    version = manifest.get("oneroster.version")
    if version is None or version[0] not in ("1.1",):
        report.warn(
            "manifest_version",
            f"oneroster.version is {version[0]!r}, expected '1.1'"
            if version
            else "the manifest does not say oneroster.version",
            "set oneroster.version to 1.1 (ingestd reads OneRoster 1.1)",
            name,
            line=version[1] if version else None,
        )
    mversion = manifest.get("manifest.version")
    if mversion is not None and mversion[0] != "1.0":
        report.warn(
            "manifest_version",
            f"manifest.version is {mversion[0]!r}, the spec says '1.0'",
            "set manifest.version to 1.0",
            name,
            line=mversion[1],
        )
    for entity in spec.ENTITY_NAMES:
        declared = manifest.get(f"file.{entity}")
        mode = declared[0] if declared else None
        if mode in ("bulk", "delta"):
            if entity in present:
                modes[entity] = mode
            else:
                _missing_file(
                    entity, report, f" (manifest.csv line {declared[1]} says {mode})", raw
                )
        elif entity in present:
            if mode == "absent":
                report.warn(
                    "manifest_absent_file_present",
                    f"{present[entity]} is present but the manifest marks it absent; ignored",
                    f"set file.{entity} to bulk in the manifest, or leave the file out",
                    name,
                    line=declared[1],
                )
            else:
                report.warn(
                    "manifest_missing_entry",
                    f"the manifest has no file.{entity} row; {present[entity]} read as bulk",
                    f"add file.{entity},bulk to manifest.csv",
                    name,
                )
                modes[entity] = "bulk"
    return modes


def _missing_file(entity: str, report: Report, why: str, raw: RawSet | None = None) -> None:
    if raw is not None and entity in raw.unreadable:
        return  # present, and its own errors say why it could not be read
    report.reject(
        "missing_file",
        f"{entity}.csv is missing{why}",
        f"include {entity}.csv in the export (or mark it absent in manifest.csv)",
    )


# --- per-table checks --------------------------------------------------------------------


def _check_table(
    table: RawTable, mode: str, report: Report, noisy: list[pl.Series]
) -> tuple[pl.DataFrame, int] | None:
    """Header against the spec, then value checks; returns (kept rows, rows dropped here).
    LINEs of rows with anything to report (or mended) are added to `noisy`."""
    entity = spec.ENTITY_BY_NAME[table.entity]
    name = table.name
    header = table.header
    spec_names = entity.column_names
    unknown = [h for h in header if h not in spec_names and not h.startswith(spec.METADATA_PREFIX)]
    missing = [c for c in entity.columns if c.name not in header]
    for h in unknown:
        guess = difflib.get_close_matches(h, spec_names, n=1, cutoff=0.6)
        guess = guess or [c for c in spec_names if c.lower() == h.strip().lower()]
        report.warn(
            "unknown_column",
            f"{name}: unknown column {excerpt(h)!r} ignored",
            f"did you mean {guess[0]!r}? header names are case-sensitive"
            if guess
            else "extension columns must start with 'metadata.'",
            name,
            column=h,
        )
    fatal = False
    for c in missing:
        if c.required or c.name == "sourcedId":
            report.reject(
                "missing_column",
                f"{name}: required column {c.name!r} is missing from the header",
                f"add the column {c.name} (spelled exactly so) to the export",
                file=name,
            )
            fatal = True
        else:
            report.warn(
                "missing_optional_column",
                f"{name}: column {c.name!r} is missing from the header; read as empty",
                f"add the column {c.name} (every spec column belongs in the header)",
                name,
                column=c.name,
            )
    if fatal:
        return None
    order = [h for h in header if h in spec_names]
    if order != [c for c in spec_names if c in header]:
        report.warn(
            "column_order",
            f"{name}: columns are not in OneRoster order; read by name",
            f"export the columns in this order: {','.join(spec_names)}",
            name,
        )
    if table.fixed_lines is not None:
        noisy.append(table.fixed_lines)
    if table.frame.is_empty() and not table.carried_rows:
        severity_reject = entity.name in _MUST_HAVE_ROWS and mode == "bulk"
        msg = f"{name} has a header but no rows"
        if severity_reject:
            report.reject(
                "no_rows",
                msg + f": a bulk export always has {entity.name}; this one looks broken",
                "check the SIS export; do not send an empty file for this entity",
                file=name,
            )
        else:
            report.warn(
                "no_rows", msg, "leave the file out and mark it absent in manifest.csv", name
            )
    frame = table.frame.with_columns(pl.lit(None, pl.String).alias(c.name) for c in missing)
    frame, dropped = _apply_checks(frame, value_checks(entity, mode, frame), name, report, noisy)
    frame, dup_dropped = duplicates(frame, entity.name, name, report, noisy)
    if mode == "bulk":
        for col in ("status", "dateLastModified"):
            n = frame[col].is_not_null().sum()
            if n:
                noisy.append(frame.filter(pl.col(col).is_not_null())[LINE])
                report.warn(
                    "bulk_has_" + col,
                    f"{name}: {n} rows of a bulk file carry {col} (it should be blank in bulk)",
                    "harmless; ingestd ignores dateLastModified and treats "
                    "status=tobedeleted as a delete",
                    name,
                    column=col,
                )
    return frame, dropped + dup_dropped


# --- clean output ------------------------------------------------------------------------


def _dropped_ids(dropped: pl.DataFrame, kept: pl.DataFrame) -> list[str]:
    """sourcedIds of dropped rows that the clean table lost (a merged duplicate keeps its id)."""
    ids = dropped.select(pl.col("sourcedId").drop_nulls().unique(maintain_order=True))
    return ids.filter(~pl.col("sourcedId").is_in(kept["sourcedId"].implode()))[
        "sourcedId"
    ].to_list()


def _apply_checks(
    frame: pl.DataFrame,
    checks: list[Check],
    name: str,
    report: Report,
    noisy: list[pl.Series] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Report every broken rule and drop the rows with errors; returns (frame, rows dropped).

    Most rules judge each distinct value once (a million enrollments have a
    handful of roles and dates) and then find the rows holding the bad ones.
    """
    drop: pl.Series | None = None
    lowercase: list[str] = []
    columns = sorted({c.column for c in checks if c.per_value})
    columns = [c for c in columns if frame[c].null_count() < frame.height]
    # All distinct values in one select: polars spreads the columns over the cores.
    distinct = dict(
        zip(
            columns,
            pl.collect_all([frame.lazy().select(pl.col(c).unique().drop_nulls()) for c in columns]),
            strict=True,
        )
    )
    for chk in checks:
        col = chk.column
        if chk.per_value:
            if col not in distinct:
                continue  # every value of the column is empty
            bad_values = distinct[col].filter(chk.mask)[col]
            if bad_values.is_empty():
                continue
            mask = frame[col].is_in(bad_values.implode())
        else:
            if chk.code == "missing_value" and frame[col].null_count() == 0:
                continue
            mask = frame.select(chk.mask.fill_null(False)).to_series()
        n = int(mask.sum())
        if n == 0:
            continue
        hits = frame.filter(mask).head(report.max_examples)
        if noisy is not None:
            noisy.append(frame.filter(mask)[LINE])
        report.add_rows(
            severity=chk.severity,
            code=chk.code,
            file=name,
            column=col,
            lines=hits[LINE].to_list(),
            values=hits[col].to_list(),
            count=n,
            message=chk.message,
            fix=chk.fix,
        )
        if chk.severity is Severity.ERROR:
            drop = mask if drop is None else drop | mask
        if chk.code == "boolean_case":
            lowercase.append(col)
    if lowercase:
        frame = frame.with_columns(pl.col(c).str.to_lowercase() for c in lowercase)
    if drop is None:
        return frame, 0
    return frame.filter(~drop), int(drop.sum())


def _clean(frame: pl.DataFrame, entity: spec.Entity) -> pl.DataFrame:
    """Spec columns in spec order, then metadata.* columns; no line column."""
    meta = [c for c in frame.columns if c.startswith(spec.METADATA_PREFIX)]
    return frame.select(*entity.column_names, *meta)
