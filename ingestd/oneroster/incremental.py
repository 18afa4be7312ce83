"""Read a file against the rows of the tenant's last accepted state: only changed lines
are parsed.

A daily export repeats most of yesterday's lines byte for byte. Each line of the
new file is hashed (its line prints, `lineprints.py`: seeded by the header and
the rules); a line whose prints are those of a row of the prior state *is* that
row, already proven valid and quiet, and is taken from the state without being
parsed. The other lines go through the same line checks and parse as a file
read whole. The table that comes out is the one a whole read would give, in
file order, with one more column: ORIGIN, per row the prior row it was taken
from (null: parsed now). The validator checks the value rules of the parsed
rows only; every rule between rows (duplicate ids, references) still sees all
rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ingestd.oneroster.csvfile import (
    LINE,
    RawTable,
    check_lines,
    parse_lines,
    read_header,
    split_lines,
)
from ingestd.oneroster.lineprints import L1, L2, ORIGIN, line_seeds, prints_of
from ingestd.oneroster.report import Report


@dataclass(frozen=True, slots=True)
class PriorRows:
    """One entity of a tenant's last accepted state: its rows, and their line prints."""

    rows: pl.DataFrame  # every column a string
    prints: pl.DataFrame  # L1, L2 (UInt64) row for row; null where a row has none


class NotIncremental(Exception):
    """The file cannot be read against the prior rows; read it whole (nothing was reported)."""


def read_incremental(
    data: bytes, entity: str, name: str, report: Report, prior: PriorRows
) -> RawTable | None:
    """Like `csvfile.read_table`, taking unchanged lines from `prior`; raises NotIncremental
    (before reporting anything) when that cannot be done."""
    if prior.prints.height != prior.rows.height or prior.rows.height >= 2**32 - 1:
        raise NotIncremental
    head = read_header(data, name, report)
    if head is None:
        return None  # as a whole read would say
    data, header, header_bytes = head
    if not set(header) <= set(prior.rows.columns):
        raise NotIncremental  # a column the state does not keep (unknown to OneRoster)
    lines = split_lines(data, name, report)
    if lines is None:
        return None  # not UTF-8: reported, as a whole read would
    body = lines.slice(1)
    last_line = len(lines)
    del lines
    prints = pl.DataFrame({"l": body}).select(prints_of(pl.col("l"), line_seeds(header_bytes)))
    # Joined on the first print alone (one integer key joins fastest), then both compared.
    known = prior.prints.select(
        L1, pl.col(L2).alias("__k2"), pl.int_range(pl.len(), dtype=pl.UInt32).alias(ORIGIN)
    ).drop_nulls()
    found = prints.join(known, on=L1, how="left", maintain_order="left")
    if found.height != body.len():
        raise NotIncremental  # a first print repeated in the state
    origin = found.select(pl.when(pl.col(L2) == pl.col("__k2")).then(ORIGIN)).to_series()
    taken = pl.repeat(0, prior.rows.height, dtype=pl.UInt8, eager=True)
    if taken.scatter(origin.drop_nulls(), 1).sum() != origin.count():
        raise NotIncremental  # a line repeated in the file: two lines, one prior row
    at = origin.is_null().arg_true()  # positions of the lines to read now
    fresh = pl.DataFrame(
        {
            "l": body.gather(at),
            LINE: (at + 2).cast(pl.UInt32),
            L1: prints[L1].gather(at),
            L2: prints[L2].gather(at),
        }
    )
    del body
    checked = check_lines(fresh, header, name, data.endswith(b"\n"), last_line, report)
    if checked is None:
        return None
    data_lines = last_line - 1 - checked.blank_lines
    parsed = parse_lines(header, checked.kept, name, report)
    if parsed is None:
        return None
    parsed.columns = header
    # Row by row in file order: where each row comes from (a prior row, or the k-th parsed
    # row after them), with its line number and prints. Lines the checks dropped have none.
    kept_at = checked.kept[LINE].cast(pl.Int64) - 2
    source = origin.cast(pl.Int64).scatter(
        kept_at, pl.int_range(prior.rows.height, prior.rows.height + kept_at.len(), eager=True)
    )
    l1 = found[L1].scatter(kept_at, checked.kept[L1])  # a fixed line has no prints
    l2 = found[L2].scatter(kept_at, checked.kept[L2])
    rows = (
        pl.DataFrame([source.alias("__src"), l1, l2, origin])
        .with_columns(pl.int_range(2, pl.len() + 2, dtype=pl.UInt32).alias(LINE))
        .filter(pl.col("__src").is_not_null())
    )
    values = pl.concat([prior.rows.select(header), parsed], rechunk=False)[rows["__src"]]
    frame = pl.concat([values, rows.select(L1, L2, ORIGIN)], how="horizontal").select(
        rows[LINE], *header, L1, L2, ORIGIN
    )
    return RawTable(entity, name, header, frame, data_lines, checked.dropped)
