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

import polars as pl

from ingestd.oneroster import spec

NATURAL_KEYS = {"enrollments": ("classSourcedId", "userSourcedId", "role")}
_OLD = "__old"


@dataclass(frozen=True, slots=True)
class DiffOptions:
    """How rows are matched and compared."""

    ignore_columns: tuple[str, ...] = ("dateLastModified",)
    natural_key: bool = False  # enrollments keyed by class + user + role


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

    @property
    def counts(self) -> dict[str, int]:
        """rows / created / updated / deleted, for summaries and safeguards."""
        return {
            "rows": self.state.height,
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
) -> EntityDiff:
    """Compare `new` (None: the entity was absent from the set) with the snapshot `old`."""
    options = options or DiffOptions()
    cols = columns_of(entity, old, new)
    old = _align(old, cols)
    prior = old.height
    if new is None:  # absent from the set: nothing is known, nothing changes
        empty = old.clear()
        return EntityDiff(entity, old, empty, empty.with_columns(_no_previous()), empty, prior)
    new = _align(new, cols)
    notes: list[str] = []
    key = ["sourcedId"]
    if options.natural_key and entity in NATURAL_KEYS:
        natural = list(NATURAL_KEYS[entity])
        if _unique(new, natural) and _unique(old, natural):
            key = natural
        else:
            notes.append("natural key not unique; matched on sourcedId")
    live = new.filter(pl.col("status").is_null() | (pl.col("status") != "tobedeleted"))
    doomed_keys = new.filter(pl.col("status") == "tobedeleted").select(key)
    compared = _compared(cols, key, options)
    if old.is_empty():  # a first set: everything is new, nothing to match
        empty = old.clear()
        return EntityDiff(
            entity, live, live, empty.with_columns(_no_previous()), empty, prior, notes=notes
        )
    # One join on the key, carrying row positions and a 64-bit fingerprint of the compared
    # values: a million unchanged rows cost a hash each, and only rows whose fingerprint
    # moved are compared value by value (a collision could hide one update: 2^-64 a row).
    fingerprint = pl.struct(*(_raw(c) for c in compared)).hash().alias("__h")
    matched = live.select(
        *key, fingerprint, pl.int_range(pl.len(), dtype=pl.UInt32).alias("__i")
    ).join(
        old.select(*key, fingerprint, pl.int_range(pl.len(), dtype=pl.UInt32).alias("__j")),
        on=key,
        how="full",
        coalesce=True,
        suffix="_old",
    )
    created = live[_positions(matched.filter(pl.col("__j").is_null()), "__i")]
    gone = old[_positions(matched.filter(pl.col("__i").is_null()), "__j")]
    pairs = matched.filter(
        pl.col("__i").is_not_null()
        & pl.col("__j").is_not_null()
        & (pl.col("__h") != pl.col("__h_old"))
    ).sort("__i")
    kept = 0
    if mode == "delta":  # only what the file names changes
        deleted = gone.join(doomed_keys, on=key, how="semi", maintain_order="left")
        untouched = gone.join(doomed_keys, on=key, how="anti", maintain_order="left")
        state = pl.concat([live, untouched])
    else:
        deleted = gone
        state = live
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
    updated = _updated(live[pairs["__i"]], old[pairs["__j"]], cols, compared)
    return EntityDiff(entity, state, created, updated, deleted, prior, kept, notes)


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
