"""Compare two sets on disk with no state: what would change if NEW followed OLD."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingestd.events.store import EventBatch
from ingestd.oneroster import spec
from ingestd.oneroster.validate import ValidatedSet, validate_set
from ingestd.pipeline.changes import record_events
from ingestd.pipeline.diff import EntityDiff, diff_entity
from ingestd.pipeline.ingest import TenantPolicy


@dataclass(slots=True)
class Comparison:
    """Both sets' validation and the diffs between them."""

    old: ValidatedSet
    new: ValidatedSet
    diffs: dict[str, EntityDiff]

    @property
    def ok(self) -> bool:
        """Both sets valid."""
        return self.old.accepted and self.new.accepted

    def events(self) -> list[EventBatch]:
        """The record events an ingest of NEW after OLD would emit, in order."""
        return record_events(self.diffs)


def compare_sets(old: Path, new: Path, policy: TenantPolicy | None = None) -> Comparison:
    """Validate both sets and diff NEW against OLD as the pipeline would."""
    policy = policy or TenantPolicy()
    before = validate_set(old, policy.validation)
    after = validate_set(new, policy.validation)
    diffs: dict[str, EntityDiff] = {}
    if before.accepted and after.accepted:
        for entity in spec.ENTITY_NAMES:
            if entity in before.tables or entity in after.tables:
                diffs[entity] = diff_entity(
                    entity,
                    before.tables.get(entity),
                    after.tables.get(entity),
                    mode=after.modes.get(entity, "bulk"),
                    keep_rows=after.dropped_rows.get(entity),
                    options=policy.diff,
                )
    return Comparison(before, after, diffs)
