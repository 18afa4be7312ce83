"""Diff an entity read against the snapshot (`oneroster/carry.py`): only the rows that
changed are compared, and the whole new state is assembled from the snapshot's rows.

The rows carried today are identical to their snapshot rows, so they make no event
and pair with nothing else (no changed row shares their id: the reader made sure).
Diffing the changed rows against the snapshot rows no line took (the vanished
ones) therefore gives exactly the events of diffing the whole tables, in the same
order: created and updated in file order, deleted in snapshot order.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ingestd.oneroster.csvfile import LINE
from ingestd.oneroster.lineprints import L1, L2, CarriedRows
from ingestd.pipeline.diff import H1, H2, DiffOptions, EntityDiff, Fingerprints, diff_entity


@dataclass(slots=True)
class StateAssembly:
    """A new state made of rows of the snapshot and rows of the diff of the changed lines,
    row by row in file order (then the rows kept from the snapshot for invalid lines)."""

    prior: pl.DataFrame  # the snapshot's rows
    prior_fingerprints: Fingerprints | None
    part: EntityDiff  # the diff of the changed rows; part.state holds them
    old_row: pl.Series  # UInt32 per state row: the snapshot row it is identical to, or null
    part_row: pl.Series  # UInt32 per state row: its row in part.state (where old_row is null)
    lines: pl.DataFrame  # L1, L2 per state row

    @property
    def height(self) -> int:
        """Rows of the whole state."""
        return self.old_row.len()

    def source(self, rows: pl.Series | None = None) -> pl.Series:
        """Per state row (of those where the mask `rows` is True), its row in `pieces()`:
        a snapshot row, or after them a part row."""
        old, part = self.old_row, self.part_row
        if rows is not None:
            old, part = old.filter(rows), part.filter(rows)
        return pl.select(
            pl.coalesce(pl.lit(old).cast(pl.Int64), pl.lit(part).cast(pl.Int64) + self.prior.height)
        ).to_series()

    def pieces(self) -> tuple[pl.DataFrame, tuple[str, ...] | None]:
        """The snapshot's rows followed by the part's (not rechunked: a sparse gather
        needs none), with their fingerprints (H1, H2) when both sides have them over the
        same columns; and those columns."""
        mine = self.part.state_fingerprints()
        theirs = self.prior_fingerprints
        if (
            mine is None
            or theirs is None
            or mine.columns != theirs.columns
            or theirs.hashes.height != self.prior.height
        ):
            return pl.concat([self.prior, self.part.state], rechunk=False), None
        return (
            pl.concat(
                [
                    pl.concat([self.prior, theirs.hashes.select(H1, H2)], how="horizontal"),
                    pl.concat([self.part.state, mine.hashes.select(H1, H2)], how="horizontal"),
                ],
                rechunk=False,
            ),
            mine.columns,
        )


def diff_carried(
    entity: str,
    prior: pl.DataFrame,
    prior_fingerprints: Fingerprints | None,
    carried: CarriedRows,
    new: pl.DataFrame,
    new_lines: pl.DataFrame | None,
    *,
    keep_rows: pl.DataFrame | None = None,
    options: DiffOptions | None = None,
) -> EntityDiff:
    """The diff of the whole entity (carried rows + `new`, the rows read today) against
    `prior`, computed on the changed rows only; its state is assembled (see StateAssembly)."""
    vanished = carried.vanished
    old_part = prior[vanished]
    old_prints = None
    if prior_fingerprints is not None and prior_fingerprints.hashes.height == prior.height:
        old_prints = Fingerprints(prior_fingerprints.columns, prior_fingerprints.hashes[vanished])
    part = diff_entity(
        entity,
        old_part,
        new,
        keep_rows=keep_rows,
        options=options,
        old_fingerprints=old_prints,
        new_lines=new_lines,
    )
    if new_lines is None:
        raise ValueError(f"{entity}: rows read against the snapshot come with their lines")
    if part.state.columns != prior.columns or part.state_lines is None:
        return _diff_whole(
            entity, prior, prior_fingerprints, carried, new, new_lines, keep_rows, options
        )
    n = part.state.height
    live = int(part.state_lines[LINE].count())  # live rows first, then rows kept (no line)
    from_old = part.from_old
    part_old = (
        vanished.gather(from_old)
        if from_old is not None
        else pl.repeat(None, n, dtype=pl.UInt32, eager=True)
    )
    index = pl.int_range(n, dtype=pl.UInt32, eager=True)
    today = pl.DataFrame(
        {
            LINE: part.state_lines[LINE].head(live),
            "old": part_old.head(live),
            "part": index.head(live),
            L1: part.state_lines[L1].head(live),
            L2: part.state_lines[L2].head(live),
        }
    )
    unchanged = pl.DataFrame(
        {
            LINE: carried.lines,
            "old": carried.prior_rows,
            "part": pl.repeat(None, carried.lines.len(), dtype=pl.UInt32, eager=True),
            L1: carried.prints[L1],
            L2: carried.prints[L2],
        }
    )
    kept = pl.DataFrame(
        {
            LINE: pl.repeat(None, n - live, dtype=pl.UInt32, eager=True),
            "old": part_old.slice(live),
            "part": index.slice(live),
            L1: pl.repeat(None, n - live, dtype=pl.UInt64, eager=True),
            L2: pl.repeat(None, n - live, dtype=pl.UInt64, eager=True),
        }
    )
    rows = pl.concat([pl.concat([unchanged, today]).sort(LINE), kept])
    assembly = StateAssembly(
        prior=prior,
        prior_fingerprints=prior_fingerprints,
        part=part,
        old_row=rows["old"],
        part_row=rows["part"],
        lines=rows.select(L1, L2),
    )
    return EntityDiff(
        entity,
        part.state,
        part.created,
        part.updated,
        part.deleted,
        prior.height,
        part.kept_rows,
        part.notes,
        rows=assembly.height,
        assembly=assembly,
    )


def _diff_whole(
    entity: str,
    prior: pl.DataFrame,
    prior_fingerprints: Fingerprints | None,
    carried: CarriedRows,
    new: pl.DataFrame,
    new_lines: pl.DataFrame,
    keep_rows: pl.DataFrame | None,
    options: DiffOptions | None,
) -> EntityDiff:
    """The plain diff of the whole new table: the carried rows put back among the rows
    read today, in file order (when the state cannot be assembled from the snapshot's)."""
    columns = new.columns
    carried_rows = prior[carried.prior_rows].select(
        pl.col(c) if c in prior.columns else pl.lit(None, pl.String).alias(c) for c in columns
    )
    whole = pl.concat(
        [
            pl.concat([carried_rows, pl.DataFrame([carried.lines.alias(LINE)])], how="horizontal"),
            pl.concat([new, new_lines.select(LINE)], how="horizontal"),
        ]
    ).sort(LINE)
    lines = pl.concat(
        [
            pl.concat(
                [pl.DataFrame([carried.lines.alias(LINE)]), carried.prints], how="horizontal"
            ),
            new_lines.select(LINE, L1, L2),
        ]
    ).sort(LINE)
    return diff_entity(
        entity,
        prior,
        whole.drop(LINE),
        keep_rows=keep_rows,
        options=options,
        old_fingerprints=prior_fingerprints,
        new_lines=lines,
    )
