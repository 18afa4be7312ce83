"""The inbox watcher: turns files the schools pushed into sets, and hands them on.

`<state_dir>/inbox/<tenant>/` is what a school's SFTP client sees as `/`.
Uploads appear there only when whole (the SFTP server writes under a hidden
temp name and renames on close). Per tenant, this module decides when what
sits there is a set (DESIGN.md, "A set's life", steps 1-2):

- **Loose files** form a set when every required file is present (a
  `manifest.csv` decides which; without one, the tenant's `required_files`) and
  the inbox has *settled*: nothing in it changed for `settle_seconds` and no
  upload is in progress. Skyward Qmlativ pushes its reports one after another,
  so the first file arriving says nothing about the last.
- **A zip** is a set by itself once it has settled.
- **A folder** a client uploaded whole is a set by itself once settled.
- Files that are not OneRoster (`notes.txt`) travel with the next loose set
  into its folder, where the validator reports them: never deleted.

Claiming moves the files into `sets/<tenant>/<set_id>/raw/` and records the
set `received` (pipeline/sets.py); uploads arriving meanwhile start the next
set. The watcher also raises `sets.incomplete` (some required files waited
`incomplete_after`, once per wait) and `sets.stale` (a tenant that delivered
before has had no accepted set for `stale_after`, once per silence).

watchfiles (inotify) says *that* something changed; what changed is always
read from the folder itself, so a full scan at start (files that arrived
while ingestd was down) and the periodic rescan take the same path.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import watchfiles

from ingestd.config import Config, TenantConfig
from ingestd.events.store import EventBatch, EventStore
from ingestd.fsutil import fsync_path
from ingestd.logging import get_logger
from ingestd.oneroster import spec
from ingestd.oneroster.archive import classify
from ingestd.oneroster.reader import manifest_modes
from ingestd.pipeline import sets
from ingestd.sources.sftp.jail import TEMP_PREFIX

INBOX = "inbox"
NOTICES_FILE = "inbox-notices.json"
RESCAN_SECONDS = 60.0
_WATCH_TICK_MS = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing in a tenant's inbox."""

    path: Path
    kind: str  # entity | manifest | other | zip | folder | partial | upload
    entity: str | None
    changed: float  # wall-clock seconds: the latest of mtime and ctime (a rename sets ctime)


@dataclass(slots=True)
class Plan:
    """What to do with a tenant's inbox now."""

    claims: list[list[Path]] = field(default_factory=list)  # each: the paths of one set
    next_check: float | None = None  # wall clock: when the answer may change
    waiting: Waiting | None = None  # loose files that do not make a set yet


@dataclass(frozen=True, slots=True)
class Waiting:
    """Loose files that are not (yet) a complete set."""

    since: float  # the oldest of them arrived then
    present: list[str]
    missing: list[str]
    partial: list[str]  # client temp names (*.filepart) still there


def scan(folder: Path) -> list[Entry]:
    """The entries of a tenant's inbox, classified."""
    entries = []
    try:
        listing = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for item in listing:
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # claimed or renamed meanwhile
            continue
        path = Path(item.path)
        changed = max(st.st_mtime, st.st_ctime)
        if item.is_symlink():
            continue  # the SFTP jail makes none; never follow one
        if item.is_dir(follow_symlinks=False):
            if item.name.startswith("."):
                continue  # e.g. a claim in progress elsewhere; nothing a client made
            entries.append(Entry(path, "folder", None, max(changed, _tree_changed(path))))
            continue
        if item.name.startswith(TEMP_PREFIX):
            entries.append(Entry(path, "upload", None, changed))
            continue
        kind, entity, _ = classify(item.name)
        if kind == "temp":
            kind = "partial"
        elif kind == "unknown" and item.name.lower().endswith(".zip"):
            kind = "zip"
        elif kind in ("unknown", "gradebook"):
            kind = "other"
        entries.append(Entry(path, kind, entity, changed))
    return sorted(entries, key=lambda e: (e.changed, e.path.name))


def plan(entries: list[Entry], now: float, settle: float, required: list[str]) -> Plan:
    """Which sets are ready to claim, and when to look again."""
    out = Plan()
    deadlines: list[float] = []
    uploading = [e for e in entries if e.kind == "upload" and now - e.changed < settle]
    quiet_since = max((e.changed for e in entries if e.kind != "upload"), default=0.0)
    if uploading:
        quiet_since = max(quiet_since, *(e.changed for e in uploading))
    settled = not uploading and now - quiet_since >= settle
    ready: list[tuple[float, list[Path]]] = []  # claimed in arrival order
    for e in entries:  # zips and folders are sets by themselves
        if e.kind in ("zip", "folder"):
            if now - e.changed >= settle and (e.kind == "zip" or _has_files(e.path)):
                ready.append((e.changed, [e.path]))
            elif now - e.changed < settle:
                deadlines.append(e.changed + settle)
    loose = [e for e in entries if e.kind in ("entity", "manifest", "other")]
    roster = [e for e in loose if e.kind in ("entity", "manifest")]
    if roster:
        manifest = next((e for e in roster if e.kind == "manifest"), None)
        needed = _required_by_manifest(manifest.path) if manifest else None
        needed = required if needed is None else needed
        have = {e.entity for e in roster if e.entity}
        missing = [x for x in needed if x not in have]
        if not missing and settled:
            ready.append((max(e.changed for e in loose), [e.path for e in loose]))
        else:
            if not settled:
                deadlines.append(quiet_since + settle)
            if missing:
                out.waiting = Waiting(
                    since=min(e.changed for e in roster),
                    present=sorted(e.path.name for e in roster),
                    missing=missing,
                    partial=sorted(e.path.name for e in entries if e.kind == "partial"),
                )
    out.claims = [paths for _, paths in sorted(ready, key=lambda r: r[0])]
    out.next_check = min(deadlines) if deadlines else None
    return out


class InboxWatcher:
    """Watches `<state_dir>/inbox/`, claims complete and settled sets, raises notices.

    `config()` gives the current config (it changes on SIGHUP); `submit(tenant, set_id)`
    hands a claimed, recorded set to the workers. File and database work runs in one
    thread of its own, so neither a big claim nor a busy database stalls the event loop.
    """

    def __init__(
        self,
        state_dir: Path,
        config: Callable[[], Config],
        submit: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.inbox = state_dir / INBOX
        self.config = config
        self.submit = submit
        self.clock = clock
        self.log = get_logger()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ingestd-inbox")
        self._store: EventStore | None = None
        self._notices: dict[str, dict[str, float]] = {}
        self._due: dict[str, float] = {}  # tenant -> wall-clock time to look again
        self._unknown_logged: set[str] = set()
        self._unrecorded: list[tuple[str, str, str]] = []  # claimed, not yet in the database
        self.last_scan = 0.0
        self.claimed = 0

    async def run(self) -> None:
        """Scan everything, then react to changes; runs until cancelled."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._notices = await self._call(self._load_notices)
        await self.scan_all()
        next_rescan = time.monotonic() + RESCAN_SECONDS
        async for changes in watchfiles.awatch(
            self.inbox,
            watch_filter=None,  # every change counts, editor-style names included
            recursive=True,
            debounce=200,
            rust_timeout=_WATCH_TICK_MS,
            yield_on_timeout=True,
            ignore_permission_denied=True,
        ):
            dirty = {t for t in (self._tenant_of(path) for _, path in changes) if t}
            now = self.clock()
            dirty |= {t for t, when in self._due.items() if when <= now}
            if time.monotonic() >= next_rescan:
                await self.scan_all()
                next_rescan = time.monotonic() + RESCAN_SECONDS
            elif dirty:
                await self._call(self._check_tenants, sorted(dirty))

    async def scan_all(self) -> None:
        """Look at every tenant's inbox and at every tenant's silence."""
        await self._call(self._check_tenants, None)
        self.last_scan = time.monotonic()

    def close(self) -> None:
        """Release the thread and the database connection (after run() ended)."""
        self._thread.shutdown(wait=True)
        if self._store is not None:
            self._store.close()

    # --- in the watcher's thread ----------------------------------------------------------

    async def _call(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _tenant_of(self, path: str) -> str | None:
        try:
            rel = Path(path).relative_to(self.inbox)
        except ValueError:
            return None
        return rel.parts[0] if rel.parts else None

    def _db(self) -> EventStore:
        if self._store is None:
            self._store = EventStore.open(self.state_dir)
        return self._store

    def _check_tenants(self, only: list[str] | None) -> None:
        self._record_claims()
        config = self.config()
        names = only if only is not None else self._inbox_tenants(config)
        for tenant_id in names:
            tenant = config.tenants.get(tenant_id)
            if tenant is None:
                if tenant_id not in self._unknown_logged:
                    self._unknown_logged.add(tenant_id)
                    self.log.warning("inbox.unknown_tenant", tenant=tenant_id)
                self._due.pop(tenant_id, None)
                continue
            try:
                self._check_inbox(config, tenant)
            except OSError as exc:  # a full disk, a permission problem: try again later
                self.log.error("inbox.error", tenant=tenant_id, error=exc.__class__.__name__)
                self._due[tenant_id] = self.clock() + RESCAN_SECONDS
        if only is None:
            self._check_silence(config)

    def _inbox_tenants(self, config: Config) -> list[str]:
        found = (
            {p.name for p in self.inbox.iterdir() if p.is_dir()} if self.inbox.is_dir() else set()
        )
        return sorted(found | set(config.tenants))

    def _check_inbox(self, config: Config, tenant: TenantConfig) -> None:
        now = self.clock()
        settle = tenant.settle_seconds
        if settle is None:
            settle = config.ingest.settle_seconds
        required = tenant.required_files or config.ingest.required_files
        result = plan(scan(self.inbox / tenant.id), now, settle, required)
        for paths in result.claims:
            self._claim(tenant.id, paths)
        if result.next_check is not None:
            self._due[tenant.id] = result.next_check
        else:
            self._due.pop(tenant.id, None)
        if result.waiting is not None:
            self._check_incomplete(config, tenant.id, result.waiting, now)
        else:
            self._notices.get(tenant.id, {}).pop("incomplete", None)

    def _claim(self, tenant: str, paths: list[Path]) -> None:
        set_id, _, digest = sets.claim_move(self.state_dir, tenant, paths)
        self.claimed += 1
        self.log.info("set.claimed", tenant=tenant, set_id=set_id, files=[p.name for p in paths])
        self._unrecorded.append((tenant, set_id, digest))
        self._record_claims()

    def _record_claims(self) -> None:
        """Record claimed sets as received and hand them on. The database may be busy for a
        while (a huge set's commit): the set folder is already safe, so try again later."""
        while self._unrecorded:
            tenant, set_id, digest = self._unrecorded[0]
            try:
                self._db().add_set(set_id, tenant, "sftp", digest)
            except sqlite3.Error as exc:
                self.log.warning(
                    "set.record_delayed", tenant=tenant, set_id=set_id, error=type(exc).__name__
                )
                self._due[tenant] = self.clock() + 5.0
                return
            self._unrecorded.pop(0)
            self.submit(tenant, set_id)

    def _check_incomplete(self, config: Config, tenant: str, waiting: Waiting, now: float) -> None:
        after = config.ingest.incomplete_after
        if now - waiting.since < after:
            self._due[tenant] = min(self._due.get(tenant, now + after), waiting.since + after)
            return
        if self._notices.get(tenant, {}).get("incomplete") == waiting.since:
            return  # told once for this wait
        data = {
            "tenant": tenant,
            "waiting_since": _iso(waiting.since),
            "present": waiting.present,
            "missing": waiting.missing,
            "unfinished_uploads": waiting.partial,
            "message": f"waiting for {', '.join(waiting.missing)}: the other files arrived "
            f"{(now - waiting.since) / 3600:.1f} h ago",
        }
        self._emit(tenant, "sets.incomplete", data, "incomplete", waiting.since)
        self.log.warning(
            "set.incomplete", tenant=tenant, missing=waiting.missing, present=waiting.present
        )

    def _check_silence(self, config: Config) -> None:
        store = self._db()
        now = self.clock()
        last = {tenant: (snap, accepted) for tenant, snap, accepted in store.tenants()}
        for tenant_id in sorted(config.tenants):
            if tenant_id not in last:
                continue  # never delivered: not silent, just not started
            snapshot, accepted = last[tenant_id]
            since = _epoch(accepted) if accepted else _first_received(store, tenant_id)
            if since is None or now - since < config.ingest.stale_after:
                self._notices.get(tenant_id, {}).pop("stale", None)
                continue
            if self._notices.get(tenant_id, {}).get("stale") == since:
                continue
            hours = (now - since) / 3600
            data = {
                "tenant": tenant_id,
                "last_accepted_set": snapshot,
                "last_accepted_at": accepted,
                "hours_without_accepted_set": round(hours, 1),
                "message": f"no accepted set for {hours:.1f} h; check the school's export "
                "schedule and `ingestd sets --tenant` for rejected or held sets",
            }
            self._emit(tenant_id, "sets.stale", data, "stale", since)
            self.log.warning("tenant.stale", tenant=tenant_id, hours=round(hours, 1))

    def _emit(self, tenant: str, type_: str, data: dict, notice: str, key: float) -> None:
        self._db().add_events(tenant, [EventBatch(type_, [json.dumps(data)])])
        self._notices.setdefault(tenant, {})[notice] = key
        self._save_notices()

    def _load_notices(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads((self.state_dir / NOTICES_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_notices(self) -> None:
        path = self.state_dir / NOTICES_FILE
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(self._notices, sort_keys=True))
        os.replace(temp, path)
        fsync_path(self.state_dir)


def _required_by_manifest(path: Path) -> list[str] | None:
    """Entities the manifest declares bulk or delta; None if it cannot be read (the set is
    then judged by the tenant's required files, and the validator reports the manifest)."""
    try:
        modes = manifest_modes(path.read_bytes())
    except OSError:
        return None
    if modes is None:
        return None
    return [e for e in spec.ENTITY_NAMES if modes.get(e) in ("bulk", "delta")]


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*"))


def _tree_changed(folder: Path) -> float:
    latest = 0.0
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        latest = max(latest, st.st_mtime, st.st_ctime)
    return latest


def _first_received(store: EventStore, tenant: str) -> float | None:
    rows = store.list_sets(tenant=tenant)
    return _epoch(rows[-1].received) if rows else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
