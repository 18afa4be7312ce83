"""Pulls as sets: run a tenant's poller, write what it returned as a set, hand it on.

A completed pull becomes `sets/<tenant>/<set_id>/raw/` holding the OneRoster
CSV files and a manifest (entities the API did not share are declared
`absent`), plus `pages/` with every response body gzip-compressed for audit;
the set is recorded `received` and goes through the same pipeline as an SFTP
upload. A pull that did not complete is recorded as a *rejected* set with its
reason (and the pages it did get); it is never validated or diffed, so the
tenant's snapshot stays as it was and nothing is deleted.

The folder is written under a hidden name and renamed into place, like an SFTP
claim, so a crash mid-write leaves no half set (the hidden folder is removed at
the next pull; it holds nothing that was received from a school).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ingestd.config import Config, TenantConfig
from ingestd.errors import ConfigError
from ingestd.events.store import EventStore
from ingestd.fsutil import fsync_path
from ingestd.ids import new_ulid
from ingestd.logging import get_logger
from ingestd.oneroster import spec
from ingestd.pipeline import sets
from ingestd.pipeline.ingest import Pipeline
from ingestd.sources.pollers.base import (
    CheckLine,
    PageArchive,
    PullError,
    Roster,
    Row,
    poller_for,
)
from ingestd.sources.pollers.http import (
    ApiClient,
    Auth,
    BearerAuth,
    OAuth1Signer,
    OAuth2ClientCredentials,
)

PULLING = ".pull-"
PAGES = "pages"
DEFAULT_BASE_URLS = {"clever": "https://api.clever.com"}


@dataclass(frozen=True, slots=True)
class PullOutcome:
    """What a pull left: a received set to process, or a rejected one (`error` set)."""

    tenant: str
    set_id: str
    digest: str | None
    rows: dict[str, int]
    requests: int
    seconds: float
    warnings: list[str]
    error: PullError | None = None


def make_client(config: Config, tenant: TenantConfig) -> ApiClient:
    """The HTTP client of a REST tenant, with its credentials read now (ConfigError names a
    missing secret)."""
    config_dir = config.path.parent if config.path else None
    auth: Auth | None
    base_url = tenant.base_url or DEFAULT_BASE_URLS.get(tenant.source)
    if base_url is None:
        raise ConfigError(f"tenant {tenant.id}: base_url is not set")
    if tenant.source == "clever" or tenant.auth == "bearer":
        auth = BearerAuth(tenant.read_secret("token_file", config_dir))
    elif tenant.source == "powerschool":
        auth = OAuth2ClientCredentials(
            base_url.rstrip("/") + "/oauth/access_token",
            tenant.client_id or "",
            tenant.read_secret("client_secret_file", config_dir),
        )
    elif tenant.auth == "oauth2":
        auth = OAuth2ClientCredentials(
            tenant.token_url or "",
            tenant.client_id or "",
            tenant.read_secret("client_secret_file", config_dir),
            tenant.scopes,
        )
    elif tenant.auth == "oauth1":
        auth = OAuth1Signer(
            tenant.client_id or "",
            tenant.read_secret("client_secret_file", config_dir),
            tenant.signature_method,
        )
    else:
        raise ConfigError(f"tenant {tenant.id}: source {tenant.source!r} has no auth")
    return ApiClient(
        base_url,
        auth,
        max_concurrent=tenant.max_concurrent_requests,
        timeout=tenant.request_timeout,
        log_context={"tenant": tenant.id},
    )


async def pull_set(
    config: Config,
    tenant: TenantConfig,
    client: ApiClient | None = None,
    progress: Callable[[str], None] | None = None,
) -> PullOutcome:
    """Pull `tenant` now and record the result as a set (received, or rejected).
    `progress` hears a short phrase per page received ("users: 12 pages")."""
    state_dir = config.daemon.state_dir
    log = get_logger(tenant=tenant.id)
    set_id = new_ulid()
    parent = state_dir / sets.SETS / tenant.id
    parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_remove_stale_pulls, parent)
    temp = parent / f"{PULLING}{set_id}"
    on_record = (lambda name, n: progress(f"{name}: {n} pages")) if progress else None
    pages = PageArchive(temp / PAGES, on_record)
    started = time.monotonic()
    own_client = client is None
    error: PullError | None = None
    roster = Roster()
    requests = 0
    log.info("poll.started", set_id=set_id, source=tenant.source)
    try:
        client = client or make_client(config, tenant)
        try:
            roster = await poller_for(tenant, client, pages).pull()
        finally:
            requests = client.requests
            if own_client:
                await client.aclose()
    except PullError as exc:
        error = exc
    except ConfigError as exc:
        error = PullError(exc.message, "config")
    except Exception as exc:  # a poller bug: record it, keep what was received
        log.error("poll.internal_error", set_id=set_id, error=exc.__class__.__name__)
        error = PullError(
            f"ingestd failed during the pull ({exc.__class__.__name__}); see the daemon log",
            "internal_error",
        )
    seconds = time.monotonic() - started
    if error is None:
        await asyncio.to_thread(write_roster, temp / sets.RAW, roster)
    else:
        (temp / sets.RAW).mkdir(parents=True, exist_ok=True)
    final = sets.set_dir(state_dir, tenant.id, set_id)
    os.replace(temp, final)
    fsync_path(parent)
    rows = {e: len(r) for e, r in roster.tables.items()}
    outcome = PullOutcome(
        tenant.id, set_id, None, rows, requests, seconds, list(roster.warnings), error
    )
    with EventStore.open(state_dir) as store:
        if error is None:
            raw = final / sets.RAW
            digest = await asyncio.to_thread(
                sets.digest, [p for p in raw.iterdir() if p.is_file()], raw
            )
            store.add_set(set_id, tenant.id, tenant.source, digest)
            outcome = PullOutcome(
                tenant.id, set_id, digest, rows, requests, seconds, list(roster.warnings)
            )
            log.info(
                "poll.completed",
                set_id=set_id,
                requests=requests,
                seconds=round(seconds, 2),
                rows=rows,
                warnings=roster.warnings,
            )
        else:
            reason = {"code": error.code, "message": error.message}
            Pipeline(state_dir, store).record_failed(tenant.id, set_id, tenant.source, [reason])
            log.error(
                "poll.failed",
                set_id=set_id,
                reason=error.code,
                message=error.message,
                requests=requests,
                seconds=round(seconds, 2),
            )
    return outcome


async def check_tenant(config: Config, tenant: TenantConfig) -> list[CheckLine]:
    """`ingestd check`: authenticate and read one page of each collection."""
    async with make_client(config, tenant) as client:
        return await poller_for(tenant, client, PageArchive(None)).check()


def write_roster(raw: Path, roster: Roster) -> None:
    """The roster as OneRoster CSV files (spec column order, then any extra columns) and a
    manifest declaring the entities pulled `bulk` and the others `absent`."""
    raw.mkdir(parents=True, exist_ok=True)
    for entity in spec.ENTITIES:
        table = roster.tables.get(entity.name)
        if table is None:
            continue
        path = raw / entity.file_name
        if isinstance(table, pl.DataFrame):
            _write_frame(path, table, list(entity.column_names))
        else:
            _write_rows(path, table, list(entity.column_names))
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(spec.MANIFEST_HEADER)
    writer.writerow(["manifest.version", "1.0"])
    writer.writerow(["oneroster.version", "1.1"])
    for name in spec.ENTITY_NAMES:
        writer.writerow([f"file.{name}", "bulk" if name in roster.tables else "absent"])
    (raw / spec.MANIFEST_FILE).write_text(manifest.getvalue(), encoding="utf-8")


def _write_rows(path: Path, rows: list[Row], columns: list[str]) -> None:
    columns += sorted({k for r in rows for k in r} - set(columns))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([r.get(c, "") for c in columns] for r in rows)


def _write_frame(path: Path, frame: pl.DataFrame, columns: list[str]) -> None:
    """As `_write_rows` writes rows (an empty value unquoted), by polars. One difference: a
    value holding a carriage return is quoted (the csv module leaves it bare)."""
    columns += sorted(set(frame.columns) - set(columns))
    cells = [
        pl.when(pl.col(c) != "").then(pl.col(c)).alias(c)  # "" -> null, written bare
        if c in frame.columns
        else pl.lit(None, pl.String).alias(c)
        for c in columns
    ]
    frame.select(cells).write_csv(path, line_terminator="\n", quote_style="necessary")


def _remove_stale_pulls(parent: Path, older_than: float = 86400.0) -> None:
    """Remove what a crashed pull left (a day old: a pull running now keeps its folder)."""
    for folder in parent.glob(f"{PULLING}*"):
        try:
            if time.time() - folder.stat().st_mtime > older_than:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue
