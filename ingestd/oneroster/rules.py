"""Row rules of the validator: required values, formats, enums, duplicate ids.

Each rule is a polars expression that is True where a row breaks it, so a
million-row file is checked in a few vectorized passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.csvfile import LINE
from ingestd.oneroster.report import Report, Severity
from ingestd.oneroster.spec import Column, Kind

_DATE = r"^\d{4}-\d{2}-\d{2}$"
_EXCEL_DATE = r"^\d{1,2}/\d{1,2}/(\d{2}|\d{4})$"
_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$"
_YEAR = r"^\d{4}$"
_USER_ID = r"\s*\{[^{}:]+:[^{}]*\}\s*"
_USER_IDS = rf"^{_USER_ID}(,{_USER_ID})*$"


@dataclass(frozen=True, slots=True)
class Check:
    """One rule: where it is broken (mask), how bad that is, and what to say."""

    code: str
    severity: Severity
    column: str
    mask: pl.Expr  # True where the row (or, per_value, the distinct value) breaks the rule
    message: str
    fix: str
    per_value: bool = True  # judge each distinct value once, then find its rows


def value_checks(entity: spec.Entity, mode: str, frame: pl.DataFrame) -> list[Check]:
    """Every value rule of `entity` for a file in `mode` (bulk or delta)."""
    checks: list[Check] = []
    for c in entity.columns:
        col = pl.col(c.name)
        present = col.is_not_null()
        if c.required or (mode == "delta" and c.name in ("status", "dateLastModified")):
            checks.append(
                Check(
                    "missing_value",
                    Severity.ERROR,
                    c.name,
                    col.is_null(),
                    f"{c.name} is required",
                    f"give every row a {c.name}",
                    per_value=False,
                )
            )
        checks.extend(_format_checks(c, col, present, mode))
    return checks


def _format_checks(c: Column, col: pl.Expr, present: pl.Expr, mode: str) -> list[Check]:
    E, W = Severity.ERROR, Severity.WARNING
    if c.kind is Kind.ENUM:
        allowed = list(c.values)
        ok = col.is_in(allowed) | col.str.starts_with(spec.EXTENSION_PREFIX)
        out = []
        if c.name == "status":
            legacy = col.is_in(list(spec.STATUS_LEGACY))
            ok = ok | legacy
            out.append(
                Check(
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
            Check(
                "enum_case",
                E,
                c.name,
                present & case_only,
                f"{c.name} values are case-sensitive",
                f"use exactly one of: {', '.join(allowed)}",
            )
        )
        out.append(
            Check(
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
            Check(
                "boolean_case",
                W,
                c.name,
                present & ~exact & loose,
                f"{c.name} should be lowercase true/false; read as lowercase",
                "export booleans as true or false",
            ),
            Check(
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
            Check(
                "excel_date",
                E,
                c.name,
                present & excel,
                f"{c.name} looks like an Excel date (M/D/YYYY)",
                "format dates as YYYY-MM-DD (in Excel: Format Cells > Custom > yyyy-mm-dd)",
            ),
            Check(
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
            Check(
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
            Check(
                "bad_year",
                E,
                c.name,
                present & ~col.str.contains(_YEAR),
                f"{c.name} must be a four-digit year",
                "use YYYY, e.g. 2027",
            )
        ]
    if c.kind is Kind.GRADES:
        ok = (
            items(col)
            .list.eval(
                pl.element().is_in(list(spec.GRADE_CODES))
                | pl.element().str.starts_with(spec.EXTENSION_PREFIX)
            )
            .list.all()
        )
        return [
            Check(
                "bad_grade",
                W,
                c.name,
                present & ~ok,
                f"{c.name} holds a value that is not a CEDS grade code",
                "use IT, PR, PK, TK, KG, 01-13, PS, UG or Other (two digits: 09, not 9)",
            )
        ]
    if c.kind is Kind.ID_LIST:
        empty_item = col.str.contains(r"(^|,)\s*(,|$)")
        return [
            Check(
                "empty_list_item",
                E,
                c.name,
                present & empty_item,
                f"{c.name} has an empty item (a stray comma)",
                'list items are separated by single commas: "a,b"',
            )
        ]
    if c.kind is Kind.USER_IDS:
        ok = col.str.contains(_USER_IDS)
        return [
            Check(
                "bad_user_ids",
                W,
                c.name,
                present & ~ok,
                f"{c.name} items should look like {{type:id}}",
                "format userIds as {LDAP:12345},{SIS:678}",
            )
        ]
    return []


def items(col: pl.Expr) -> pl.Expr:
    """A list field split into its trimmed items."""
    return col.str.split(",").list.eval(pl.element().str.strip_chars())


def duplicates(
    frame: pl.DataFrame,
    entity: str,
    name: str,
    report: Report,
    noisy: list[pl.Series] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Rows sharing a sourcedId: Skyward's per-school users rows are merged, others dropped.
    Their LINEs (merged or dropped) are added to `noisy`."""
    # Hashes first: a million distinct ids are proven distinct in milliseconds; only a
    # collision or a real duplicate pays for the exact comparison of strings.
    if frame.select(pl.col("sourcedId").hash().n_unique()).item() == frame.height:
        return frame, 0
    dup_mask = frame["sourcedId"].is_duplicated()
    if not dup_mask.any():
        return frame, 0
    dups = frame.filter(dup_mask)
    if noisy is not None:
        noisy.append(dups[LINE])
    if entity == "users":
        others = [c for c in frame.columns if c not in (LINE, "orgSourcedIds")]
        variants = dups.select(others).unique().group_by("sourcedId").len()
        mergeable = variants.filter(pl.col("len") == 1)["sourcedId"]
        merge = dups.filter(pl.col("sourcedId").is_in(mergeable.implode()))
        if not merge.is_empty():
            orgs = (
                merge.select("sourcedId", LINE, org=items(pl.col("orgSourcedIds")))
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
