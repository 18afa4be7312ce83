"""Diff one entity's new rows against the tenant's snapshot: created, updated, deleted, new state.

Keyed by sourcedId (or, for enrollments of SIS that renumber them daily, by
classSourcedId + userSourcedId + role). Values compare after normalization:
null equals empty, list fields compare as sets, a blank status equals
`active`, and ignored columns (dateLastModified by default) never make an
update. `status=tobedeleted` is a delete. In a bulk file a missing row is a
delete, except rows the validator dropped as invalid: those keep their last
good version. A delta file only upserts and deletes what it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ingestd.oneroster import spec

NATURAL_KEYS = {"enrollments": ("classSourcedId", "userSourcedId", "role")}
_OLD = "__old"
H1, H2 = "__h1", "__h2"  # a row's fingerprints
_SEEDS = (0x1D2E3F4051627384, 0x7A6B5C4D3E2F1001)


@dataclass(frozen=True, slots=True)
class DiffOptions:
    """How rows are matched and compared."""

    ignore_columns: tuple[str, ...] = ("dateLastModified",)
    natural_key: bool = False  # enrollments keyed by class + user + role


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """Each row's fingerprints (H1, H2 of `fingerprints`), row for row with a frame, and
    the columns they were computed over (the key, then the compared columns)."""

    columns: tuple[str, ...]
    hashes: pl.DataFrame

    def covers(self, columns: tuple[str, ...], height: int) -> bool:
        """True when these are the fingerprints of `columns` of a frame of `height` rows."""
        return self.columns == columns and self.hashes.height == height

    def extend(self, rows: pl.DataFrame) -> Fingerprints:
        """These followed by the fingerprints of `rows`."""
        if rows.is_empty():
            return self
        return Fingerprints(
            self.columns, pl.concat([self.hashes, fingerprints(rows, self.columns)])
        )


@dataclass(slots=True)
class EntityDiff:
    """The changes of one entity and the state it leaves."""

    entity: str
    state: pl.DataFrame  # the new snapshot of this entity
    created: pl.DataFrame  # rows as they are now
    updated: pl.DataFrame  # rows as they are now, plus PREVIOUS (JSON of the changed old values)
    deleted: pl.DataFrame  # rows as they were last seen
    prior_rows: int
    kept_rows: int = 0  # invalid rows whose previous version was kept
    notes: list[str] = field(default_factory=list)
    fingerprints: Fingerprints | None = None  # of `state`, stored with the snapshot
    fingerprint_columns: tuple[str, ...] = ()  # what to compute them over, if not yet done
    from_old: pl.Series | None = None
    """Per row of `state`, the row of the snapshot it is identical to in every column
    (UInt32, null: new or changed); None when unknown. Lets the next snapshot store only
    the rows that differ (snapshot.py)."""
    state_lines: pl.DataFrame | None = None
    """Per row of `state`: LINE and the line prints L1, L2 of the line it was read from
    (null: none, or not read today); None when the set's lines were not printed."""
    rows: int | None = None  # rows of the whole state, when `state` holds only a part of it
    assembly: Any = None
    """When the rows were read against the snapshot (carry.py): `state` holds only the
    rows diffed today, and this (a `carry.StateAssembly`) builds the whole state."""

    def state_fingerprints(self) -> Fingerprints | None:
        """The fingerprints of `state` (computed now if the diff did not need them)."""
        if self.fingerprints is None and self.fingerprint_columns:
            columns = self.fingerprint_columns
            self.fingerprints = Fingerprints(columns, fingerprints(self.state, columns))
        return self.fingerprints

    @property
    def counts(self) -> dict[str, int]:
        """rows / created / updated / deleted, for summaries and safeguards."""
        return {
            "rows": self.state.height if self.rows is None else self.rows,
            "prior_rows": self.prior_rows,
            "created": self.created.height,
            "updated": self.updated.height,
            "deleted": self.deleted.height,
        }


PREVIOUS = "__previous"


def columns_of(entity: str, *frames: pl.DataFrame | None) -> list[str]:
    """Spec columns in spec order, then every metadata.* column any frame has, sorted."""
    meta = sorted({c for f in frames if f is not None for c in f.columns if c not in _spec(entity)})
    return [*_spec(entity), *meta]


def diff_entity(
    entity: str,
    old: pl.DataFrame | None,
    new: pl.DataFrame | None,
    *,
    mode: str = "bulk",
    keep_ids: list[str] | None = None,
    keep_rows: pl.DataFrame | None = None,
    options: DiffOptions | None = None,
    old_fingerprints: Fingerprints | None = None,
    new_lines: pl.DataFrame | None = None,
) -> EntityDiff:
    """Compare `new` (None: the entity was absent from the set) with the snapshot `old`.

    `old_fingerprints` are the snapshot's stored row fingerprints; they are used when
    they cover the columns this diff compares, else computed again. `new_lines`: row for
    row with `new`, LINE and line prints (L1, L2), carried into `state_lines`.
    """
    options = options or DiffOptions()
    cols = columns_of(entity, old, new)
    old = _align(old, cols)
    prior = old.height
    if new is None:  # absent from the set: nothing is known, nothing changes
        empty = old.clear()
        return EntityDiff(
            entity,
            old,
            empty,
            empty.with_columns(_no_previous()),
            empty,
            prior,
            fingerprints=old_fingerprints,
            from_old=pl.int_range(old.height, dtype=pl.UInt32, eager=True),
        )
    new = _align(new, cols)
    notes: list[str] = []
    key = ["sourcedId"]
    if options.natural_key and entity in NATURAL_KEYS:
        natural = list(NATURAL_KEYS[entity])
        if _unique(new, natural) and _unique(old, natural):
            key = natural
        else:
            notes.append("natural key not unique; matched on sourcedId")
    alive = new.select(pl.col("status").is_null() | (pl.col("status") != "tobedeleted"))
    live = new.filter(alive.to_series())
    live_lines = None
    if new_lines is not None and new_lines.height == new.height:
        live_lines = new_lines.filter(alive.to_series())
    doomed_keys = new.filter(pl.col("status") == "tobedeleted").select(key)
    compared = _compared(cols, key, options)
    hashed = (*key, *compared)
    if old.is_empty():  # a first set: everything is new, nothing to match
        empty = old.clear()
        return EntityDiff(
            entity,
            live,
            live,
            empty.with_columns(_no_previous()),
            empty,
            prior,
            notes=notes,
            fingerprint_columns=hashed,  # computed when the snapshot is written
            state_lines=live_lines,
        )
    live_prints = Fingerprints(hashed, fingerprints(live, hashed))
    if old_fingerprints is None or not old_fingerprints.covers(hashed, old.height):
        old_fingerprints = Fingerprints(hashed, fingerprints(old, hashed))
    # Rows whose key and compared values are the same on both sides (equal 128-bit
    # fingerprints) are unchanged: most of a day's rows, set aside by one sort. Only the
    # rest (created, updated, deleted) is matched on the key and compared value by value.
    matching = _match(live_prints.hashes, old_fingerprints.hashes)
    new_pos, old_pos = matching.new_lone, matching.old_lone
    fresh = live if new_pos is None else live[new_pos]
    stale = old if old_pos is None else old[old_pos]
    matched = fresh.select(*key, pl.int_range(pl.len(), dtype=pl.UInt32).alias("__i")).join(
        stale.select(*key, pl.int_range(pl.len(), dtype=pl.UInt32).alias("__j")),
        on=key,
        how="full",
        coalesce=True,
    )
    created = fresh[_positions(matched.filter(pl.col("__j").is_null()), "__i")]
    gone_at = _positions(matched.filter(pl.col("__i").is_null()), "__j")
    gone = stale[gone_at]
    gone_from = (gone_at if old_pos is None else old_pos.gather(gone_at)).cast(pl.UInt32)
    pairs = matched.filter(pl.col("__i").is_not_null() & pl.col("__j").is_not_null()).sort("__i")
    kept = 0
    state, state_prints = live, live_prints
    from_old = _identical(live, old, matching.old_of_new, cols, hashed)
    if mode == "delta":  # only what the file names changes
        deleted = gone.join(doomed_keys, on=key, how="semi", maintain_order="left")
        untouched = gone.join(doomed_keys, on=key, how="anti", maintain_order="left")
        state = pl.concat([live, untouched])
        state_prints = live_prints.extend(untouched)
        live_lines = _unprinted(live_lines, untouched.height)
        from_old = _followed_by(from_old, gone, gone_from, doomed_keys, key, "anti")
    else:
        deleted = gone
        # Invalid rows (the validator dropped them) keep their last good version: no delete.
        # They are matched on the same key as every other row (sourcedId, or the natural key).
        if keep_rows is None and keep_ids:
            keep_rows = pl.DataFrame({"sourcedId": keep_ids}, schema={"sourcedId": pl.String})
        carried = gone.clear()
        if keep_rows is not None and set(key) <= set(keep_rows.columns):
            usable = keep_rows.select(key).drop_nulls()
            carried = gone.join(usable, on=key, how="semi", maintain_order="left")
        if not carried.is_empty():
            kept = carried.height
            deleted = gone.join(carried.select(key), on=key, how="anti", maintain_order="left")
            state = pl.concat([live, carried])
            state_prints = live_prints.extend(carried)
            live_lines = _unprinted(live_lines, carried.height)
            from_old = _followed_by(from_old, gone, gone_from, carried.select(key), key, "semi")
    updated = _updated(fresh[pairs["__i"]], stale[pairs["__j"]], cols, compared)
    return EntityDiff(
        entity,
        state,
        created,
        updated,
        deleted,
        prior,
        kept,
        notes,
        fingerprints=state_prints,
        from_old=from_old,
        state_lines=live_lines,
    )


def _unprinted(lines: pl.DataFrame | None, more: int) -> pl.DataFrame | None:
    """`lines` followed by `more` rows without a line (and without prints)."""
    if lines is None or not more:
        return lines
    return pl.concat([lines, lines.clear(more)])


def fingerprints(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Two independent 64-bit hashes of each row's `columns` (H1, H2; UInt64)."""
    row = pl.struct(*(_raw(c) for c in columns))
    return frame.select(row.hash(_SEEDS[0]).alias(H1), row.hash(_SEEDS[1]).alias(H2))


def fingerprint_probe() -> str:
    """What this polars makes of fixed values: stored fingerprints are only trusted when
    the probe they were stored with is the same (polars may change its hash)."""
    values = ["", "a", "sourcedId", 'é,"x"', None]
    probe = fingerprints(pl.DataFrame({"a": values, "b": values[::-1]}), ("a", "b"))
    return ",".join(str(v) for col in probe.get_columns() for v in col)


@dataclass(frozen=True, slots=True)
class _Matching:
    """Rows of each side with and without a row of the same fingerprints on the other."""

    new_lone: pl.Series | None  # positions (ascending) of new rows without one; None: all
    old_lone: pl.Series | None  # the same for the old rows
    old_of_new: pl.Series | None  # per new row, the old row with its fingerprints, or null


def _match(new: pl.DataFrame, old: pl.DataFrame) -> _Matching:
    """Pair rows of equal fingerprints: a hash join on H1, then H2 compared. When a new
    row's H1 is that of two old rows, or two new rows pair with one old row, nothing is
    paired and every row is matched on the key (keys are unique on both sides, so this
    guards against the impossible, and a 64-bit H1 collision costs only time; a repeat
    within one side that pairs with nothing is left to the key matching of lone rows)."""
    old_keyed = old.select(
        H1, pl.col(H2).alias("__o2"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("__j")
    )
    found = new.select(H1, H2).join(old_keyed, on=H1, how="left", maintain_order="left")
    if found.height != new.height:  # an H1 repeated among the old rows
        return _Matching(None, None, None)
    old_of_new = found.select(pl.when(pl.col(H2) == pl.col("__o2")).then("__j")).to_series()
    taken = pl.repeat(False, old.height, eager=True).scatter(old_of_new.drop_nulls(), True)
    if taken.sum() != old_of_new.count():  # two new rows paired with one old row
        return _Matching(None, None, None)
    return _Matching(old_of_new.is_null().arg_true(), (~taken).arg_true(), old_of_new)


def _identical(
    live: pl.DataFrame,
    old: pl.DataFrame,
    old_of_new: pl.Series | None,
    cols: list[str],
    hashed: tuple[str, ...],
) -> pl.Series | None:
    """Per live row, the old row equal to it in every column, or null. Rows paired by
    fingerprints are equal in the hashed columns; the others (ignored columns, and status,
    which is hashed with blank read as active) are compared here."""
    if old_of_new is None:
        return None
    unhashed = [c for c in cols if c not in hashed or c == "status"]
    if not unhashed:
        return old_of_new
    theirs = old.select(pl.col(unhashed).gather(old_of_new).name.suffix(_OLD))
    same = pl.concat([live.select(unhashed), theirs], how="horizontal").select(
        pl.all_horizontal(pl.col(c).eq_missing(pl.col(c + _OLD)) for c in unhashed)
    )
    return old_of_new.zip_with(
        same.to_series(), pl.repeat(None, live.height, dtype=pl.UInt32, eager=True)
    )


def _followed_by(
    from_old: pl.Series | None,
    gone: pl.DataFrame,
    gone_from: pl.Series,
    keys: pl.DataFrame,
    key: list[str],
    how: str,
) -> pl.Series | None:
    """`from_old` of live rows, then the old positions of the gone rows the state keeps
    (those `how`-joined with `keys`, in their order), as the state concatenates them."""
    if from_old is None:
        return None
    kept = gone.select(key).with_columns(gone_from.alias("__o"))
    kept = kept.join(keys, on=key, how=how, maintain_order="left")  # type: ignore[arg-type]
    return pl.concat([from_old, kept["__o"]])


def _positions(frame: pl.DataFrame, column: str) -> pl.Series:
    """Row positions in file order."""
    return frame[column].sort()


def _compared(cols: list[str], key: list[str], options: DiffOptions) -> list[str]:
    """The columns whose change makes an update."""
    compared = [c for c in cols if c not in key and c not in options.ignore_columns]
    if key != ["sourcedId"] and "sourcedId" in compared:
        compared.remove("sourcedId")  # renumbered daily: not a change worth an event
    return compared


def _updated(
    now: pl.DataFrame, before: pl.DataFrame, cols: list[str], compared: list[str]
) -> pl.DataFrame:
    """Of row pairs (same key, same position in both frames), those whose normalized values
    differ, as they are now, with the previous values of the changed fields as JSON."""
    if now.is_empty():
        return now.with_columns(_no_previous())
    both = pl.concat(
        [now, before.select(pl.col(c).alias(c + _OLD) for c in compared)], how="horizontal"
    )
    changed = {c: ~_norm(pl.col(c), c).eq_missing(_norm(pl.col(c + _OLD), c)) for c in compared}
    both = both.filter(pl.any_horizontal(*changed.values()))
    pieces = [
        pl.when(changed[c]).then(
            pl.concat_str([pl.lit(json.dumps(c) + ":"), _json_string(pl.col(c + _OLD))])
        )
        for c in compared
    ]
    previous = pl.concat_str(
        [pl.lit("{"), pl.concat_str(pieces, separator=",", ignore_nulls=True), pl.lit("}")]
    )
    return both.with_columns(previous.alias(PREVIOUS)).select(*cols, PREVIOUS)


def _norm(expr: pl.Expr, column: str) -> pl.Expr:
    """The comparable form of a value: lists as sorted sets, blank status = active
    (`_align` has already made every empty value null)."""
    value = expr
    if column == "status":
        return value.fill_null("active")
    kind = _kind(column)
    if kind is not None and kind in spec.LIST_KINDS:
        return (
            value.str.split(",")
            .list.eval(pl.element().str.strip_chars())
            .list.unique()
            .list.sort()
            .list.join(",")
        )
    return value


def _raw(column: str) -> pl.Expr:
    """A column as the fingerprint sees it: as is, but a blank status is `active`."""
    return pl.col(column).fill_null("active") if column == "status" else pl.col(column)


def _json_string(expr: pl.Expr) -> pl.Expr:
    """A string column as JSON string literals ("" for null), escaped by polars."""
    return (
        pl.struct(expr.fill_null("").alias("v"))
        .struct.json_encode()
        .str.slice(5)
        .str.strip_suffix("}")
    )


def _no_previous() -> pl.Expr:
    return pl.lit(None, pl.String).alias(PREVIOUS)


def _align(frame: pl.DataFrame | None, cols: list[str]) -> pl.DataFrame:
    """`cols` in order (missing ones null), with "" read as null: an empty value is one value."""
    if frame is None:
        return pl.DataFrame(schema={c: pl.String for c in cols})
    frame = frame.select(
        *(pl.col(c) if c in frame.columns else pl.lit(None, pl.String).alias(c) for c in cols)
    )
    # Tables read from CSV never hold "", so check first (len_bytes costs nothing a cell).
    if frame.select(pl.any_horizontal(pl.all().str.len_bytes() == 0).any()).item():
        frame = frame.with_columns(pl.when(pl.all() != "").then(pl.all()))
    return frame


def _unique(frame: pl.DataFrame, key: list[str]) -> bool:
    return frame.select(key).n_unique() == frame.height


def _spec(entity: str) -> tuple[str, ...]:
    return spec.ENTITY_BY_NAME[entity].column_names


_KINDS = {c.name: c.kind for e in spec.ENTITIES for c in e.columns}


def _kind(column: str) -> spec.Kind | None:
    # List-ness is per name across entities (grades, subjects, ... are lists everywhere).
    return _KINDS.get(column)
