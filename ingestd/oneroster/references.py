"""Reference rules: every id a row points to must exist (with the right type), and no cycles.

Tables are checked parents first, against the already-cleaned parent tables,
so a dropped class takes its enrollments with it (reported as such).
"""

from __future__ import annotations

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.csvfile import LINE, RawTable
from ingestd.oneroster.lineprints import CarriedRows
from ingestd.oneroster.report import Report, Severity
from ingestd.oneroster.rules import items


def check_references(
    entity: str,
    frames: dict[str, pl.DataFrame],
    all_ids: dict[str, pl.DataFrame],
    tables: dict[str, RawTable],
    report: Report,
    modes: dict[str, str] | None = None,
    noisy: list[pl.Series] | None = None,
    carried: dict[str, CarriedRows] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Drop rows whose required references do not resolve; warn on optional ones.
    LINEs of the rows reported are added to `noisy`. `carried`: entities of which
    `frames` holds only the rows parsed now; their carried rows are good targets too.

    A delta file names only what changed: what it points to (or what points to it)
    may live in the tenant's snapshot, so its unresolved references are warnings.

    Membership is tested on 64-bit hashes of the ids (a million lookups in tens of
    milliseconds); a hash collision could only hide a dangling reference, with odds
    around 1e-8 for a large district. The rows found bad are then classified exactly.
    """
    frame = frames[entity]
    name = tables[entity].name
    drop: pl.Series | None = None
    for ref in (r for r in spec.REFERENCES if r.entity == entity):
        target = frames.get(ref.target)
        if target is None:
            continue
        column = spec.ENTITY_BY_NAME[entity].column(ref.column)
        required = column.required or ref.column == "sourcedId"
        delta = modes is not None and "delta" in (modes.get(entity), modes.get(ref.target))
        severity = Severity.ERROR if required and not delta else Severity.WARNING
        if ref.target == entity and drop is not None:
            target = frame.filter(~drop)
        col = pl.col(ref.column)
        if carried is not None and ref.target in carried:  # those of its ids pointed to
            values = frame.select(col.unique().drop_nulls())
            if column.is_list:
                values = values.select(items(col).explode())
            more = carried[ref.target].ids(
                "type" if ref.target_type else "sourcedId", among=values.to_series()
            )
            target = pl.concat([more, target.select(more.columns)])
        good = (
            target if ref.target_type is None else target.filter(pl.col("type") == ref.target_type)
        )
        good_hashes = good.select(pl.col("sourcedId").hash()).to_series().implode()
        if column.is_list:
            distinct = frame.select(col.unique().drop_nulls())
            pairs = (
                distinct.with_columns(item=items(col)).explode("item").filter(pl.col("item") != "")
            )
            bad_pairs = pairs.filter(~pl.col("item").hash().is_in(good_hashes))
            if bad_pairs.is_empty():
                continue
            mask = frame[ref.column].is_in(bad_pairs[ref.column].implode())
            bad = frame.filter(mask).select(LINE, ref.column).join(bad_pairs, on=ref.column)
        else:
            mask = frame.select(col.is_not_null() & ~col.hash().is_in(good_hashes)).to_series()
            if not mask.any():
                continue
            bad = frame.filter(mask).select(LINE, ref.column, item=col)
        _report_bad(ref, bad, target, all_ids.get(ref.target), tables, name, severity, report)
        if noisy is not None:
            noisy.append(bad[LINE])
        if severity is Severity.ERROR:
            drop = mask if drop is None else drop | mask
    for ref in (r for r in spec.REFERENCES if r.entity == entity and r.no_cycles):
        alive = frame if drop is None else frame.filter(~drop)
        cyclic = _cycles(alive, ref.column)
        if cyclic:
            rows = alive.filter(pl.col("sourcedId").is_in(list(cyclic)))
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
            in_cycle = frame["sourcedId"].is_in(list(cyclic))
            if noisy is not None:
                noisy.append(rows[LINE])
            drop = in_cycle if drop is None else drop | in_cycle
    if drop is None:
        return frame, 0
    return frame.filter(~drop), int(drop.sum())


def _report_bad(
    ref: spec.Reference,
    bad: pl.DataFrame,
    target: pl.DataFrame,
    raw_ids: pl.DataFrame | None,
    tables: dict[str, RawTable],
    name: str,
    severity: Severity,
    report: Report,
) -> None:
    """Say why each bad reference is bad: wrong type, a dropped row, or no such id at all."""
    # The few bad ids are looked up in the (large) tables, not the tables in the bad ids.
    existing = _found(bad["item"], target)
    wrong_type = bad.filter(pl.col("item").is_in(existing))
    rest = bad.filter(~pl.col("item").is_in(existing))
    if raw_ids is not None:
        in_file = _found(rest["item"], raw_ids)
        was_dropped = rest.filter(pl.col("item").is_in(in_file))
        missing = rest.filter(~pl.col("item").is_in(in_file))
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
        head = rows.sort(LINE).head(report.max_examples)
        report.add_rows(
            severity=severity,
            code=code,
            file=name,
            column=ref.column,
            lines=head[LINE].to_list(),
            values=head["item"].to_list(),
            count=rows[LINE].n_unique(),
            message=message,
            fix=fix,
        )


def _found(ids: pl.Series, table: pl.DataFrame) -> pl.Series:
    """Those of `ids` that are a sourcedId of `table` (as a list for is_in)."""
    wanted = ids.unique().implode()
    return table.select(pl.col("sourcedId").filter(pl.col("sourcedId").is_in(wanted)))[
        "sourcedId"
    ].implode()


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
