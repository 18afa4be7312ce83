"""The defender: IPs that keep failing to log in are banned, for longer on each repeat.

Failures are scored per IP in a window; banned IPs are dropped before the SSH
handshake (SFTPGo's order: banned -> connection limits -> auth). A failed login
scores 1. A connection that leaves without trying to log in (a port scan, a load
balancer's or container's TCP health check, a client that shares no algorithm)
scores `score_no_auth`, 0 by default as in SFTPGo: otherwise the health checks
of a load balancer would ban its address, and with it every school behind it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from ingestd.logging import get_logger
from ingestd.sources.sftp.addresses import ip_allowed


class DefenderConfig(BaseModel):
    """[sftp.defender]: bans for IPs that keep failing to log in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failures: int = Field(default=5, ge=1)
    """The score (failed logins, and connections scored by `score_no_auth`) from one IP
    within `window_seconds` that earns a ban."""
    score_no_auth: int = Field(default=0, ge=0)
    """What a connection closed without a login attempt scores (0: nothing; set 1 to ban
    scanners, after listing your load balancers and health checks in `safe_ips`)."""
    window_seconds: float = Field(default=600.0, gt=0)
    ban_seconds: float = Field(default=900.0, gt=0)
    """The first ban; each further ban of the same IP lasts twice as long."""
    max_ban_seconds: float = Field(default=86_400.0, gt=0)
    safe_ips: list[str] = Field(default_factory=list)
    """CIDRs never banned (loopback is not exempt unless listed here)."""


@dataclass(slots=True)
class _Record:
    failures: deque[tuple[float, int]] = field(default_factory=deque)  # (when, score)
    banned_until: float = 0.0
    bans: int = 0


class Defender:
    """Per-IP failure scores and bans, in memory (a restart forgives, as SFTPGo's does)."""

    def __init__(self, config: DefenderConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._ips: dict[str, _Record] = {}
        self.log = get_logger()

    def is_banned(self, ip: str) -> bool:
        """True while `ip` is banned."""
        record = self._ips.get(ip)
        return record is not None and record.banned_until > self.clock()

    def failed(self, ip: str, kind: str) -> None:
        """Score one failure (`kind`: a failed login's reason, or `no_login` for a
        connection that left without trying)."""
        score = self.config.score_no_auth if kind == "no_login" else 1
        if not score or (ip_allowed(ip, self.config.safe_ips) and self.config.safe_ips):
            return
        now = self.clock()
        record = self._ips.setdefault(ip, _Record())
        record.failures.append((now, score))
        while record.failures and record.failures[0][0] < now - self.config.window_seconds:
            record.failures.popleft()
        total = sum(n for _, n in record.failures)
        if total >= self.config.max_failures and record.banned_until <= now:
            seconds = min(self.config.ban_seconds * 2**record.bans, self.config.max_ban_seconds)
            record.bans += 1
            record.banned_until = now + seconds
            record.failures.clear()
            self.log.warning("sftp.ban", ip=ip, seconds=seconds, bans=record.bans, last=kind)
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        if len(self._ips) < 10_000:
            return
        horizon = now - self.config.window_seconds
        for ip in [
            ip
            for ip, r in self._ips.items()
            if r.banned_until < now and (not r.failures or r.failures[-1][0] < horizon)
        ]:
            del self._ips[ip]
