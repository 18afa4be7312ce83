"""The configuration: pydantic models of ingestd.toml and of tenants.d/*.toml.

Loading validates and builds nothing: no socket, no file beyond the config
itself, no secret is touched here (`ingestd check-config` runs only this).
Every problem is reported at once, one line each, naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ingestd.errors import ConfigError
from ingestd.oneroster import spec
from ingestd.oneroster.reader import ReadLimits
from ingestd.oneroster.validate import ValidationPolicy
from ingestd.sources.sftp.settings import SftpConfig

DEFAULT_CONFIG_PATH = Path("/etc/ingestd/ingestd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/ingestd")
TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Percent = Annotated[float, Field(ge=0, le=100)]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "15m", "6h", "2d"."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as 120, "15m", "6h" or "2d"')
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION_RE.match(value)):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError('must be a duration such as 120, "15m", "6h" or "2d"')


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds; TOML may say 120, "90s", "15m", "6h" or "2d"."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY (possibly several, colon-separated).
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else DEFAULT_STATE_DIR


class DaemonConfig(_Section):
    """[daemon]: where state lives and how logs look."""

    state_dir: Path = Field(default_factory=_default_state_dir)
    """Holds inbox/, sets/, snapshots/, host_keys/ and ingestd.db."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """auto = readable on a terminal, JSON lines otherwise (journald, files, pipes)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe level logged."""
    stop_grace: Duration = 30.0
    """On SIGTERM, uploads in flight and sets in progress get this long to finish; a set
    still running then is abandoned and processed again on start (keep systemd's
    TimeoutStopSec above it)."""
    set_timeout: Duration = 2 * 3600.0
    """A set still being processed after this long counts as stuck: the systemd watchdog
    is no longer fed, so systemd restarts ingestd and the set is processed again."""


class IngestConfig(_Section):
    """[ingest]: what makes a set acceptable, and when loose files form a set."""

    max_invalid_rows_percent: Percent = 1.0
    """A file whose dropped rows exceed this share of its rows rejects the whole set."""
    settle_seconds: float = Field(default=120.0, ge=0)
    """Loose files form a set once no file of the tenant's inbox changed for this long."""
    incomplete_after: Duration = 6 * 3600.0
    """Some but not all required files waiting this long: emit `sets.incomplete` (once)."""
    stale_after: Duration = 36 * 3600.0
    """A tenant that delivered before with no accepted set for this long: `sets.stale`."""
    max_parallel_sets: int = Field(default=2, ge=1, le=64)
    """Sets processed at once (of different tenants; one tenant's sets go one at a time)."""
    required_files: list[str] = Field(default_factory=lambda: list(spec.ENTITY_NAMES))
    """Entities a set must carry when it has no manifest.csv (a manifest decides otherwise)."""
    max_zip_total_bytes: int = Field(default=2 << 30, gt=0)
    """A zip whose entries add up to more than this is rejected before it is expanded."""
    max_zip_ratio: float = Field(default=100.0, gt=1)
    """A zip entry expanding more than this many times its compressed size is rejected."""
    report_examples: int = Field(default=20, ge=1, le=10_000)
    """Examples kept per rule and file in a report (all occurrences are still counted)."""
    snapshot_retention: int = Field(default=14, ge=1)
    """Accepted snapshots kept per tenant (any two kept sets can be diffed again)."""
    ignore_columns: list[str] = Field(default_factory=lambda: ["dateLastModified"])
    """Columns whose changes alone never make an update (some SIS restamp them daily)."""

    @field_validator("required_files")
    @classmethod
    def _known_entities(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in spec.ENTITY_NAMES]
        if unknown:
            raise ValueError(f"unknown entities {unknown}; valid: {', '.join(spec.ENTITY_NAMES)}")
        return value

    def validation_policy(self, required_files: list[str] | None = None) -> ValidationPolicy:
        """The validator's policy as this section sets it (`required_files`: a tenant's own)."""
        return ValidationPolicy(
            max_invalid_rows_percent=self.max_invalid_rows_percent,
            required_entities=tuple(required_files or self.required_files),
            limits=ReadLimits(
                max_total_bytes=self.max_zip_total_bytes, max_ratio=self.max_zip_ratio
            ),
            max_examples=self.report_examples,
        )


class SafeguardsConfig(_Section):
    """[safeguards]: a set that would delete or change too much is held for an operator."""

    max_delete_percent: Percent = 10.0
    """Hold the set when an entity loses more than this share of its rows."""
    max_update_percent: Percent = 75.0
    """Hold the set when more than this share of an entity's rows change."""
    hold_on_empty: bool = True
    """Hold the set when a required entity drops to zero rows."""


class Config(_Section):
    """The whole ingestd.toml, plus the tenants read from tenants.d/ beside it."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    safeguards: SafeguardsConfig = Field(default_factory=SafeguardsConfig)
    sftp: SftpConfig = Field(default_factory=SftpConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict, exclude=True)
    path: Path | None = Field(default=None, exclude=True)
    """The file this was loaded from (None for built-in defaults)."""

    @property
    def tenants_dir(self) -> Path | None:
        """tenants.d/ beside the config file."""
        return self.path.parent / "tenants.d" if self.path else None


class TenantSafeguards(_Section):
    """Per-tenant overrides of [safeguards]."""

    max_delete_percent: Percent | None = None
    max_update_percent: Percent | None = None


class TenantConfig(_Section):
    """tenants.d/<id>.toml: one school or district."""

    id: str
    """The tenant id: lowercase letters, digits, - and _; it names the tenant's folders."""
    name: str = ""
    """A human name, e.g. the school's."""
    enabled: bool = True
    safeguards: TenantSafeguards = Field(default_factory=TenantSafeguards)
    required_files: list[str] | None = None
    """Entities this tenant's sets must carry without a manifest (default: [ingest])."""
    settle_seconds: float | None = Field(default=None, ge=0)
    """Override of [ingest] settle_seconds for this tenant's inbox."""
    enrollment_key: Literal["sourcedId", "natural"] = "sourcedId"
    """`natural`: match enrollments on class + user + role (for SIS that renumber them daily)."""
    password_hash: str | None = None
    """argon2id hash of the SFTP password (`ingestd tenant passwd` writes it)."""
    authorized_keys: list[str] = Field(default_factory=list)
    """OpenSSH public keys allowed to log in as this tenant (`ssh-ed25519 AAAA... comment`)."""
    allow_ips: list[str] = Field(default_factory=list)
    """CIDRs the school's SIS connects from (empty: anywhere)."""
    legacy_algorithms: bool = False
    """Allow ssh-rsa (SHA-1) signatures for this tenant's public keys and let it use the
    legacy SFTP listener (`[sftp] legacy_listen`); for SIS clients too old for SHA-2."""

    # --- REST sources (pulled on a schedule instead of pushed over SFTP) -----------------
    source: Literal["sftp", "oneroster", "powerschool", "clever"] = "sftp"
    """Where the roster comes from: pushed over SFTP, or pulled from a vendor's API."""
    base_url: str | None = None
    """The API's base URL, e.g. https://host/ims/oneroster/v1p1 (Clever: its default)."""
    auth: Literal["oauth2", "oauth1", "bearer"] | None = None
    """OneRoster REST: OAuth 2.0 client credentials, OAuth 1.0a signing, or a static token."""
    token_url: str | None = None
    """OAuth 2.0 token endpoint (oauth2)."""
    client_id: str | None = None
    """OAuth 2.0 client id, or OAuth 1.0a consumer key."""
    client_secret_file: Path | None = None
    """File holding the client secret; a relative name is looked up in
    $CREDENTIALS_DIRECTORY (systemd LoadCredential=), else beside the config file."""
    token_file: Path | None = None
    """File holding a bearer token (auth = "bearer", Clever); looked up like the secret."""
    scopes: list[str] = Field(default_factory=list)
    """OAuth 2.0 scopes to ask for."""
    signature_method: Literal["HMAC-SHA256", "HMAC-SHA1"] = "HMAC-SHA256"
    """OAuth 1.0a signature method."""
    every: Duration | None = None
    """Pull this often ("6h"); the default, without `at`, is daily."""
    at: str | None = None
    """Pull daily at this local time ("02:30") instead."""
    jitter: Duration = 300.0
    """Up to this many seconds added at random to each scheduled pull."""
    max_concurrent_requests: int = Field(default=4, ge=1, le=64)
    """Requests in flight at once to this vendor (Infinite Campus asks for at most 5)."""
    request_timeout: Duration = 60.0
    """Seconds a single request may take before it is retried."""
    page_size: int | None = Field(default=None, ge=1, le=100_000)
    """Records asked for per page (default: the poller's choice for the vendor)."""

    @field_validator("at")
    @classmethod
    def _clock_time(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError('must be a local time of day such as "02:30"')
        return value

    @model_validator(mode="after")
    def _rest_source_complete(self) -> TenantConfig:
        if self.source == "sftp":
            return self
        need = {
            "powerschool": ["base_url", "client_id", "client_secret_file"],
            "clever": ["token_file"],
        }
        if self.source == "oneroster":
            need["oneroster"] = ["base_url", "auth"] + {
                "oauth2": ["token_url", "client_id", "client_secret_file"],
                "oauth1": ["client_id", "client_secret_file"],
                "bearer": ["token_file"],
                None: [],
            }[self.auth]
        missing = [key for key in need[self.source] if getattr(self, key) in (None, "")]
        if missing:
            raise ValueError(f"source = {self.source!r} needs {', '.join(missing)}")
        if self.every is not None and self.at is not None:
            raise ValueError("give `every` or `at`, not both")
        return self

    def secret_path(self, key: str, config_dir: Path | None) -> Path:
        """Where the secret of `key` (client_secret_file, token_file) lives."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"tenant {self.id}: {key} is not set")
        if value.is_absolute():
            return value
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / value).exists():
            return Path(credentials) / value
        return (config_dir or Path.cwd()) / value

    def read_secret(self, key: str, config_dir: Path | None) -> str:
        """The secret of `key`, stripped; ConfigError naming the tenant and key if missing."""
        path = self.secret_path(key, config_dir)
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"tenant {self.id}: {key} {path}: {exc.strerror or 'cannot read'}",
                [
                    f"tenants.d/{self.id}.toml: {key}: put the secret in {path} "
                    "(or in $CREDENTIALS_DIRECTORY with systemd LoadCredential=)"
                ],
            ) from None
        if not secret:
            raise ConfigError(f"tenant {self.id}: {key} {path} is empty")
        return secret

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash: set it with `ingestd tenant passwd`")
        return value

    @field_validator("required_files")
    @classmethod
    def _known_entities(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unknown = [v for v in value if v not in spec.ENTITY_NAMES]
            if unknown:
                raise ValueError(
                    f"unknown entities {unknown}; valid: {', '.join(spec.ENTITY_NAMES)}"
                )
        return value

    @field_validator("allow_ips")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
        return value

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_tenant_id(value)


def validate_tenant_id(value: str) -> str:
    """Return `value` if it is a safe tenant id, else raise ValueError saying what is allowed."""
    if not TENANT_ID_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid tenant id: use 1-63 of a-z 0-9 - _, starting with a "
            "letter or digit"
        )
    return value


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use: --config, then $INGESTD_CONFIG, then /etc/ingestd/ingestd.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("INGESTD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path | None, *, must_exist: bool = True) -> Config:
    """Load and validate the config file and tenants.d/; ConfigError lists every problem."""
    if path is None or (not path.exists() and not must_exist):
        return Config()
    data = _read_toml(path)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration", _problems(exc, path)) from None
    config = config.model_copy(update={"path": path})
    tenants = load_tenants(config.tenants_dir) if config.tenants_dir else {}
    return config.model_copy(update={"tenants": tenants})


def load_tenants(directory: Path) -> dict[str, TenantConfig]:
    """Every tenants.d/*.toml, validated; the file name must be `<id>.toml`."""
    if not directory.is_dir():
        return {}
    tenants: dict[str, TenantConfig] = {}
    problems: list[str] = []
    for file in sorted(directory.glob("*.toml")):
        try:
            data = _read_toml(file)
        except ConfigError as exc:
            problems.extend(exc.problems or [exc.message])
            continue
        data.setdefault("id", file.stem)
        try:
            tenant = TenantConfig.model_validate(data)
        except ValidationError as exc:
            problems.extend(_problems(exc, file))
            continue
        if tenant.id != file.stem:
            problems.append(f"{file}: id {tenant.id!r} does not match the file name")
            continue
        tenants[tenant.id] = tenant
    if problems:
        raise ConfigError(f"{directory}: invalid tenant files", problems)
    return tenants


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file",
            [f"{path}: create it (see config/ingestd.example.toml) or pass --config"],
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML", [f"{path}: {exc}"]) from None


def _problems(exc: ValidationError, path: Path) -> list[str]:
    out = []
    for err in exc.errors():
        loc = err["loc"]
        key = ".".join(str(p) for p in loc)
        where = f"[{loc[0]}] {'.'.join(str(p) for p in loc[1:])}" if len(loc) > 1 else key
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/ingestd.example.toml)"
        out.append(f"{path}: {where}: {msg}")
    return out


Config.model_rebuild()
