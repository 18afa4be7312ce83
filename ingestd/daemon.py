"""`ingestd run`: the daemon. Starts the components, handles signals, talks to systemd.

Phases as uvicorn does it: start (store -> pipeline -> sources), serve, stop in
reverse with a timeout. Signal handlers only set events: SIGTERM/SIGINT stop
gracefully (a second SIGINT forces the exit), SIGHUP reloads tenants without
dropping sessions. So far the daemon runs the SFTP server; the inbox watcher and
the pipeline workers join it next (issue 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from ingestd.config import Config, ConfigError, load_config
from ingestd.logging import get_logger
from ingestd.sources.sftp.server import SftpService

STOP_GRACE_SECONDS = 30.0


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


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    log = get_logger()
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            log.warning("daemon.forced_exit")
            os._exit(130)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    state_dir = config.daemon.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    sftp = SftpService(config.sftp, state_dir, config.tenants)
    await sftp.start()
    status = f"SFTP on {config.sftp.host}:{sftp.port}, {len(config.tenants)} tenants"
    sd_notify(f"READY=1\nSTATUS={status}")
    log.info("daemon.ready", sftp_port=sftp.port, tenants=len(config.tenants))
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
                sftp.reload(fresh.tenants)
                log.info("daemon.reloaded", tenants=len(fresh.tenants))
                sd_notify(f"STATUS=SFTP on port {sftp.port}, {len(fresh.tenants)} tenants")
    finally:
        sd_notify("STOPPING=1")
        log.info("daemon.stopping")
        await sftp.stop(STOP_GRACE_SECONDS)
        log.info("daemon.stopped")
    return 0
