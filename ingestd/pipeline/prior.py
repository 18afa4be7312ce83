"""The tenant's current snapshot, read in a thread of its own while the set is claimed and
read: entity by entity, so reading the set against it (`oneroster/carry.py`) and diffing
it wait only for the entity they have come to.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.carry import NotCarried, Prior, PriorEntity
from ingestd.pipeline.diff import Fingerprints
from ingestd.pipeline.snapshot import Origin, Snapshot, load_snapshot_entities


class SnapshotLoading:
    """The snapshot `set_id` of `tenant` being read (started at once)."""

    def __init__(self, state_dir: Path, tenant: str, set_id: str | None) -> None:
        self.tenant, self.set_id = tenant, set_id
        self.seconds = 0.0  # how long reading took
        self._state_dir = state_dir
        self._snapshot = Snapshot({}, {}, {})
        self._printed: dict[str, PriorEntity] = {}
        self._started = threading.Event()  # lines.json read
        self._ready = {e: threading.Event() for e in spec.ENTITY_NAMES}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingestd-snapshot-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        loading = load_snapshot_entities(self._state_dir, self.tenant, self.set_id, self._snapshot)
        try:
            for n, entity in enumerate(loading):
                if n == 0:
                    self._started.set()  # files and seeds are known
                prints = self._snapshot.lines.get(entity)
                seeds = self._snapshot.seeds.get(entity)
                if prints is not None and seeds is not None:
                    with contextlib.suppress(NotCarried):  # if so, read whole next time
                        self._printed[entity] = PriorEntity.of(
                            self._snapshot.tables[entity], prints, seeds
                        )
                self._ready[entity].set()
        except BaseException as exc:  # raised to whoever waits
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - started
            self._started.set()
            for ready in self._ready.values():
                ready.set()

    def join(self) -> None:
        """Return when reading is over, whatever the outcome."""
        self._thread.join()

    def snapshot(self) -> Snapshot:
        """The whole snapshot (waits for it; raises what reading raised)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._snapshot

    def prior(self) -> Prior | None:
        """What reading the next set against this snapshot needs (None: its rows have no
        line prints); entities are waited for as they are asked for."""
        self._started.wait()
        if self._error is not None:
            raise self._error
        if not self._snapshot.seeds or self._snapshot.files is None:
            return None
        return Prior(
            entities=tuple(self._snapshot.seeds),
            files=self._snapshot.files,
            printed=self._entity,
            tables=lambda: self.snapshot().tables,
        )

    def _entity(self, entity: str) -> PriorEntity | None:
        self._wait(entity)
        return self._printed.get(entity)

    def part(self, entity: str) -> tuple[pl.DataFrame | None, Fingerprints | None, Origin | None]:
        """One entity of the snapshot: its rows, stored fingerprints and origin (None where
        it has none); waits for it."""
        self._wait(entity)
        snapshot = self._snapshot
        return (
            snapshot.tables.get(entity),
            snapshot.fingerprints.get(entity),
            snapshot.origins.get(entity),
        )

    def _wait(self, entity: str) -> None:
        """Return once `entity` is loaded (or known absent); raise what reading raised."""
        if entity in self._ready:
            self._ready[entity].wait()
        if self._error is not None:
            raise self._error
