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
from ingestd.oneroster.reader import LINE, RawSet, RawTable, ReadLimits, read_set
from ingestd.oneroster.report import Report, Severity, excerpt
from ingestd.oneroster.spec import Column, Kind

_DATE = r"^\d{4}-\d{2}-\d{2}$"
_EXCEL_DATE = r"^\d{1,2}/\d{1,2}/(\d{2}|\d{4})$"
_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$"
_YEAR = r"^\d{4}$"
_USER_ID = r"^\{[^{}:]+:[^{}]*\}$"
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
    other_files: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """True when the set may go on to the diff."""
        return self.report.accepted


def validate_set(
    path: Path,
    policy: ValidationPolicy | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidatedSet:
    """Read and validate the set at `path` (directory or zip)."""
    policy = policy or ValidationPolicy()
    report = Report(source=str(path), max_examples=policy.max_examples)
    raw = read_set(path, report, policy.limits, progress)
    return validate_raw(raw, report, policy, progress)


def validate_raw(
    raw: RawSet,
    report: Report,
    policy: ValidationPolicy,
    progress: Callable[[str], None] | None = None,
) -> ValidatedSet:
    """Validate what the reader found; the report gets every issue."""
    progress = progress or _quiet
    out = ValidatedSet(report=report, other_files=list(raw.other_files))
    if report.rejected and not raw.tables:
        return out
    modes = _modes(raw, report, policy)
    tables: dict[str, RawTable] = {e: raw.tables[e] for e in spec.ENTITY_NAMES if e in modes}
    frames: dict[str, pl.DataFrame] = {}
    all_ids: dict[str, pl.DataFrame] = {}
    dropped_counts: dict[str, int] = {}
    for entity, table in tables.items():
        progress(f"checking {table.name}")
        checked = _check_table(table, modes[entity], report)
        if checked is None:
            continue
        frame, dropped = checked
        all_ids[entity] = (
            table.frame.select(LINE, "sourcedId") if "sourcedId" in table.header else None
        )
        frames[entity] = frame
        dropped_counts[entity] = dropped
    for entity in list(frames):
        progress(f"checking references of {tables[entity].name}")
        frames[entity], lost = _check_references(entity, frames, all_ids, tables, report)
        dropped_counts[entity] += lost
    for entity, frame in frames.items():
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
        kept_ids = frame["sourcedId"]
        source_ids = table.frame["sourcedId"].drop_nulls()
        out.dropped_ids[entity] = (
            source_ids.filter(~source_ids.is_in(kept_ids.implode()))
            .unique(maintain_order=True)
            .to_list()
        )
        out.tables[entity] = _clean(frame, spec.ENTITY_BY_NAME[entity])
        out.modes[entity] = modes[entity]
    return out


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
                _missing_file(entity, report, "")
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
                _missing_file(entity, report, f" (manifest.csv line {declared[1]} says {mode})")
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


def _missing_file(entity: str, report: Report, why: str) -> None:
    report.reject(
        "missing_file",
        f"{entity}.csv is missing{why}",
        f"include {entity}.csv in the export (or mark it absent in manifest.csv)",
    )


# --- per-table checks --------------------------------------------------------------------


def _check_table(table: RawTable, mode: str, report: Report) -> tuple[pl.DataFrame, int] | None:
    """Header against the spec, then value checks; returns (kept rows, rows dropped here)."""
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
    if table.frame.is_empty():
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
    checks = _value_checks(entity, mode, frame)
    if checks:
        masks = frame.select(*(chk.mask.alias(f"m{i}") for i, chk in enumerate(checks)))
        counts = masks.sum().row(0)
        drop = pl.Series("drop", [False] * frame.height, dtype=pl.Boolean)
        for i, chk in enumerate(checks):
            n = int(counts[i] or 0)
            if n == 0:
                continue
            mask = masks[f"m{i}"].fill_null(False)
            hits = frame.filter(mask).head(report.max_examples)
            report.add_rows(
                severity=chk.severity,
                code=chk.code,
                file=name,
                column=chk.column,
                lines=hits[LINE].to_list(),
                values=hits[chk.column].to_list(),
                count=n,
                message=chk.message,
                fix=chk.fix,
            )
            if chk.severity is Severity.ERROR:
                drop = drop | mask
        frame = frame.filter(~drop)
        dropped = int(drop.sum())
    else:
        dropped = 0
    frame, dup_dropped = _duplicates(frame, entity.name, name, report)
    if mode == "bulk":
        for col in ("status", "dateLastModified"):
            n = frame[col].is_not_null().sum()
            if n:
                report.warn(
                    "bulk_has_" + col,
                    f"{name}: {n} rows of a bulk file carry {col} (it should be blank in bulk)",
                    "harmless; ingestd ignores dateLastModified and treats "
                    "status=tobedeleted as a delete",
                    name,
                    column=col,
                )
    return frame, dropped + dup_dropped


@dataclass(frozen=True, slots=True)
class _Check:
    code: str
    severity: Severity
    column: str
    mask: pl.Expr  # True where the row breaks the rule
    message: str
    fix: str


def _value_checks(entity: spec.Entity, mode: str, frame: pl.DataFrame) -> list[_Check]:
    checks: list[_Check] = []
    for c in entity.columns:
        col = pl.col(c.name)
        present = col.is_not_null()
        if c.required or (mode == "delta" and c.name in ("status", "dateLastModified")):
            checks.append(
                _Check(
                    "missing_value",
                    Severity.ERROR,
                    c.name,
                    col.is_null() | (col.str.strip_chars() == ""),
                    f"{c.name} is required",
                    f"give every row a {c.name}",
                )
            )
        checks.extend(_format_checks(c, col, present, mode))
    return checks


def _format_checks(c: Column, col: pl.Expr, present: pl.Expr, mode: str) -> list[_Check]:
    E, W = Severity.ERROR, Severity.WARNING
    if c.kind is Kind.ENUM:
        allowed = list(c.values)
        ok = col.is_in(allowed) | col.str.starts_with(spec.EXTENSION_PREFIX)
        out = []
        if c.name == "status":
            legacy = col.is_in(list(spec.STATUS_LEGACY))
            ok = ok | legacy
            out.append(
                _Check(
                    "status_inactive",
                    W,
                    c.name,
                    legacy,
                    "status 'inactive' is a OneRoster 1.0 value; accepted as it is",
                    "leave status blank in bulk files, or use active/tobedeleted",
                )
            )
        case_only = ~ok & col.str.to_lowercase().is_in([v.lower() for v in allowed])
        out.append(
            _Check(
                "enum_case",
                E,
                c.name,
                present & case_only,
                f"{c.name} values are case-sensitive",
                f"use exactly one of: {', '.join(allowed)}",
            )
        )
        out.append(
            _Check(
                "bad_enum",
                E,
                c.name,
                present & ~ok & ~case_only,
                f"{c.name} is not an allowed value",
                f"use one of: {', '.join(allowed)} (or an ext: extension)",
            )
        )
        return out
    if c.kind is Kind.BOOL:
        exact = col.is_in(list(spec.BOOL_VALUES))
        loose = col.str.to_lowercase().is_in(list(spec.BOOL_VALUES))
        return [
            _Check(
                "boolean_case",
                W,
                c.name,
                present & ~exact & loose,
                f"{c.name} should be lowercase true/false; read as lowercase",
                "export booleans as true or false",
            ),
            _Check(
                "bad_boolean",
                E,
                c.name,
                present & ~loose,
                f"{c.name} must be true or false",
                "export booleans as true or false",
            ),
        ]
    if c.kind is Kind.DATE:
        shaped = col.str.contains(_DATE)
        real = col.str.to_date("%Y-%m-%d", strict=False).is_not_null()
        excel = col.str.contains(_EXCEL_DATE)
        return [
            _Check(
                "excel_date",
                E,
                c.name,
                present & excel,
                f"{c.name} looks like an Excel date (M/D/YYYY)",
                "format dates as YYYY-MM-DD (in Excel: Format Cells > Custom > yyyy-mm-dd)",
            ),
            _Check(
                "bad_date",
                E,
                c.name,
                present & ~excel & ~(shaped & real),
                f"{c.name} is not a valid date",
                "format dates as YYYY-MM-DD",
            ),
        ]
    if c.kind is Kind.DATETIME:
        severity = E if mode == "delta" else W
        return [
            _Check(
                "bad_datetime",
                severity,
                c.name,
                present & ~col.str.contains(_DATETIME),
                f"{c.name} is not an ISO 8601 date-time",
                "use UTC like 2026-08-17T18:25:43.511Z",
            )
        ]
    if c.kind is Kind.YEAR:
        return [
            _Check(
                "bad_year",
                E,
                c.name,
                present & ~col.str.contains(_YEAR),
                f"{c.name} must be a four-digit year",
                "use YYYY, e.g. 2027",
            )
        ]
    if c.kind is Kind.GRADES:
        items = _items(col)
        ok = items.list.eval(
            pl.element().is_in(list(spec.GRADE_CODES))
            | pl.element().str.starts_with(spec.EXTENSION_PREFIX)
        ).list.all()
        return [
            _Check(
                "bad_grade",
                W,
                c.name,
                present & ~ok,
                f"{c.name} holds a value that is not a CEDS grade code",
                "use IT, PR, PK, TK, KG, 01-13, PS, UG or Other (two digits: 09, not 9)",
            )
        ]
    if c.kind is Kind.ID_LIST:
        empty_item = _items(col).list.eval(pl.element() == "").list.any()
        return [
            _Check(
                "empty_list_item",
                E,
                c.name,
                present & empty_item,
                f"{c.name} has an empty item (a stray comma)",
                'list items are separated by single commas: "a,b"',
            )
        ]
    if c.kind is Kind.USER_IDS:
        ok = _items(col).list.eval(pl.element().str.contains(_USER_ID)).list.all()
        return [
            _Check(
                "bad_user_ids",
                W,
                c.name,
                present & ~ok,
                f"{c.name} items should look like {{type:id}}",
                "format userIds as {LDAP:12345},{SIS:678}",
            )
        ]
    return []


def _items(col: pl.Expr) -> pl.Expr:
    return col.str.split(",").list.eval(pl.element().str.strip_chars())


def _duplicates(
    frame: pl.DataFrame, entity: str, name: str, report: Report
) -> tuple[pl.DataFrame, int]:
    """Rows sharing a sourcedId: Skyward's per-school users rows are merged, others dropped."""
    dup_mask = frame["sourcedId"].is_duplicated()
    if not dup_mask.any():
        return frame, 0
    dups = frame.filter(dup_mask)
    if entity == "users":
        others = [c for c in frame.columns if c not in (LINE, "orgSourcedIds")]
        variants = dups.select(others).unique().group_by("sourcedId").len()
        mergeable = variants.filter(pl.col("len") == 1)["sourcedId"]
        merge = dups.filter(pl.col("sourcedId").is_in(mergeable.implode()))
        if not merge.is_empty():
            orgs = (
                merge.select("sourcedId", LINE, org=_items(pl.col("orgSourcedIds")))
                .explode("org")
                .sort(LINE)
                .group_by("sourcedId", maintain_order=True)
                .agg(pl.col("org").unique(maintain_order=True).str.join(","))
            )
            firsts = merge.sort(LINE).unique("sourcedId", keep="first", maintain_order=True)
            merged = (
                firsts.drop("orgSourcedIds")
                .join(orgs, on="sourcedId")
                .rename({"org": "orgSourcedIds"})
            )
            extra = merge.join(firsts.select(LINE), on=LINE, how="anti")
            report.add_rows(
                severity=Severity.WARNING,
                code="users_merged",
                file=name,
                column="sourcedId",
                lines=extra[LINE].head(report.max_examples).to_list(),
                values=extra["sourcedId"].head(report.max_examples).to_list(),
                count=extra.height,
                message="the same user is repeated (once per school); rows merged, orgSourcedIds "
                "united",
                fix="export one row per user with all their orgs in orgSourcedIds",
            )
            rest = frame.filter(~pl.col("sourcedId").is_in(mergeable.implode()))
            frame = pl.concat([rest, merged.select(frame.columns)]).sort(LINE)
            dups = dups.filter(~pl.col("sourcedId").is_in(mergeable.implode()))
    if dups.is_empty():
        return frame, 0
    report.add_rows(
        severity=Severity.ERROR,
        code="duplicate_id",
        file=name,
        column="sourcedId",
        lines=dups[LINE].head(report.max_examples).to_list(),
        values=dups["sourcedId"].head(report.max_examples).to_list(),
        count=dups.height,
        message="sourcedId is used by more than one row with different values; all are dropped",
        fix="give every record its own sourcedId",
    )
    return frame.filter(~pl.col("sourcedId").is_in(dups["sourcedId"].implode())), dups.height


# --- references --------------------------------------------------------------------------


def _check_references(
    entity: str,
    frames: dict[str, pl.DataFrame],
    all_ids: dict[str, pl.DataFrame | None],
    tables: dict[str, RawTable],
    report: Report,
) -> tuple[pl.DataFrame, int]:
    """Drop rows whose required references do not resolve; warn on optional ones."""
    frame = frames[entity]
    name = tables[entity].name
    drop = pl.Series("drop", [False] * frame.height, dtype=pl.Boolean)
    for ref in (r for r in spec.REFERENCES if r.entity == entity):
        target = frames.get(ref.target)
        if target is None:
            continue
        column = spec.ENTITY_BY_NAME[entity].column(ref.column)
        severity = (
            Severity.ERROR if column.required or ref.column == "sourcedId" else Severity.WARNING
        )
        if ref.target == entity:
            target = frame.filter(~drop)
        good = target["sourcedId"]
        if ref.target_type is not None:
            good = target.filter(pl.col("type") == ref.target_type)["sourcedId"]
        values = pl.col(ref.column)
        exploded = (
            frame.with_row_index("__row")
            .select(
                "__row", LINE, item=_items(values) if column.is_list else pl.concat_list(values)
            )
            .explode("item")
            .filter(pl.col("item").is_not_null() & (pl.col("item") != ""))
        )
        bad = exploded.filter(~pl.col("item").is_in(good.implode()))
        if bad.is_empty():
            continue
        existing = target["sourcedId"]
        raw_ids = all_ids.get(ref.target)
        wrong_type = bad.filter(pl.col("item").is_in(existing.implode()))
        rest = bad.filter(~pl.col("item").is_in(existing.implode()))
        if raw_ids is not None:
            was_dropped = rest.filter(pl.col("item").is_in(raw_ids["sourcedId"].implode()))
            missing = rest.filter(~pl.col("item").is_in(raw_ids["sourcedId"].implode()))
        else:
            was_dropped, missing = rest.clear(), rest
        target_name = tables[ref.target].name
        what = f"{ref.column} -> {ref.target}"
        for code, rows, message, fix in (
            (
                "dangling_reference",
                missing,
                f"{what}: no such sourcedId in {target_name}",
                f"add the referenced record to {target_name} or remove the reference",
            ),
            (
                "reference_to_dropped_row",
                was_dropped,
                f"{what}: the referenced row of {target_name} was dropped (see its errors)",
                f"fix the referenced row in {target_name}",
            ),
            (
                "reference_wrong_type",
                wrong_type,
                f"{what}: the referenced {ref.target} row is not of type {ref.target_type}",
                f"point {ref.column} at an {ref.target} row of type {ref.target_type}",
            ),
        ):
            if rows.is_empty():
                continue
            head = rows.head(report.max_examples)
            report.add_rows(
                severity=severity,
                code=code,
                file=name,
                column=ref.column,
                lines=head[LINE].to_list(),
                values=head["item"].to_list(),
                count=rows["__row"].n_unique(),
                message=message,
                fix=fix,
            )
        if severity is Severity.ERROR:
            rows_bad = bad["__row"].unique()
            drop = drop | pl.Series(range(frame.height)).is_in(rows_bad.implode())
    for ref in (r for r in spec.REFERENCES if r.entity == entity and r.no_cycles):
        cyclic = _cycles(frame.filter(~drop), ref.column)
        if cyclic:
            rows = frame.filter(pl.col("sourcedId").is_in(list(cyclic)) & ~drop)
            report.add_rows(
                severity=Severity.ERROR,
                code="parent_cycle",
                file=name,
                column=ref.column,
                lines=rows[LINE].head(report.max_examples).to_list(),
                values=rows[ref.column].head(report.max_examples).to_list(),
                count=rows.height,
                message=f"{ref.column} chains form a cycle",
                fix="a record cannot be its own ancestor",
            )
            drop = drop | frame["sourcedId"].is_in(list(cyclic))
    return frame.filter(~drop), int(drop.sum())


def _cycles(frame: pl.DataFrame, column: str) -> set[str]:
    """sourcedIds that lie on a parent cycle (walked in Python: orgs and sessions are small)."""
    parent = dict(zip(frame["sourcedId"].to_list(), frame[column].to_list(), strict=True))
    on_cycle: set[str] = set()
    state: dict[str, int] = {}  # 1 = being walked, 2 = done
    for start in parent:
        path: list[str] = []
        node: str | None = start
        while node is not None and node in parent and state.get(node) is None:
            state[node] = 1
            path.append(node)
            node = parent[node]
        if node is not None and state.get(node) == 1:
            on_cycle.update(path[path.index(node) :])
        for n in path:
            state[n] = 2
    return on_cycle


# --- clean output ------------------------------------------------------------------------


def _clean(frame: pl.DataFrame, entity: spec.Entity) -> pl.DataFrame:
    """Spec columns in spec order, then metadata.* columns; booleans lowercased; no line column."""
    cols = []
    for c in entity.columns:
        expr = pl.col(c.name)
        if c.kind is Kind.BOOL:
            expr = expr.str.to_lowercase()
        cols.append(expr.alias(c.name))
    meta = [c for c in frame.columns if c.startswith(spec.METADATA_PREFIX)]
    return frame.select(*cols, *meta)
