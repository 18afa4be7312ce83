"""Turn diffs into change events, in the order a consumer can apply them.

Creates and updates go parents first (orgs, academicSessions, courses, classes,
users, demographics, enrollments), then deletes children first (the reverse),
so that a consumer with foreign keys never sees a row before its parent or a
parent removed before its children. `data` is built by polars as JSON text:
`{"object": {...}}`, plus `"previous_attributes"` (changed fields, old values)
on updates; every value is a string, empty as "".
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import polars as pl

from ingestd.events.store import EventBatch
from ingestd.oneroster import spec
from ingestd.pipeline.diff import PREVIOUS, EntityDiff, columns_of


def record_events(diffs: dict[str, EntityDiff]) -> list[EventBatch]:
    """Every record event of a set, in apply order."""
    batches: list[EventBatch] = []
    for entity in spec.ENTITY_NAMES:
        d = diffs.get(entity)
        if d is None:
            continue
        cols = columns_of(entity, d.state)
        if d.created.height:
            batches.append(_batch(f"{entity}.created", d.created, cols))
        if d.updated.height:
            batches.append(_batch(f"{entity}.updated", d.updated, cols, previous=True))
    for entity in reversed(spec.ENTITY_NAMES):
        d = diffs.get(entity)
        if d is not None and d.deleted.height:
            cols = columns_of(entity, d.deleted)
            batches.append(_batch(f"{entity}.deleted", d.deleted, cols))
    return batches


def set_event(kind: str, summary: dict) -> EventBatch:
    """A set-level event (`sets.accepted`, `sets.rejected`, ...) carrying the set's summary."""
    return EventBatch(f"sets.{kind}", [json.dumps(summary, ensure_ascii=False)])


def _batch(
    type_: str, frame: pl.DataFrame, cols: Iterable[str], *, previous: bool = False
) -> EventBatch:
    """The rows of `frame` as events; the store renders the JSON chunk by chunk."""
    cols = [c for c in cols if c in frame.columns]
    obj = pl.struct(*(pl.col(c).fill_null("") for c in cols)).struct.json_encode()
    parts = [pl.lit('{"object":'), obj]
    if previous:
        parts += [pl.lit(',"previous_attributes":'), pl.col(PREVIOUS)]
    parts.append(pl.lit("}"))
    return EventBatch(type_, frame, pl.concat_str(parts))
