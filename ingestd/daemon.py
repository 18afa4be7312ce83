"""`ingestd run`: the daemon. Starts the components, supervises them, talks to systemd.

Phases as uvicorn does it: start (store -> workers -> watcher -> SFTP), serve,
stop in reverse with a grace period. The inbox watcher, the REST poll scheduler,
the set workers' dispatcher and the maintenance loop are sibling asyncio tasks
under a supervisor: one that fails is logged and restarted with backoff; one that keeps
failing (`MAX_FAILURES` within `FAILURE_WINDOW`) stops the daemon with exit
code 1, so systemd's `Restart=on-failure` starts it afresh.

Signals only set events: SIGTERM/SIGINT stop gracefully (a second SIGINT forces
the exit), SIGHUP reloads tenants without dropping sessions. On stop, uploads
in flight and sets in progress get `[daemon] stop_grace` to finish; a set still
running then is abandoned (its transaction never commits, it stays `received`
and is processed again on start: the same path as a crash, which the commit
protocol makes safe).

systemd (Type=notify): READY=1 once listening, STATUS= a one-line summary,
WATCHDOG=1 every half `WATCHDOG_USEC` only while the loop turns, every
supervised task runs and no set has been processing for `set_timeout`,
STOPPING=1 on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingestd.config import Config, ConfigError, load_config
from ingestd.events.store import EventStore
from ingestd.logging import get_logger
from ingestd.pipeline.ingest import SetOutcome, tenant_policy
from ingestd.pipeline.workers import SetWorkers
from ingestd.sources.inbox import InboxWatcher
from ingestd.sources.pollers.schedule import PollScheduler
from ingestd.sources.sftp.server import SftpService

MAX_FAILURES = 5
FAILURE_WINDOW = 600.0
BACKOFF = (1.0, 2.0, 5.0, 15.0, 60.0)
CHECKPOINT_SECONDS = 60.0


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_UNIX, kind) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


def watchdog_interval() -> float | None:
    """Half of systemd's WATCHDOG_USEC, in seconds, when the watchdog is on for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


@dataclass
class Supervised:
    """One sibling task and its failure history."""

    name: str
    factory: Callable[[], Awaitable[None]]
    task: asyncio.Task[None] | None = None
    failures: list[float] = field(default_factory=list)
    healthy: bool = True


class Supervisor:
    """Runs sibling tasks; restarts one that fails, with backoff; gives up if it keeps failing."""

    def __init__(
        self, on_give_up: Callable[[str], None], backoff: tuple[float, ...] = BACKOFF
    ) -> None:
        self.backoff = backoff
        self.children: dict[str, Supervised] = {}
        self.on_give_up = on_give_up
        self.log = get_logger()
        self._closing = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        child = Supervised(name, factory)
        self.children[name] = child
        child.task = asyncio.create_task(self._keep(child), name=name)

    def healthy(self) -> bool:
        children = self.children.values()
        return all(c.healthy and c.task is not None and not c.task.done() for c in children)

    async def close(self) -> None:
        self._closing = True
        tasks = [c.task for c in self.children.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, child: Supervised) -> None:
        while True:
            try:
                await child.factory()
                raise RuntimeError("returned")  # a component runs until cancelled
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                now = time.monotonic()
                child.failures = [t for t in child.failures if now - t < FAILURE_WINDOW] + [now]
                child.healthy = False
                self.log.error(
                    "daemon.task_failed",
                    task=child.name,
                    error=exc.__class__.__name__,
                    failures=len(child.failures),
                    exc_info=True,
                )
                if len(child.failures) >= MAX_FAILURES:
                    self.log.critical("daemon.task_gave_up", task=child.name)
                    self.on_give_up(child.name)
                    return
                await asyncio.sleep(self.backoff[min(len(child.failures), len(self.backoff)) - 1])
                child.healthy = True
                self.log.info("daemon.task_restarted", task=child.name)


async def run_daemon(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the exit code. `on_ready` hears
    the SFTP port once listening (`ingestd demo` runs the daemon in its own process)."""
    log = get_logger()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    reload = asyncio.Event()
    interrupts = 0
    gave_up: list[str] = []
    current = config

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            log.warning("daemon.forced_exit")
            os._exit(130)
        stop.set()

    def on_give_up(name: str) -> None:
        gave_up.append(name)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    state_dir = config.daemon.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    EventStore.open(state_dir).close()  # migrations, and a clear error now if the db is bad

    def on_outcome(outcome: SetOutcome) -> None:
        sd_notify(f"STATUS={status()}")

    workers = SetWorkers(
        state_dir,
        lambda tenant: tenant_policy(current, tenant),
        max_parallel=config.ingest.max_parallel_sets,
        on_outcome=on_outcome,
    )
    watcher = InboxWatcher(state_dir, lambda: current, workers.submit)
    pollers = PollScheduler(lambda: current, workers.submit)
    sftp = SftpService(config.sftp, state_dir, config.tenants)

    started = False

    def status() -> str:
        busy = ", ".join(f"{r.tenant}" for r in workers.running()) or "none"
        pulling = f"; pulling: {', '.join(pollers.running())}" if pollers.running() else ""
        listening = f"SFTP :{sftp.port}" if started else "SFTP starting"
        return (
            f"{len(current.tenants)} tenants; {listening}; processing: {busy}; "
            f"{workers.queued()} queued; {workers.processed} sets done since start{pulling}"
        )

    recovered = await workers.recover()
    if recovered:
        log.info("daemon.recovering", sets=recovered)
    supervisor = Supervisor(on_give_up)
    supervisor.start("workers", workers.run)
    supervisor.start("inbox", watcher.run)
    supervisor.start("pollers", pollers.run)
    supervisor.start("maintenance", lambda: _maintenance(state_dir))
    try:
        await sftp.start()
    except OSError as exc:
        log.error("daemon.listen_failed", listen=config.sftp.listen, error=str(exc))
        await supervisor.close()
        await workers.drain(config.daemon.stop_grace)
        watcher.close()
        return 1
    started = True
    interval = watchdog_interval()
    if interval:
        supervisor.start(
            "watchdog", lambda: _watchdog(interval, supervisor, workers, lambda: current, status)
        )
    sd_notify(f"READY=1\nSTATUS={status()}")
    if on_ready is not None:
        on_ready(sftp.port)
    log.info(
        "daemon.ready",
        sftp_port=sftp.port,
        tenants=len(config.tenants),
        max_parallel_sets=config.ingest.max_parallel_sets,
        watchdog_seconds=interval,
    )
    abandoned = []
    try:
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                try:
                    fresh = load_config(config.path)
                except ConfigError as exc:
                    log.error("daemon.reload_failed", problems=exc.problems or [exc.message])
                    continue
                current = fresh
                sftp.reload(fresh.tenants)
                pollers.reloaded()
                log.info("daemon.reloaded", tenants=len(fresh.tenants))
                sd_notify(f"STATUS={status()}")
    finally:
        sd_notify("STOPPING=1")
        log.info("daemon.stopping")
        await supervisor.close()  # no new sets are claimed
        grace = current.daemon.stop_grace
        _, abandoned = await asyncio.gather(sftp.stop(grace), workers.drain(grace))
        watcher.close()
        for r in abandoned:
            log.warning("set.abandoned", tenant=r.tenant, set_id=r.set_id)
        log.info("daemon.stopped")
    code = 1 if gave_up else 0
    if abandoned:  # a worker thread is mid-set: leave as a crash would; redone on start
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _watchdog(
    interval: float,
    supervisor: Supervisor,
    workers: SetWorkers,
    config: Callable[[], Config],
    status: Callable[[], str],
) -> None:
    """Feed systemd's watchdog while healthy; a stalled loop never gets here to feed it."""
    log = get_logger()
    starved = False
    while True:
        stuck = workers.stuck(config().daemon.set_timeout)
        if supervisor.healthy() and not stuck:
            sd_notify(f"WATCHDOG=1\nSTATUS={status()}")
            if starved:
                log.info("daemon.watchdog_fed")
            starved = False
        elif not starved:
            starved = True
            log.error(
                "daemon.watchdog_withheld",
                stuck_sets=[r.set_id for r in stuck],
                unhealthy=[n for n, c in supervisor.children.items() if not c.healthy],
            )
        await asyncio.sleep(interval)


async def _maintenance(state_dir: Path) -> None:
    """Copy the WAL into the database file now and then. Commits are durable by themselves
    (the WAL is synced at COMMIT); this keeps the WAL from growing, off every set's path."""
    store = await asyncio.to_thread(EventStore.open, state_dir)
    try:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            await asyncio.to_thread(store.checkpoint)
    finally:
        store.close()
