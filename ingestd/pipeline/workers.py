"""The daemon's set workers: claimed sets go through the pipeline off the event loop.

A tenant's sets are processed one at a time, in arrival order (set ids are
ULIDs, so their order is the claim order); different tenants run in parallel,
up to `max_parallel` at once, so one huge district does not hold up every
school. Each worker thread has its own SQLite connection and Pipeline (a
connection is not shared between threads); the tenant lock inside the
pipeline still keeps an operator's `ingestd ingest` from racing the daemon.

A set whose processing raised (the database was locked for too long, the disk
was full) stays `received` and is tried again with growing delays; it is also
redone on the next start, so nothing is lost by giving up for now.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ingestd.events.store import EventStore
from ingestd.logging import get_logger
from ingestd.pipeline.ingest import Pipeline, SetOutcome, TenantPolicy

RETRY_DELAYS = (30.0, 120.0, 600.0, 3600.0)


@dataclass(frozen=True, slots=True)
class Running:
    """A set being processed right now."""

    tenant: str
    set_id: str
    started: float  # time.monotonic()


class SetWorkers:
    """Queues per tenant and a pool of threads that take sets through the pipeline."""

    def __init__(
        self,
        state_dir: Path,
        policy: Callable[[str], TenantPolicy],
        max_parallel: int = 2,
        on_outcome: Callable[[SetOutcome], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.policy = policy
        self.max_parallel = max_parallel
        self.on_outcome = on_outcome
        self._executor = ThreadPoolExecutor(max_parallel, thread_name_prefix="ingestd-set")
        self._local = threading.local()
        self._stores: list[EventStore] = []
        self._stores_lock = threading.Lock()
        self._queues: dict[str, deque[str]] = {}
        self._queued: set[str] = set()
        self._running: dict[str, Running] = {}  # by tenant
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: dict[str, int] = {}
        self._retry_handles: dict[str, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._accepting = True
        self.log = get_logger()
        self.processed = 0

    # --- what the rest of the daemon calls ---------------------------------------------------

    def submit(self, tenant: str, set_id: str) -> None:
        """Queue a recorded (`received`) set; a set already queued or running is ignored."""
        if set_id in self._queued or any(r.set_id == set_id for r in self._running.values()):
            return
        queue = self._queues.setdefault(tenant, deque())
        queue.append(set_id)
        if list(queue) != sorted(queue):  # keep arrival (ULID) order if a retry comes back
            self._queues[tenant] = deque(sorted(queue))
        self._queued.add(set_id)
        self._wake.set()

    async def recover(self) -> int:
        """Adopt set folders a crash left unrecorded and queue every `received` set."""
        pending = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._recover_in_thread
        )
        for tenant, set_id in pending:
            self.submit(tenant, set_id)
        return len(pending)

    async def run(self) -> None:
        """Start sets as slots free up; runs until cancelled (running sets go on)."""
        while True:
            self._dispatch()
            await self._wake.wait()
            self._wake.clear()

    def running(self) -> list[Running]:
        """The sets being processed now."""
        return list(self._running.values())

    def queued(self) -> int:
        """Sets waiting for their turn."""
        return len(self._queued)

    def stuck(self, timeout: float) -> list[Running]:
        """Sets processed for longer than `timeout` seconds."""
        now = time.monotonic()
        return [r for r in self._running.values() if now - r.started > timeout]

    async def drain(self, grace: float) -> list[Running]:
        """Stop starting sets; wait up to `grace` seconds for the running ones. Returns those
        still running: they are abandoned and, left `received`, processed again on start."""
        self._accepting = False
        for handle in self._retry_handles.values():
            handle.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        left = self.running()
        self._executor.shutdown(wait=not left, cancel_futures=True)
        if not left:
            with self._stores_lock:
                for store in self._stores:
                    store.close()
        return left

    # --- inside -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if not self._accepting:
            return
        heads = sorted((q[0], t) for t, q in self._queues.items() if q and t not in self._running)
        for _, tenant in heads:
            if len(self._running) >= self.max_parallel:
                break
            set_id = self._queues[tenant].popleft()
            self._queued.discard(set_id)
            self._running[tenant] = Running(tenant, set_id, time.monotonic())
            task = asyncio.create_task(self._process(tenant, set_id), name=f"set-{set_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, tenant: str, set_id: str) -> None:
        log = self.log.bind(tenant=tenant, set_id=set_id)
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._executor, self._process_in_thread, set_id)
        except Exception as exc:  # the set stays received: retried later and on start
            tries = self._failures[set_id] = self._failures.get(set_id, 0) + 1
            delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1]
            log.error(
                "set.failed",
                error=exc.__class__.__name__,
                message=getattr(exc, "message", None),
                retry_in_seconds=delay,
                attempt=tries,
            )
            if self._accepting:
                self._retry_handles[set_id] = loop.call_later(delay, self._retry, tenant, set_id)
        else:
            self._failures.pop(set_id, None)
            self.processed += 1
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        finally:
            self._running.pop(tenant, None)
            self._wake.set()

    def _retry(self, tenant: str, set_id: str) -> None:
        self._retry_handles.pop(set_id, None)
        self.submit(tenant, set_id)

    def _pipeline(self) -> Pipeline:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            store = EventStore.open(self.state_dir)
            with self._stores_lock:
                self._stores.append(store)
            # Each commit syncs the WAL itself; the checkpoint is the daemon's maintenance task.
            pipeline = self._local.pipeline = Pipeline(
                self.state_dir, store, self.policy, checkpoint_after_set=False
            )
        return pipeline

    def _process_in_thread(self, set_id: str) -> SetOutcome:
        return self._pipeline().process(set_id)

    def _recover_in_thread(self) -> list[tuple[str, str]]:
        pipeline = self._pipeline()
        pipeline.adopt_orphans()
        return [(row.tenant, row.id) for row in pipeline.store.pending_sets()]
