"""[sftp] configuration: where the server listens and what it allows (no asyncssh import here)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingestd.sources.sftp.defender import DefenderConfig


def _split(listen: str) -> tuple[str, int]:
    """(host, port) of "host:port" (brackets of an IPv6 literal removed)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class SftpConfig(BaseModel):
    """[sftp]: the server schools push their exports to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "0.0.0.0:2222"
    """host:port to listen on (port 0: any free port, for tests)."""
    legacy_listen: str | None = None
    """host:port of a second listener that also offers SHA-1 algorithms (group14-sha1 key
    exchange, ssh-rsa host key signatures, hmac-sha1) for clients too old for anything
    else; only tenants with `legacy_algorithms = true` may log in there. Unset: off."""
    max_file_bytes: int = Field(default=2 << 30, gt=0)
    """One uploaded file may not grow beyond this."""
    max_inbox_bytes: int = Field(default=10 << 30, gt=0)
    """A tenant's inbox (files waiting to be claimed) may not hold more than this."""
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    """Writes fail with a clear error when the disk's free space would drop below this."""
    max_connections: int = Field(default=500, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    max_sessions_per_tenant: int = Field(default=10, ge=1)
    max_open_files_per_session: int = Field(default=16, ge=1, le=1024)
    """Files one session may have open for upload at once (each holds write buffers)."""
    login_timeout_seconds: float = Field(default=30.0, gt=0)
    """A connection that has not logged in by then is dropped."""
    idle_timeout_seconds: float = Field(default=900.0, gt=0)
    keepalive_seconds: float = Field(default=60.0, ge=0)
    """Keepalive requests to the client (0: none); 3 unanswered ones drop it."""
    defender: DefenderConfig = Field(default_factory=DefenderConfig)

    @field_validator("listen", "legacy_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
            raise ValueError("must be host:port, e.g. 0.0.0.0:2222")
        return value

    @property
    def host(self) -> str:
        """The host part of `listen` (brackets of an IPv6 literal removed)."""
        return _split(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return _split(self.listen)[1]

    @property
    def legacy_address(self) -> tuple[str, int] | None:
        """(host, port) of `legacy_listen`, or None when it is off."""
        return _split(self.legacy_listen) if self.legacy_listen else None
