"""What every REST poller is: a class in a registry that pulls a tenant's whole roster.

A poller talks to one vendor API through `ApiClient` (http.py: auth, retries,
rate limits) and returns a `Roster`: rows for the seven OneRoster 1.1 tables,
as strings keyed by the CSV column names of `oneroster.spec` (a list of dicts,
or a polars frame of String columns: the OneRoster REST poller's). It never writes
files and never touches the pipeline: the runner (runner.py) writes the roster
as a set and hands it on, exactly like an SFTP upload. Every page received is
given to `PageArchive` so the raw responses are kept (gzip) with the set for
audit: a body the server sent gzip-compressed is kept in the server's own gzip
bytes, not compressed again.

A pull either returns a complete Roster or raises `PullError` (with a reason
an operator can act on, never a response body): an incomplete pull is never
diffed, since a record missing from it is not a delete.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import polars as pl

from ingestd.errors import IngestError

if TYPE_CHECKING:
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers.http import ApiClient, ApiResponse

Row = dict[str, str]
Table = list[Row] | pl.DataFrame  # a frame: String columns named as the CSV's, "" if empty


class PullError(IngestError):
    """A pull that did not complete; `code` is a short machine-readable reason."""

    exit_code = 1

    def __init__(self, message: str, code: str = "pull_failed") -> None:
        super().__init__(message, code=code)


@dataclass(slots=True)
class Roster:
    """A complete pull: rows per OneRoster entity (CSV column -> string value)."""

    tables: dict[str, Table] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Things the operator should know that do not fail the pull (e.g. demographics not
    shared: pulled without them)."""

    def add(self, entity: str, row: Row) -> None:
        table = self.tables.setdefault(entity, [])
        assert isinstance(table, list), "rows are added to a table of rows only"
        table.append(row)


@dataclass(frozen=True, slots=True)
class CheckLine:
    """One collection in `ingestd check`: shared or not, and what was seen."""

    collection: str
    ok: bool
    detail: str  # e.g. "shared (1 of 12,345 records read)", "not shared (403)"


class PageArchive:
    """Keeps every response body of a pull, gzip-compressed, numbered in arrival order:
    `<n>-<collection>.json.gz`, which decompresses (gzip.decompress, or any gzip reader) to
    a JSON line `{"url": ..., "status": ...}`, b"\n", then the body exactly as decoded.

    A body that came gzip-compressed (`gzipped`) is not compressed again: the file is a gzip
    member holding the meta line and its newline, followed by the server's gzip bytes
    verbatim (concatenated gzip members decompress to the concatenation of their contents).
    Any other body is compressed here at level 1 (`COMPRESS_LEVEL`): on bench/poll.py's
    pages (JSON, 3-9 MB each) it takes half the CPU time of level 5 and the files are
    10-20% larger (still 10-30 times smaller than the bodies)."""

    COMPRESS_LEVEL = 1

    def __init__(
        self, folder: Path | None, on_record: Callable[[str, int], None] | None = None
    ) -> None:
        self.folder = folder
        self.count = 0
        self.on_record = on_record  # hears (collection, pages so far): progress on a terminal
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def record(
        self, collection: str, url: str, status: int, body: bytes, gzipped: bytes | None = None
    ) -> None:
        """Keep one response (`url` without credentials: they travel in headers only).
        `body` is the decoded body; `gzipped`, if given, the same body as the server sent it
        gzip-compressed (it must decompress to `body`), kept as it is."""
        self.count += 1
        if self.on_record is not None:
            self.on_record(collection, self.count)
        if self.folder is None:
            return
        path = self.folder / f"{self.count:06d}-{_safe(collection)}.json.gz"
        meta = json.dumps({"url": url, "status": status}).encode() + b"\n"
        if gzipped is None:
            with gzip.open(path, "wb", compresslevel=self.COMPRESS_LEVEL) as f:
                f.write(meta + body)
            return
        with path.open("wb") as f:
            f.write(gzip.compress(meta, self.COMPRESS_LEVEL))
            f.write(gzipped)


_T = TypeVar("_T")


class ArchiveWriter:
    """Gives each page of a pull to its PageArchive in a worker thread, so that the event
    loop (other tenants' pulls, the SFTP server) never waits for gzip or the disk: one page
    at a time and in arrival order, with at most `AHEAD` pages waiting (their bodies are
    held in memory meanwhile). A page that came uncompressed is gzipped in the thread (gzip
    releases the GIL: it runs beside the loop's JSON work); one that came gzipped is written
    as it came. `drain` waits for them all."""

    AHEAD = 8

    def __init__(self, pages: PageArchive) -> None:
        self.pages = pages
        self.seconds = 0.0  # spent writing pages (queueing included), summed over pages
        self._room = asyncio.Semaphore(self.AHEAD)
        self._turn = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def keep(self, collection: str, response: ApiResponse) -> None:
        """Queue one page (waits only when `AHEAD` pages are already waiting)."""
        await self._room.acquire()
        self._tasks.append(asyncio.create_task(self._write(collection, response)))

    async def _write(self, collection: str, response: ApiResponse) -> None:
        try:
            async with self._turn:  # FIFO: pages are numbered in arrival order
                started = time.perf_counter()
                await asyncio.to_thread(
                    self.pages.record,
                    collection,
                    response.url,
                    response.status,
                    response.content,
                    response.gzipped,
                )
                self.seconds += time.perf_counter() - started
        finally:
            self._room.release()

    async def around(self, work: Awaitable[_T]) -> _T:
        """`work`, then every page it queued written (those of a failed pull too)."""
        try:
            result = await work
        except BaseException:
            await self.drain(check=False)
            raise
        await self.drain()
        return result

    async def drain(self, *, check: bool = True) -> None:
        """Wait until every queued page is written; with `check`, the first failure (disk
        full...) fails the pull (PullError)."""
        tasks, self._tasks = self._tasks, []
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if check and isinstance(result, BaseException):
                raise PullError(
                    f"cannot keep the pages of the pull ({result.__class__.__name__})",
                    "archive_failed",
                ) from result


class Poller(Protocol):
    """A vendor API's poller: `REGISTRY[tenant.source](tenant, client, pages)`."""

    source: ClassVar[str]

    async def pull(self) -> Roster:
        """The whole roster, or PullError."""
        ...

    async def check(self) -> list[CheckLine]:
        """Read one page of each collection: what is shared and what is not."""
        ...


PollerFactory = Callable[["TenantConfig", "ApiClient", PageArchive], Poller]
REGISTRY: dict[str, PollerFactory] = {}


def register(source: str) -> Callable[[type], type]:
    """Class decorator: the poller of `source` (the tenant's `source = "..."`)."""

    def deco(cls: type) -> type:
        cls.source = source
        REGISTRY[source] = cls
        return cls

    return deco


def poller_for(tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> Poller:
    """The poller of a tenant's source (its module is imported on first use)."""
    import importlib

    module = {"oneroster": "oneroster_rest", "powerschool": "powerschool", "clever": "clever"}
    if tenant.source not in REGISTRY and tenant.source in module:
        importlib.import_module(f"ingestd.sources.pollers.{module[tenant.source]}")
    try:
        factory = REGISTRY[tenant.source]
    except KeyError:
        raise PullError(f"no poller for source {tenant.source!r}", "no_poller") from None
    return factory(tenant, client, pages)


def text(value: Any) -> str:
    """A JSON value as a OneRoster CSV cell: None -> "", bools lowercase, lists comma-joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(text(v) for v in value)
    return str(value)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "page"
