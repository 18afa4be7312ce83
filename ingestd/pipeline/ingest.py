"""The one path every set takes: claim -> validate -> diff -> safeguards -> commit.

Commit protocol (DESIGN.md, "A set's life"): the new snapshot is written to a
temp folder and renamed into place, then ONE SQLite transaction inserts every
change event, marks the set accepted and points the tenant at the snapshot. A
crash before that transaction commits leaves the old snapshot current and the
set `received`; `recover()` processes it again, and since events are only
inserted in that transaction none is lost or duplicated. (Each entity is diffed
as soon as validation is done with it, and its snapshot file written as soon as
its diff is done, by threads of their own (diffing.py) while the other entities
are validated and diffed and the events inserted; the transaction waits for the
snapshot to be in place before it commits.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestd.config import Config
from ingestd.errors import IngestError, UsageError
from ingestd.events.store import (
    AlreadyDecided,
    EventRange,
    EventStore,
    SetRow,
    StaleBase,
    StoreError,
)
from ingestd.logging import get_logger
from ingestd.oneroster.carry import CARRIABLE, NotCarried, validate_carried
from ingestd.oneroster.report import Severity
from ingestd.oneroster.validate import ValidatedSet, ValidationPolicy, validate_set
from ingestd.pipeline import sets
from ingestd.pipeline.changes import record_events, set_event
from ingestd.pipeline.diff import NATURAL_KEYS, DiffOptions
from ingestd.pipeline.diffing import SetDiffs
from ingestd.pipeline.prior import SnapshotLoading
from ingestd.pipeline.safeguards import SafeguardPolicy, check
from ingestd.pipeline.snapshot import (
    prune_snapshots,
)

EXIT_CODES = {"accepted": 0, "duplicate": 0, "rejected": 1, "held": 3}
_STALE_RETRIES = 5


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """Everything the pipeline needs to know about how one tenant's sets are judged."""

    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    safeguards: SafeguardPolicy = field(default_factory=SafeguardPolicy)
    diff: DiffOptions = field(default_factory=DiffOptions)
    snapshot_retention: int = 14


def tenant_policy(config: Config, tenant: str) -> TenantPolicy:
    """The policy of `tenant`: the global config with the tenant file's overrides."""
    ingest, guards = config.ingest, config.safeguards
    own = config.tenants.get(tenant)
    overrides = own.safeguards if own else None
    required = (own.required_files if own else None) or ingest.required_files
    return TenantPolicy(
        validation=ingest.validation_policy(required),
        safeguards=SafeguardPolicy(
            max_delete_percent=_first(
                overrides and overrides.max_delete_percent, guards.max_delete_percent
            ),
            max_update_percent=_first(
                overrides and overrides.max_update_percent, guards.max_update_percent
            ),
            hold_on_empty=guards.hold_on_empty,
            required_entities=tuple(required),
        ),
        diff=DiffOptions(
            ignore_columns=tuple(ingest.ignore_columns),
            natural_key=bool(own and own.enrollment_key == "natural"),
        ),
        snapshot_retention=ingest.snapshot_retention,
    )


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


@dataclass(slots=True)
class SetOutcome:
    """What became of a set."""

    set_id: str
    tenant: str
    status: str
    summary: dict[str, Any]
    events: EventRange | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (bench, logs)

    @property
    def exit_code(self) -> int:
        """0 accepted (or identical to the current set), 1 rejected, 3 held."""
        return EXIT_CODES.get(self.status, 1)


class Pipeline:
    """Takes claimed sets through validation, diff, safeguards and commit."""

    def __init__(
        self,
        state_dir: Path,
        store: EventStore,
        policy: Callable[[str], TenantPolicy] | None = None,
        *,
        checkpoint_after_set: bool = True,
    ) -> None:
        """`checkpoint_after_set=False`: each commit syncs the WAL itself (the set is
        durable when `process` returns) and the WAL checkpoint, maintenance only, is left
        to the caller (`EventStore.checkpoint`, e.g. from a background task; closing the
        store checkpoints too)."""
        self.state_dir = state_dir
        self.store = store
        self.policy = policy or (lambda tenant: TenantPolicy())
        self.checkpoint_after_set = checkpoint_after_set
        self._timings: dict[str, float] = {}
        self._preloaded: SnapshotLoading | None = None

    # --- entry points ----------------------------------------------------------------------

    def ingest_path(self, tenant: str, path: Path, source: str = "cli") -> SetOutcome:
        """Copy a set from disk (folder or zip) into the state dir and process it. The
        tenant's current snapshot is read while the set is copied."""
        started = time.perf_counter()
        current = self.store.snapshot_of(tenant)
        preload = SnapshotLoading(self.state_dir, tenant, current) if current else None
        self._preloaded = preload
        try:
            set_id, _, digest = sets.claim_copy(self.state_dir, tenant, path)
            claimed = time.perf_counter() - started
            outcome = self.process_claimed(tenant, set_id, digest, source)
        finally:
            self._preloaded = None
            if preload is not None:
                preload.join()
        outcome.timings = {"claim": claimed, **outcome.timings}
        return outcome

    def process_claimed(self, tenant: str, set_id: str, digest: str, source: str) -> SetOutcome:
        """Record a claimed set folder as received, then process it."""
        self.store.add_set(set_id, tenant, source, digest)
        return self.process(set_id)

    def recover(self) -> list[SetOutcome]:
        """Adopt set folders a crash left unrecorded, then process every `received` set."""
        self.adopt_orphans()
        return [self.process(row.id) for row in self.store.pending_sets()]

    def adopt_orphans(self) -> None:
        """Record set folders a crash left between claim and record as `received`."""
        known = self.store.set_ids()
        for tenant, set_id, folder in sets.orphan_sets(self.state_dir, known):
            raw = folder / sets.RAW
            files = [p for p in raw.rglob("*") if p.is_file()]
            self.store.add_set(set_id, tenant, "recovered", sets.digest(files, raw))
            get_logger(tenant=tenant, set_id=set_id).warning("set.adopted")

    def record_failed(
        self, tenant: str, set_id: str, source: str, reasons: list[dict[str, str]]
    ) -> SetOutcome:
        """Record a set that never got as far as validation (a pull that did not complete)
        as rejected with its reasons; it is never diffed, the snapshot stays current."""
        self.store.add_set(set_id, tenant, source, None)
        row = self.store.get_set(set_id)
        assert row is not None
        return self._reject(row, reasons, from_status=("received",))

    def approve(self, set_id: str) -> SetOutcome:
        """Commit a held set as if it had passed its safeguards."""
        row = self._held(set_id)
        return self.process(row.id, approved=True)

    def reject(self, set_id: str) -> SetOutcome:
        """Drop a held set: it stays on disk, the snapshot stays as it is."""
        row = self._held(set_id)
        summary = dict(row.summary or {})
        summary.update(
            status="rejected", reasons=[{"code": "operator", "message": "rejected by an operator"}]
        )
        rng = self.store.decide_set(
            set_id,
            "rejected",
            summary,
            events=[set_event("rejected", summary)],
            from_status=("held",),
        )
        get_logger(tenant=row.tenant, set_id=set_id).info("set.rejected", reason="operator")
        return SetOutcome(set_id, row.tenant, "rejected", summary, rng)

    # --- the path --------------------------------------------------------------------------

    def process(self, set_id: str, *, approved: bool = False) -> SetOutcome:
        """Validate, diff, guard and commit one received (or, approved, held) set."""
        self._timings = {}
        try:
            outcome = self._guarded(set_id, approved)
        finally:
            if self.checkpoint_after_set:
                with self._phase("checkpoint"):
                    self.store.checkpoint()  # outside the commit: see EventStore.checkpoint
        outcome.timings = self._timings
        return outcome

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to the set's timings under `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] = self._timings.get(name, 0.0) + time.perf_counter() - started

    def _guarded(self, set_id: str, approved: bool) -> SetOutcome:
        row = self.store.get_set(set_id)
        if row is None:
            raise UsageError(f"no set {set_id}")
        # One process at a time works on a tenant's sets (the daemon, an operator's
        # `ingestd ingest`, a second recoverer): they would share the set's snapshot folder.
        with sets.tenant_lock(self.state_dir, row.tenant):
            row = self.store.get_set(set_id) or row
            if row.status != ("held" if approved else "received"):  # done meanwhile
                return SetOutcome(set_id, row.tenant, row.status, row.summary or {})
            return self._locked(row, approved)

    def _locked(self, row: SetRow, approved: bool) -> SetOutcome:
        set_id = row.id
        log = get_logger(tenant=row.tenant, set_id=set_id)
        try:
            for _ in range(_STALE_RETRIES):
                try:
                    return self._process(row, approved, log)
                except StaleBase:  # another process accepted a set of this tenant meanwhile
                    log.info("set.rediff")
                except AlreadyDecided:  # another process finished this very set
                    done = self.store.get_set(set_id) or row
                    return SetOutcome(set_id, row.tenant, done.status, done.summary or {})
            raise StoreError(f"the snapshot of {row.tenant} keeps moving; try again")
        except IngestError:
            raise
        except Exception as exc:  # a bug must not wedge the tenant: record it, keep the files
            log.error("set.internal_error", error=exc.__class__.__name__)
            reason = {
                "code": "internal_error",
                "message": f"ingestd failed on this set ({exc.__class__.__name__}); "
                "the files are kept, see the daemon log",
            }
            return self._reject(row, [reason], from_status=("received", "held"))

    def _reject(
        self, row: SetRow, reasons: list[dict[str, str]], from_status: tuple[str, ...]
    ) -> SetOutcome:
        """Decide a set rejected for `reasons` that are not a validation report's."""
        summary = self._summary(row, "rejected")
        summary["reasons"] = reasons
        rng = self.store.decide_set(
            row.id,
            "rejected",
            summary,
            events=[set_event("rejected", summary)],
            from_status=from_status,
        )
        return SetOutcome(row.id, row.tenant, "rejected", summary, rng)

    def _process(self, row: SetRow, approved: bool, log: Any) -> SetOutcome:
        tenant, set_id = row.tenant, row.id
        folder = sets.set_dir(self.state_dir, tenant, set_id)
        current = self.store.snapshot_of(tenant)
        if not approved and current is not None and row.digest:
            base = self.store.get_set(current)
            if base is not None and base.digest == row.digest:
                summary = self._summary(row, "duplicate", base_set_id=current)
                self.store.decide_set(set_id, "duplicate", summary, base_set_id=current)
                log.info("set.duplicate", same_as=current)
                return SetOutcome(set_id, tenant, "duplicate", summary)
        policy = self.policy(tenant)

        # The current snapshot is read (entity by entity, in a thread of its own) while the
        # set is validated; ingest_path starts reading it while the set is copied.
        reader = self._preloaded
        self._preloaded = None  # used once, by this set only
        if reader is None or (reader.tenant, reader.set_id) != (tenant, current):
            reader = SnapshotLoading(self.state_dir, tenant, current)
        # Each entity is diffed as soon as validation is done with it, and its new snapshot
        # file written (threads of their own) while the next is validated and diffed.
        diffs = SetDiffs(self.state_dir, tenant, set_id, reader, policy.diff)
        try:
            return self._validated(row, approved, log, current, folder, policy, reader, diffs)
        finally:
            diffs.close()  # nothing once the snapshot is in place
            reader.join()
            self._timings["read_snapshot"] = reader.seconds
            self._timings["write_snapshot"] = diffs.busy + diffs.writer.busy

    def _validated(
        self,
        row: SetRow,
        approved: bool,
        log: Any,
        current: str | None,
        folder: Path,
        policy: TenantPolicy,
        reader: SnapshotLoading,
        diffs: SetDiffs,
    ) -> SetOutcome:
        tenant, set_id = row.tenant, row.id
        with self._phase("validate"):
            result = self._validate(folder, policy, reader if current else None, log, diffs)
            report_path = self._write_report(folder, result)
        if not result.accepted:
            summary = self._summary(row, "rejected", result=result, report=report_path)
            summary["reasons"] = _top_errors(result)
            rng = self.store.decide_set(
                set_id,
                "rejected",
                summary,
                report_path=str(report_path),
                events=[set_event("rejected", summary)],
            )
            log.info("set.rejected", errors=summary["errors"], report=str(report_path))
            return SetOutcome(set_id, tenant, "rejected", summary, rng)

        return self._decide(row, approved, log, current, result, report_path, diffs)

    def _validate(
        self,
        folder: Path,
        policy: TenantPolicy,
        snapshot: SnapshotLoading | None,
        log: Any,
        diffs: SetDiffs,
    ) -> ValidatedSet:
        """Validate the set: read against the current snapshot when its rows have line
        prints (only the changed lines are parsed), else (or if that cannot be) whole.
        Each entity is handed to `diffs` when validation is done with it."""
        path = sets.raw_input(folder)
        if snapshot is not None:
            prior = snapshot.prior()
            if prior is not None:
                carry = [e for e in CARRIABLE if not _natural(policy, e)]
                try:
                    return validate_carried(
                        path, policy.validation, prior, carry, on_ready=diffs.ready
                    )
                except NotCarried as why:
                    log.info("set.read_whole", reason=str(why))
                    diffs.restart()
        return validate_set(path, policy.validation, prints=True, on_ready=diffs.ready)

    def _decide(
        self,
        row: SetRow,
        approved: bool,
        log: Any,
        current: str | None,
        result: ValidatedSet,
        report_path: Path,
        set_diffs: SetDiffs,
    ) -> SetOutcome:
        tenant, set_id = row.tenant, row.id
        policy = self.policy(tenant)
        writer = set_diffs.writer
        with self._phase("diff"):
            diffs = set_diffs.all(result)
        counts = {e: d.counts for e, d in diffs.items()}
        reasons = check(counts, policy.safeguards, first_set=current is None)
        summary = self._summary(
            row, "accepted", result=result, report=report_path, base_set_id=current
        )
        summary["counts"] = counts
        summary["kept_invalid_rows"] = {e: d.kept_rows for e, d in diffs.items() if d.kept_rows}
        if notes := {e: d.notes for e, d in diffs.items() if d.notes}:
            summary["notes"] = notes  # e.g. the natural key was not unique today
        if reasons and not approved:
            summary.update(status="held", reasons=[r.to_dict() for r in reasons])
            rng = self.store.decide_set(
                set_id,
                "held",
                summary,
                report_path=str(report_path),
                base_set_id=current,
                events=[set_event("held", summary)],
            )
            log.warning("set.held", reasons=[r.describe() for r in reasons])
            return SetOutcome(set_id, tenant, "held", summary, rng)
        if approved:
            summary["approved"] = True

        def snapshot_in_place() -> None:
            with self._phase("commit_waits_for_snapshot"):
                writer.finish()

        events = [*record_events(diffs), set_event("accepted", summary)]
        with self._phase("commit"):
            rng = self.store.decide_set(
                set_id,
                "accepted",
                summary,
                from_status=("held",) if approved else ("received",),
                expect_snapshot=current,
                report_path=str(report_path),
                base_set_id=current,
                events=events,
                accept=True,
                before_commit=snapshot_in_place,  # the COMMIT waits for the snapshot
                durable=not self.checkpoint_after_set,
            )
        with self._phase("prune"):
            prune_snapshots(self.state_dir, tenant, {set_id}, policy.snapshot_retention)
        log.info(
            "set.accepted",
            events=rng.count,
            first_event=rng.first,
            last_event=rng.last,
            carried_rows=sum(rows.lines.len() for rows in result.carried.values()),
        )
        return SetOutcome(set_id, tenant, "accepted", summary, rng)

    def _held(self, set_id: str) -> SetRow:
        row = self.store.get_set(set_id)
        if row is None:
            raise UsageError(f"no set {set_id}")
        if row.status != "held":
            raise UsageError(f"set {set_id} is {row.status}, not held")
        return row

    def _summary(
        self,
        row: SetRow,
        status: str,
        *,
        result: ValidatedSet | None = None,
        report: Path | None = None,
        base_set_id: str | None = None,
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "set_id": row.id,
            "tenant": row.tenant,
            "source": row.source,
            "status": status,
            "received": row.received,
            "base_set_id": base_set_id,
        }
        if result is not None:
            summary["errors"] = result.report.total(Severity.ERROR)
            summary["warnings"] = result.report.total(Severity.WARNING)
            summary["files"] = {n: f.rows for n, f in sorted(result.report.files.items())}
        if report is not None:
            summary["report"] = str(report)
        return summary

    def _write_report(self, folder: Path, result: ValidatedSet) -> Path:
        path = folder / "report.json"
        path.write_text(result.report.to_json() + "\n", encoding="utf-8")
        (folder / "report.txt").write_text(result.report.to_text() + "\n", encoding="utf-8")
        return path


def _natural(policy: TenantPolicy, entity: str) -> bool:
    """True when the entity is matched on a natural key (the diff then needs every row)."""
    return policy.diff.natural_key and entity in NATURAL_KEYS


def _top_errors(result: ValidatedSet, limit: int = 10) -> list[dict[str, Any]]:
    """The first errors of a rejected set, without cell values (they may be student data)."""
    out = []
    for issue in result.report.issues:
        if issue.severity is Severity.ERROR and issue.scope.value != "row":
            out.append(
                {
                    k: v
                    for k, v in issue.to_dict().items()
                    if k not in ("value", "severity", "scope")
                }
            )
        if len(out) >= limit:
            break
    return out


def summary_text(outcome: SetOutcome) -> str:
    """The summary a person reads after `ingestd ingest` / `sets approve`."""
    s = outcome.summary
    lines = [f"set {outcome.set_id} of {outcome.tenant}: {outcome.status}"]
    if outcome.status == "duplicate":
        lines.append(f"  identical to the current set {s.get('base_set_id')}: nothing changed")
    for entity, c in (s.get("counts") or {}).items():
        lines.append(
            f"  {entity:<17} {c['rows']:>9} rows   +{c['created']} ~{c['updated']} -{c['deleted']}"
        )
    for reason in s.get("reasons") or []:
        where = " ".join(
            str(x)
            for x in (reason.get("file"), reason.get("line") and f"line {reason['line']}")
            if x
        )
        label = reason.get("code") or reason.get("rule")
        lines.append(f"  {label}: " + (f"{where}: " if where else "") + reason["message"])
    if s.get("report"):
        lines.append(f"  report: {s['report']}")
    if outcome.events and outcome.events.count:
        lines.append(f"  events {outcome.events.first}..{outcome.events.last}")
    if outcome.status == "held":
        lines.append(f"  approve: ingestd sets approve {outcome.set_id}")
        lines.append(f"  reject:  ingestd sets reject {outcome.set_id}")
    return "\n".join(lines)
