"""When each REST tenant is pulled, inside `ingestd run`.

Each tenant has its own schedule (`every = "6h"`, or `at = "02:30"` local time,
daily; daily at the moment of the first start when neither is given) plus a
random jitter, so a hundred districts configured alike do not hit a vendor at
the same second. Each pull is a task of its own: a slow or failing vendor
delays nobody else, and a tenant is never pulled twice at once. The last pull's
time comes from the database, so a restart does not pull everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from ingestd.config import Config, TenantConfig
from ingestd.events.store import EventStore
from ingestd.logging import get_logger
from ingestd.sources.pollers.runner import PullOutcome, pull_set

DAY = 86400.0
MAX_SLEEP = 30.0


def next_run(tenant: TenantConfig, last: float | None, now: float, rng: random.Random) -> float:
    """Wall-clock time of the tenant's next pull, given its last pull's start (or None)."""
    jitter = rng.uniform(0, tenant.jitter) if tenant.jitter else 0.0
    if tenant.at is not None:
        hour, minute = map(int, tenant.at.split(":"))
        base = datetime.fromtimestamp(max(now, last + 60 if last else now))
        target = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if target.timestamp() <= base.timestamp():
            target += timedelta(days=1)
        return target.timestamp() + jitter
    every = tenant.every if tenant.every is not None else DAY
    if last is None:
        return now + min(jitter, 5.0)  # never pulled: soon
    return max(now, last + every + jitter)


class PollScheduler:
    """Runs every enabled REST tenant's pulls on schedule; hands completed ones on."""

    def __init__(
        self,
        config: Callable[[], Config],
        submit: Callable[[str, str], None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.submit = submit
        self.rng = rng or random.Random()
        self.log = get_logger()
        self._due: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self.outcomes: list[PullOutcome] = []

    def reloaded(self) -> None:
        """Tenants changed (SIGHUP): schedules are worked out again."""
        self._due.clear()
        self._wake.set()

    def running(self) -> list[str]:
        return sorted(self._running)

    async def run(self) -> None:
        try:
            while True:
                config = self.config()
                tenants = {
                    t.id: t for t in config.tenants.values() if t.enabled and t.source != "sftp"
                }
                now = time.time()
                for tenant_id, tenant in tenants.items():
                    if tenant_id not in self._due:
                        last = await asyncio.to_thread(_last_pull, config, tenant)
                        self._due[tenant_id] = next_run(tenant, last, now, self.rng)
                        self.log.info(
                            "poll.scheduled", tenant=tenant_id, at=_iso(self._due[tenant_id])
                        )
                    if self._due[tenant_id] <= now and tenant_id not in self._running:
                        self._start(tenant)
                for gone in set(self._due) - set(tenants):
                    self._due.pop(gone)
                upcoming = [d for t, d in self._due.items() if t not in self._running]
                delay = min([MAX_SLEEP, *(d - now for d in upcoming)])
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.05, delay))
        finally:
            for task in self._running.values():
                task.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _start(self, tenant: TenantConfig) -> None:
        started = time.time()
        task = asyncio.create_task(self._pull(tenant, started), name=f"pull-{tenant.id}")
        self._running[tenant.id] = task

    async def _pull(self, tenant: TenantConfig, started: float) -> None:
        try:
            outcome = await pull_set(self.config(), tenant)
            self.outcomes.append(outcome)
            if outcome.error is None:
                self.submit(tenant.id, outcome.set_id)
        except Exception as exc:  # never let one tenant's bug stop the scheduler
            self.log.error("poll.crashed", tenant=tenant.id, error=exc.__class__.__name__)
        finally:
            self._running.pop(tenant.id, None)
            current = self.config().tenants.get(tenant.id, tenant)
            self._due[tenant.id] = next_run(current, started, time.time(), self.rng)
            self.log.info("poll.scheduled", tenant=tenant.id, at=_iso(self._due[tenant.id]))
            self._wake.set()


def _last_pull(config: Config, tenant: TenantConfig) -> float | None:
    """When this tenant was last pulled (its newest set from its REST source)."""
    db = config.daemon.state_dir / "ingestd.db"
    if not db.exists():
        return None
    with EventStore(db) as store:
        for row in store.list_sets(tenant=tenant.id, limit=20):
            if row.source == tenant.source:
                return datetime.fromisoformat(row.received.replace("Z", "+00:00")).timestamp()
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
