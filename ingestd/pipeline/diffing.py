"""A set's diffs: each entity is diffed, in a thread of its own, as soon as validation is
done with it (while validation goes on with the next), and its new snapshot file is
handed to the snapshot writer as soon as its diff is done. Nothing is kept unless the
set is accepted: `close` drops what was written.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ingestd.oneroster import spec
from ingestd.oneroster.validate import ValidatedSet
from ingestd.pipeline.carry import diff_carried
from ingestd.pipeline.diff import DiffOptions, EntityDiff, diff_entity
from ingestd.pipeline.prior import SnapshotLoading
from ingestd.pipeline.snapshot import Reuse, SnapshotWriter


class SetDiffs:
    """The diffs of one set against the snapshot `loading` reads, and the writer of the
    snapshot they make."""

    def __init__(
        self,
        state_dir: Path,
        tenant: str,
        set_id: str,
        loading: SnapshotLoading,
        options: DiffOptions,
    ) -> None:
        self._where = (state_dir, tenant, set_id)
        self._loading = loading
        self._options = options
        self.busy = 0.0  # seconds writers of dropped attempts spent
        self._start()

    def _start(self) -> None:
        self.writer = SnapshotWriter(*self._where)
        # Two at a time: polars leaves each a core part of the time.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="ingestd-diff")
        self._started: dict[str, Future[EntityDiff]] = {}

    def ready(self, result: ValidatedSet, entity: str) -> None:
        """Validation is done with `entity` (its rows in `result` are final): diff it."""
        self._started[entity] = self._pool.submit(self._diff, result, entity)

    def restart(self) -> None:
        """Drop every diff started and what was written (validation starts over)."""
        self.close()
        self.busy += self.writer.busy
        self._start()

    def all(self, result: ValidatedSet) -> dict[str, EntityDiff]:
        """Every entity's diff, in spec order; those not started yet are started now."""
        old = self._loading.snapshot().tables
        entities = [e for e in spec.ENTITY_NAMES if e in result.tables or e in old]
        self.writer.describe_lines(tuple(sorted(result.modes)), result.seeds)
        for entity in entities:
            if entity not in self._started:
                self.ready(result, entity)
        return {entity: self._started[entity].result() for entity in entities}

    def close(self) -> None:
        """Let no diff run on; drop the snapshot being written (nothing once in place)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.writer.abort()

    def _diff(self, result: ValidatedSet, entity: str) -> EntityDiff:
        old, fingerprints, origin = self._loading.part(entity)
        carried = result.carried.get(entity)
        if carried is not None and old is not None:
            d = diff_carried(
                entity,
                old,
                fingerprints,
                carried,
                result.tables[entity],
                result.prints.get(entity),
                keep_rows=result.dropped_rows.get(entity),
                options=self._options,
            )
            if d.assembly is not None:
                self.writer.add_assembled(entity, d.assembly, origin)
                return d
        else:
            d = diff_entity(
                entity,
                old,
                result.tables.get(entity),
                mode=result.modes.get(entity, "bulk"),
                keep_rows=result.dropped_rows.get(entity),
                options=self._options,
                old_fingerprints=fingerprints,
                new_lines=result.prints.get(entity),
            )
        reuse = None
        if origin is not None and d.from_old is not None:
            reuse = Reuse(origin, origin.rows_in_base(d.from_old))
        lines = d.state_lines if entity in result.seeds else None
        self.writer.add(entity, d.state, d.state_fingerprints, reuse, lines)
        return d
