"""OneRoster 1.1 REST poller (ClassLink, Aeries, Infinite Campus): the seven rostering
collections, paged, mapped from the JSON binding to the CSV binding's tables.

Collections
    `/orgs /academicSessions /courses /classes /users /enrollments /demographics`, top-level
    only (no nested school endpoints: Aeries lacks them). The base URL is opaque
    configuration (1.1 `.../ims/oneroster/v1p1`).

Paging
    `limit` = the tenant's `page_size`, else `DEFAULT_PAGE_SIZE` (1,000: ten times the spec's
    default of 100, a tenth of ClassLink's cap; a page is ~0.5 MB of JSON for enrollments, so
    a retry repeats little), `offset` 0-based and advanced by the number of records *received*
    (servers clamp `limit` to their own cap without saying so), until a page is EMPTY: a
    short page proves nothing. `Link` headers are not followed (they are optional, sometimes
    wrong, and Aeries writes `~/ims/...`); absolute, relative or missing links make no
    difference. The pages of one collection go one after the other (the next offset needs
    the previous page); the seven collections run concurrently within the client's
    `max_concurrent` (set `max_concurrent_requests = 1` for Infinite Campus in school hours).

Cost (bench/poll.py: 100,000 students, 1.37 million records, 147 pages of 10,000, fake server
in another process, 2 shared cores; `--runs 1`, and `--runs 1 --no-gzip`)
    ~17-18 s per pull either way (the fake server's time). Gzip transfer (the server gzips at
    level 1, nginx's default: a users page of 6.7 MB comes as 0.65 MB, enrollments 5.8 MB as
    0.17 MB): ~6.8 s of client CPU (46-47 ms a page, 1.45 times the server's json.dumps of
    it): polars decoding and mapping 4.4 s (the pages' JSON parsed in Rust against a strict
    schema, with the scans of oneroster_rest_frame.py; no page goes the Python way there),
    ApiClient's gunzip 0.6 s, rows and de-duplication 0.3 s, the page archive 0.06 s (the
    server's gzip bytes written as they came), HTTP and the rest 1.5 s. Plain transfer:
    ~8.5-9 s (58-62 ms a page, 1.8 times json.dumps): no gunzip, but gzip of the page archive
    1.6-1.7 s (level 1, in a worker thread) and HTTP and the rest 2.2-2.4 s (10-30 times the
    bytes). 0.8 GB peak RSS. The rows are one polars frame per page, so the cyclic GC no
    longer walks millions of row dicts. A page polars does not take (odd shapes, see
    oneroster_rest_frame.py) goes through json.loads and `oneroster_rest_map.make_mapper`,
    with the GC paused, at about twice the cost. Concurrent collections overlap a real
    vendor's server time, which is usually the larger part.

Cross-checks (warnings, never failures)
    `X-Total-Count` (or ClassLink's `x-count`) of the last page against the distinct records
    received; a total that moved during the pull; records received twice. A pull that paged
    to an empty page is complete as far as the API can say: the headers are optional and
    sometimes wrong (SIS-APIS.md), so a disagreement is reported in `Roster.warnings` (and the
    log) instead of failing every pull of a vendor whose header is off. What would make a
    short pull dangerous, mass deletes, is held by the pipeline's safeguards.

Records inserted while paging
    shift the offsets, so a record can come on two pages: records are de-duplicated by
    sourcedId, the last copy wins, and the count is a warning. (A record *deleted* while
    paging shifts the other way and one record can be missed; only ClassLink's revision
    header can tell, see below. A record missed that way shows as a delete.)

Data revision (ClassLink `x-perm-rev`)
    if it changes between two responses of one pull, the whole pull starts again (the old
    pages stay in the archive); after `MAX_RESTARTS` restarts the pull fails.

Errors
    a 200 whose body is not an object, has `{"error": ...}` or a failure `statusInfoSet`, lacks
    the collection's key or has a non-list there is a PullError, never an empty collection.
    Demographics answering 403 (not shared) or 404 (not offered) on its first page: pulled
    without demographics, with a warning (the runner declares the file `absent`, so nothing
    is deleted). Any other collection answering 403/404 fails the pull. A value of a shape
    the binding does not allow (an object where a string belongs, ...) fails the pull and
    names the collection and field (never the value).

Wrapper keys accepted
    orgs: `orgs`; academicSessions: `academicSessions`, `terms`; courses: `courses`; classes:
    `classes`; users: `users`, `students`, `teachers`; enrollments: `enrollments`;
    demographics: `demographics`.

The mapping of the JSON binding's fields to the CSV binding's columns: oneroster_rest_map.py
(module docstring).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from ingestd.logging import get_logger
from ingestd.sources.pollers import http
from ingestd.sources.pollers.base import (
    ArchiveWriter,
    CheckLine,
    PageArchive,
    PullError,
    Roster,
    Row,
    register,
)
from ingestd.sources.pollers.http import ApiResponse, HttpError
from ingestd.sources.pollers.oneroster_rest_frame import (
    FramePage,
    PageDecoder,
    concat,
    last_copies,
    rows_frame,
)
from ingestd.sources.pollers.oneroster_rest_map import json_type, make_mapper

if TYPE_CHECKING:
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers.http import ApiClient

DEFAULT_PAGE_SIZE = 1000
MAX_RESTARTS = 3
TOTAL_HEADERS = ("x-total-count", "x-count")
REVISION_HEADER = "x-perm-rev"


@dataclass(frozen=True, slots=True)
class Collection:
    """One collection endpoint: the entity it fills, its path, the keys its list may come
    under, and whether the roster is complete without it."""

    entity: str
    path: str
    keys: tuple[str, ...]
    optional: bool = False


COLLECTIONS: tuple[Collection, ...] = (
    Collection("orgs", "/orgs", ("orgs",)),
    Collection("academicSessions", "/academicSessions", ("academicSessions", "terms")),
    Collection("courses", "/courses", ("courses",)),
    Collection("classes", "/classes", ("classes",)),
    Collection("users", "/users", ("users", "students", "teachers")),
    Collection("demographics", "/demographics", ("demographics",), optional=True),
    Collection("enrollments", "/enrollments", ("enrollments",)),
)


@dataclass(slots=True)
class PullStats:
    """What the last pull did (bench/poll.py): pages, and how many of them went the Python
    way (json.loads and `make_mapper`: see oneroster_rest_frame.py), records, restarts;
    wall-clock seconds waiting for responses (network, server, ApiClient's own checks;
    summed over the collections pulled at once) and writing pages to the archive (in its
    thread, queueing included); CPU seconds decoding pages with polars (the fast path,
    tried on every page), and mapping records to rows (the Python way, plus de-duplication)."""

    pages: int = 0
    python_pages: int = 0
    records: int = 0
    restarts: int = 0
    fetch_seconds: float = 0.0
    decode_seconds: float = 0.0
    map_seconds: float = 0.0
    archive_seconds: float = 0.0


class _RevisionChanged(Exception):
    """x-perm-rev changed between two responses: the pull must start again."""


class _Revision:
    """The data revision (x-perm-rev) of one pull attempt."""

    def __init__(self) -> None:
        self.value: str | None = None

    def check(self, value: str | None, entity: str) -> None:
        if value is None:
            return
        if self.value is None:
            self.value = value
        elif value != self.value:
            raise _RevisionChanged(entity)


@dataclass(slots=True)
class _Pulled:
    """One collection's result within a pull attempt."""

    rows: pl.DataFrame | None  # None: not shared (an optional collection)
    warnings: list[str] = field(default_factory=list)


class _Rows:
    """The rows of one collection, page after page, de-duplicated by sourcedId: a frame of
    String columns per page, decoded by polars when the page allows (`parse`), else the
    Python way."""

    def __init__(self, collection: Collection, stats: PullStats) -> None:
        self.collection = collection
        self.decoder = PageDecoder(collection.entity, collection.keys)
        self.mapper: Callable[[Any], Row] = make_mapper(collection.entity, {})
        self.stats = stats
        self.pages: list[pl.DataFrame] = []
        self.seen: set[str] = set()  # the sourcedIds received
        self.repeated = 0

    def parse(self, content: bytes) -> FramePage | Any:
        """A page body as ApiClient's `parse`: a FramePage, else json.loads' answer (a
        ValueError if the body is not JSON)."""
        started = time.thread_time()
        page = self.decoder.decode(content)
        self.stats.decode_seconds += time.thread_time() - started
        return page if page is not None else http.parse_json(content)

    def absorb(self, response: ApiResponse) -> tuple[int, int]:
        """Take one page: (records on it, records not seen before). A record without a
        sourcedId is always new."""
        started = time.thread_time()
        if isinstance(response.data, FramePage):
            frame = response.data.frame
        else:
            frame = self._python_way(response)
        ids = frame.get_column("sourcedId")
        keyed = ids.filter(ids != "").to_list()
        before = len(self.seen)
        self.seen.update(keyed)
        added = len(self.seen) - before
        self.repeated += len(keyed) - added
        self.pages.append(frame)
        stats = self.stats
        stats.pages += 1
        stats.records += frame.height
        stats.map_seconds += time.thread_time() - started
        return frame.height, added + frame.height - len(keyed)

    def _python_way(self, response: ApiResponse) -> pl.DataFrame:
        """A page polars did not take: its records mapped one by one (PullError naming the
        field for a value the binding does not allow).

        The cyclic GC is paused meanwhile (no await in here, so nothing else of the event
        loop runs): the page's parse tree is tens of thousands of acyclic containers, and
        every collection the allocations would trigger scans them all again for nothing."""
        self.stats.python_pages += 1
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            records = _records(self.collection, response)
            return rows_frame(self.collection.entity, [self.mapper(r) for r in records])
        finally:
            if paused:
                gc.enable()

    def rows(self) -> pl.DataFrame:
        """Every record received, the last copy of each in the first copy's place."""
        frame = concat(self.collection.entity, self.pages)
        self.pages = []
        return last_copies(frame) if self.repeated else frame


@register("oneroster")
class OneRosterPoller:
    """Pulls a whole OneRoster 1.1 roster through REST; see the module docstring."""

    source = "oneroster"

    def __init__(self, tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> None:
        self.tenant = tenant
        self.client = client
        self.pages = pages
        self.page_size = tenant.page_size or DEFAULT_PAGE_SIZE
        self.log = get_logger(tenant=tenant.id, source=self.source)
        self.stats = PullStats()

    # --- pull ------------------------------------------------------------------------------

    async def pull(self) -> Roster:
        """The whole roster, or PullError (never a partial roster)."""
        self.stats = PullStats()
        for attempt in range(MAX_RESTARTS + 1):
            try:
                return await self._attempt()
            except _RevisionChanged as exc:
                self.stats.restarts += 1
                self.log.warning(
                    "poll.restart", reason="revision_changed", collection=str(exc), attempt=attempt
                )
        raise PullError(
            f"the data changed during the pull {MAX_RESTARTS + 1} times in a row (x-perm-rev); "
            "the SIS is being updated: the next scheduled pull will try again",
            "data_changing",
        )

    async def _attempt(self) -> Roster:
        revision = _Revision()
        results: dict[str, _Pulled] = {}
        archive = ArchiveWriter(self.pages)

        async def every_collection() -> None:
            async with asyncio.TaskGroup() as group:
                for collection in COLLECTIONS:
                    group.create_task(self._collection(collection, revision, results, archive))

        try:  # the pages of a failed pull are kept too
            await archive.around(every_collection())
        except BaseExceptionGroup as errors:
            raise _most_telling(errors) from None
        self.stats.archive_seconds += archive.seconds
        roster = Roster()
        for collection in COLLECTIONS:
            pulled = results[collection.entity]
            roster.warnings += pulled.warnings
            if pulled.rows is not None:
                roster.tables[collection.entity] = pulled.rows
        return roster

    async def _collection(
        self,
        collection: Collection,
        revision: _Revision,
        results: dict[str, _Pulled],
        archive: ArchiveWriter,
    ) -> None:
        entity = collection.entity
        taken = _Rows(collection, self.stats)
        warnings: list[str] = []
        totals: list[int] = []
        offset = 0
        while True:
            started = time.perf_counter()
            try:
                response = await self.client.get(
                    collection.path,
                    params={"limit": self.page_size, "offset": offset},
                    parse=taken.parse,
                )
            except HttpError as exc:
                if collection.optional and offset == 0 and exc.status in (403, 404):
                    why = "not shared with this application" if exc.status == 403 else (
                        "not offered by this API"
                    )  # fmt: skip
                    warnings.append(
                        f"{entity}: {why} (HTTP {exc.status}); pulled without {entity} "
                        "(the set declares the file absent: nothing is deleted)"
                    )
                    self.log.warning("poll.not_shared", collection=entity, status=exc.status)
                    results[entity] = _Pulled(None, warnings)
                    return
                raise
            self.stats.fetch_seconds += time.perf_counter() - started
            await archive.keep(entity, response)
            revision.check(response.headers.get(REVISION_HEADER), entity)
            total = _total(response)
            if total is not None:
                totals.append(total)
            received, new = taken.absorb(response)
            if not received:
                break
            if not new:
                raise PullError(
                    f"{entity}: the page at offset {offset} holds only records already "
                    "received: the API ignores `offset`",
                    "paging_stuck",
                )
            offset += received
        rows = taken.rows()
        if taken.repeated:
            warnings.append(
                f"{entity}: {taken.repeated:,} records came on two pages (records were added "
                "while paging); the last copy of each was kept"
            )
        if totals:
            if len(set(totals)) > 1:
                warnings.append(
                    f"{entity}: the API's record count moved from {totals[0]:,} to "
                    f"{totals[-1]:,} during the pull (records were added or removed meanwhile)"
                )
            if totals[-1] != len(rows):
                warnings.append(
                    f"{entity}: the API's record count says {totals[-1]:,}, {len(rows):,} "
                    "distinct records were received (paged to an empty page)"
                )
        if warnings:
            self.log.warning("poll.cross_check", collection=entity, warnings=len(warnings))
        results[entity] = _Pulled(rows, warnings)

    # --- check -----------------------------------------------------------------------------

    async def check(self) -> list[CheckLine]:
        """One record of each collection: what is shared, and how many records there are."""
        return list(await asyncio.gather(*(self._check_one(c) for c in COLLECTIONS)))

    async def _check_one(self, collection: Collection) -> CheckLine:
        entity = collection.entity
        try:
            response = await self.client.get(collection.path, params={"limit": 1, "offset": 0})
            records = _records(collection, response)
            mapper = make_mapper(entity, {})
            for record in records:
                mapper(record)
        except HttpError as exc:
            optional = entity == "demographics"  # pulls go without it, with a warning
            suffix = "; pulls go without it" if optional else "; pulls will fail"
            if exc.status == 403:
                return CheckLine(entity, optional, f"not shared (403){suffix}")
            if exc.status == 404:
                return CheckLine(entity, optional, f"not offered by this API (404){suffix}")
            return CheckLine(entity, False, exc.message)
        except PullError as exc:
            return CheckLine(entity, False, exc.message)
        total = _total(response)
        of = f" of {total:,}" if total is not None else ""
        return CheckLine(entity, True, f"shared ({len(records)}{of} records read)")


# --- responses ---------------------------------------------------------------------------


def _total(response: ApiResponse) -> int | None:
    """The record count the server claims (X-Total-Count, or ClassLink's x-count)."""
    for name in TOTAL_HEADERS:
        value = response.headers.get(name)
        if value is not None:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _records(collection: Collection, response: ApiResponse) -> list[Any]:
    """The list of records a 200 page holds; PullError if the body is not a collection page."""
    entity = collection.entity
    body = response.json()
    if not isinstance(body, dict):
        raise PullError(
            f"{entity}: the API answered 200 with {json_type(body)}, not an object",
            "bad_page",
        )
    if body.get("error") or _failed(body.get("statusInfoSet")):
        raise PullError(
            f"{entity}: the API answered 200 with an error: {_error_text(body)}", "error_page"
        )
    for key in collection.keys:
        if key in body:
            records = body[key]
            if not isinstance(records, list):
                raise PullError(
                    f"{entity}: `{key}` in the API's answer is {json_type(records)}, not an array",
                    "bad_page",
                )
            return records
    found = ", ".join(sorted(str(k)[:40] for k in body)[:8]) or "nothing"
    raise PullError(
        f"{entity}: the API's answer has no `{collection.keys[0]}` list (it holds {found})",
        "bad_page",
    )


def _failed(info: Any) -> bool:
    """True when a statusInfoSet reports a failure."""
    if isinstance(info, dict):
        info = [info]
    if not isinstance(info, list):
        return False
    return any(
        isinstance(i, dict) and str(i.get("imsx_codeMajor", "")).lower() == "failure" for i in info
    )


def _error_text(body: dict[str, Any]) -> str:
    """A short vendor-written description of an error body (never roster data)."""
    info = body.get("statusInfoSet")
    if isinstance(info, dict):
        info = [info]
    if isinstance(info, list):
        for i in info:
            if isinstance(i, dict) and i.get("imsx_description"):
                return str(i["imsx_description"])[:200]
    error = body.get("error")
    if isinstance(error, str):
        description = body.get("error_description")
        return (error + (f" ({description})" if isinstance(description, str) else ""))[:200]
    if isinstance(error, dict):
        for key in ("message", "description", "code"):
            if isinstance(error.get(key), str):
                return error[key][:200]
    return "no description"


def _most_telling(errors: BaseExceptionGroup) -> BaseException:
    """The one exception a failed attempt raises: a PullError first (the pull failed), then a
    revision change (start again), then anything else (a bug: let it through)."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup) -> None:
        for exc in group.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(errors)
    for kind in (PullError, _RevisionChanged):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]
