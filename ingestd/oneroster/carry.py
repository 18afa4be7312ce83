"""Read a set against the tenant's last accepted state: only the lines that changed are
parsed and checked.

A daily export repeats most of yesterday's lines byte for byte. Each line of the
new file is hashed (its line prints, `lineprints.py`, seeded by the header and
the rules). A line whose prints are those of a row of the last accepted state
that had nothing to report *is* that row: it is carried, not parsed. The other
lines are read and checked as a file of their own would be (same reader, same
rules, their own line numbers), and the rules between rows are completed for
the carried ones:

- duplicate ids: no changed row may have the id of a carried row;
- references: the carried rows are good targets; and no carried row may point
  to a row that was good in the last state and is not today.

Whenever the outcome could differ from reading the set whole (a changed line
with a problem of its own, a changed header, a file more or less than last
time, a delta file, a carried row hit by today's changes, ...) `NotCarried` is
raised and the caller reads the set whole. So the report, the tables and the
diff are those of a whole read, by construction or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.archive import Entry, classify
from ingestd.oneroster.csvfile import LINE, RawTable, read_table
from ingestd.oneroster.lineprints import (
    L1,
    L2,
    CarriedRows,
    NotCarried,
    body_lines,
    header_line,
    line_seeds,
    prints_of,
)
from ingestd.oneroster.reader import read_set
from ingestd.oneroster.report import Report
from ingestd.oneroster.validate import OnReady, ValidatedSet, ValidationPolicy, validate_raw

__all__ = ["CARRIABLE", "NotCarried", "Prior", "PriorEntity", "validate_carried"]

_ANCHOR_EVERY = 16  # lines between two lines looked up by binary search first

# Entities whose rows can be carried: not those checked for parent cycles (orgs,
# academicSessions: small, and a cycle involves rows that did not change).
CARRIABLE = tuple(
    e for e in spec.ENTITY_NAMES if not any(r.entity == e and r.no_cycles for r in spec.REFERENCES)
)


@dataclass(frozen=True, slots=True)
class PriorEntity:
    """One entity of the last accepted state: its rows and their line prints."""

    rows: pl.DataFrame
    prints: pl.DataFrame  # L1, L2 row for row with `rows`; null where a row has none
    known: pl.DataFrame  # L1 (sorted, unique), "__k2" (L2), "__o" (the row): rows with prints
    seeds: tuple[int, int]  # what the prints were seeded with

    @classmethod
    def of(cls, rows: pl.DataFrame, prints: pl.DataFrame, seeds: tuple[int, int]) -> PriorEntity:
        """The entity with `prints` (L1, L2 row for row with `rows`; null: none); raises
        NotCarried if two rows have the same first print (the same line twice)."""
        known = (
            prints.select(
                L1, pl.col(L2).alias("__k2"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("__o")
            )
            .drop_nulls()
            .sort(L1)
        )
        if known.select((pl.col(L1) == pl.col(L1).shift(1)).any()).item():
            raise NotCarried("a first line print repeated in the state")
        return cls(rows, prints, known, seeds)

    def locate(self, prints: pl.DataFrame) -> pl.Series:
        """Per line of a file (its L1, L2 in `prints`), the row with the same prints, or
        null (UInt32).

        A file mostly repeats the prior lines in their order, so each line is first looked
        for where the line before it was found (the offset of an anchor line every
        `_ANCHOR_EVERY` lines, found by binary search in the sorted prints, carried down);
        the lines not there (changed, moved) are then searched for one by one."""
        n, m = prints.height, self.prints.height
        anchors = pl.int_range(0, n, _ANCHOR_EVERY, dtype=pl.UInt32, eager=True)
        offsets = self._search(prints, anchors).cast(pl.Int64) - anchors.cast(pl.Int64)
        carried_down = (
            pl.repeat(None, n, dtype=pl.Int64, eager=True)
            .scatter(anchors, offsets)
            .forward_fill()
            .backward_fill()
            .fill_null(0)
        )
        guess = pl.int_range(n, dtype=pl.Int64, eager=True) + carried_down
        ok = (guess >= 0) & (guess < m)
        at = guess.clip(0, max(m - 1, 0)).cast(pl.UInt32)
        if m:
            ok = ok & (self.prints[L1].gather(at) == prints[L1])
            ok = (ok & (self.prints[L2].gather(at) == prints[L2])).fill_null(False)
        origin = pl.select(pl.when(pl.lit(ok)).then(pl.lit(at))).to_series()
        misses = (~ok).arg_true()
        if misses.len():
            origin = origin.scatter(misses, self._search(prints, misses))
        return origin

    def _search(self, prints: pl.DataFrame, at: pl.Series) -> pl.Series:
        """The rows (UInt32, null: none) with the prints of lines `at`, by binary search."""
        if self.known.is_empty() or at.is_empty():
            return pl.repeat(None, at.len(), dtype=pl.UInt32, eager=True)
        l1, l2 = prints[L1].gather(at), prints[L2].gather(at)
        j = self.known[L1].search_sorted(l1, side="left").clip(0, self.known.height - 1)
        hit = (self.known[L1].gather(j) == l1) & (self.known["__k2"].gather(j) == l2)
        return pl.select(pl.when(pl.lit(hit)).then(pl.lit(self.known["__o"].gather(j)))).to_series()


@dataclass(frozen=True, slots=True)
class Prior:
    """The last accepted state, as far as reading the next set against it needs; it may
    still be loading (each entity is waited for when it is needed)."""

    entities: tuple[str, ...]  # the entities whose rows may have line prints
    files: tuple[str, ...]  # the entity files of the set that made the state
    printed: Callable[[str], PriorEntity | None]  # an entity with prints (waits for it)
    tables: Callable[[], dict[str, pl.DataFrame]]  # every entity of the state (waits)


def validate_carried(
    path: Path,
    policy: ValidationPolicy,
    prior: Prior,
    carry: Collection[str] = CARRIABLE,
    progress: Callable[[str], None] | None = None,
    on_ready: OnReady | None = None,
) -> ValidatedSet:
    """Read and validate the set at `path` against `prior`, carrying the unchanged rows of
    the entities in `carry`; raises NotCarried when the set must be read whole."""
    report = Report(source=str(path), max_examples=policy.max_examples)
    carried = {e for e in prior.entities if e in carry and e in CARRIABLE}
    # The lines of the largest files are matched in a thread of its own while the others
    # are read (polars leaves the second core idle part of the time).
    with ThreadPoolExecutor(1, thread_name_prefix="ingestd-carry") as ahead:
        early = _match_early(path, carried, prior, ahead)

        def read(entry: Entry, entity: str, report: Report) -> RawTable | None:
            printed = prior.printed(entity) if entity in carried else None
            if printed is None:
                return read_table(entry.load(), entity, entry.name, report, prints=True)
            started = early.get(entry.path) if entry.path is not None else None
            if started is not None and not started.cancel():
                return _read_changed(entry.name, entity, printed, started.result(), report)
            return _read_changed(entry.name, entity, printed, _match_entry(entry, printed), report)

        try:
            raw = read_set(path, report, policy.limits, progress, read=read)
        finally:
            for started in early.values():
                started.cancel()
    raw.prior = prior.tables()
    raw.prior_entities = prior.files
    return validate_raw(raw, report, policy, progress, on_ready)


def _match_early(
    path: Path, carried: set[str], prior: Prior, pool: ThreadPoolExecutor
) -> dict[Path, Future[_Matched]]:
    """The files of a set folder whose lines are matched in `pool`, largest first."""
    if not path.is_dir():
        return {}
    found = []
    for file in path.iterdir():
        kind, entity, _ = classify(file.name)
        if kind == "entity" and entity in carried and file.is_file() and not file.is_symlink():
            found.append((file.stat().st_size, file, entity))
    found.sort(key=lambda f: f[0], reverse=True)
    return {file: pool.submit(_match_later, file, entity, prior) for _, file, entity in found}


def _match_later(path: Path, entity: str, prior: Prior) -> _Matched:
    printed = prior.printed(entity)
    if printed is None:  # not used: the file is read whole
        raise NotCarried(f"{entity} has no line prints")
    return _match_file(path, printed)


@dataclass(frozen=True, slots=True)
class _Matched:
    """A file's lines matched with the prior rows' prints."""

    lines: pl.Series  # every line after the header
    prints: pl.DataFrame  # their L1, L2
    origin: pl.Series  # UInt32 per line: the prior row it is, or null (changed)
    changed_at: pl.Series  # the lines (0 = the first after the header) with no prior row
    taken: pl.Series  # Boolean per prior row: a line is it
    own: bytes  # the changed lines as a file of their own (the header first)


def _match_entry(entry: Entry, prior: PriorEntity) -> _Matched:
    if entry.path is not None:
        return _match_file(entry.path, prior)
    data = entry.load()
    return _match(data, data, data.endswith(b"\n"), prior)


def _match_file(path: Path, prior: PriorEntity) -> _Matched:
    """A file of a folder is read by polars from disk (mapped, not copied)."""
    head, ends_with_newline = _ends(path)
    return _match(path, head, ends_with_newline, prior)


def _match(
    source: bytes | Path, head: bytes, ends_with_newline: bool, prior: PriorEntity
) -> _Matched:
    """Match the lines of a file (its bytes or path; `head`: its first line at least) with
    the prior rows; raises NotCarried when that cannot be done."""
    header = header_line(head)
    seeds = line_seeds(header)
    if seeds != prior.seeds:
        raise NotCarried("another header (or other rules) than the last accepted file")
    lines = body_lines(source)
    if lines is None or lines.is_empty() or prior.rows.height >= 2**32 - 1:
        raise NotCarried("the lines cannot be split as the reader splits them")
    prints = prints_of(lines, seeds)
    origin = prior.locate(prints)
    taken = pl.repeat(False, prior.rows.height, eager=True).scatter(origin.drop_nulls(), True)
    if taken.sum() != origin.count():
        raise NotCarried("a line repeated in the file")
    changed_at = origin.is_null().arg_true()
    try:
        header_text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotCarried("the header is not UTF-8") from exc
    last_changed = changed_at.len() and changed_at[-1] == lines.len() - 1
    ends = b"" if last_changed and not ends_with_newline else b"\n"
    body = lines.gather(changed_at).str.join("\n").item() if changed_at.len() else ""
    own = (header_text + ("\n" + body if changed_at.len() else "")).encode() + ends
    return _Matched(lines, prints, origin, changed_at, taken, own)


def _read_changed(
    name: str, entity: str, prior: PriorEntity, matched: _Matched, report: Report
) -> RawTable:
    """The file's changed lines read as a file of their own, what the reader says of them
    told with their line numbers in the file; its unchanged lines are the prior rows they
    are."""
    origin, changed_at, taken = matched.origin, matched.changed_at, matched.taken
    scratch = Report(source=name, max_examples=report.max_examples)
    table = read_table(matched.own, entity, name, scratch)
    if table is None or scratch.rejected:
        raise NotCarried("a changed line makes the file unreadable")
    at = (changed_at + 2).cast(pl.UInt32)  # per line of `own` after its header, its LINE

    def line_of(own_line: int) -> int:
        return int(at[own_line - 2])

    for issue in scratch.issues:
        report.issues.append(
            issue if issue.line is None else replace(issue, line=line_of(issue.line))
        )
    for key, n in scratch.counts.items():
        report.counts[key] = report.counts.get(key, 0) + n
    frame = table.frame.with_columns(at.gather(table.frame[LINE].cast(pl.Int64) - 2).alias(LINE))
    fixed = table.fixed_lines
    if fixed is not None:
        fixed = at.gather(fixed.cast(pl.Int64) - 2)
    clash = (
        prior.rows.select(
            (pl.col("sourcedId").is_in(frame["sourcedId"].implode()) & pl.lit(taken)).any()
        ).item()
        if frame.height
        else False
    )
    if clash:
        raise NotCarried("a changed row has the sourcedId of an unchanged one")
    kept_at = origin.is_not_null()
    carried = CarriedRows(
        prior=prior.rows,
        prior_rows=origin.drop_nulls(),
        lines=(kept_at.arg_true() + 2).cast(pl.UInt32),
        taken=taken,
        prints=matched.prints.filter(kept_at),
    )
    blank = changed_at.len() - table.data_lines  # blank lines are never carried
    return RawTable(
        entity,
        name,
        table.header,
        frame,
        matched.lines.len() - blank,
        table.dropped_lines,
        fixed,
        prints=matched.prints,
        seeds=prior.seeds,
        carried=carried,
    )


def _ends(path: Path) -> tuple[bytes, bool]:
    """The start of a file (its whole first line, if it has one) and whether it ends with
    a line feed."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
        while b"\n" not in head and (more := f.read(1 << 20)):
            head += more
        f.seek(0, 2)
        if f.tell() == 0:
            return head, False
        f.seek(-1, 2)
        return head, f.read(1) == b"\n"
