"""Clever API v3.0 poller: a district's whole roster mapped to the seven OneRoster 1.1 tables.

Collections, read in this order with the district bearer token (`token_file`):
`/v3.0/districts`, `/v3.0/schools`, `/v3.0/terms`, `/v3.0/courses`,
`/v3.0/users?role=student|teacher|staff|district_admin|contact`, `/v3.0/sections`
(sections last: they name users and courses, so everything they point to was
read before them).

Paging. Each answer is `{"data": [{"data": {...}, "uri": ...}], "links": [{"rel":
"next", "uri": "/v3.0/users?starting_after=<id>"}]}`: the `next` link (relative,
resolved against the base URL) is followed until a page has no `data` (a `next`
link can lead to an empty page: that page ends the collection) or no `next`
link. `limit` is `page_size` (default 1,000); Clever refuses more than 10,000
with HTTP 413, which fails the pull with a message saying so. A `next` link that
lacks a parameter of the first request (`role`, `limit`) gets it added back, so
a bare `?starting_after=<id>` link can never widen the query to every role.
Paging is by id cursor, so records inserted meanwhile never shift a page; a
record seen twice is kept once (the last copy). Every page body goes to the
set's page archive. Retries, 429 waits (`X-RateLimit-Reset`) and timeouts are
the HTTP client's (http.py): 500/502/503 are retried, 400/401/501 are not.

The field mapping to OneRoster, and what Clever cannot carry: clever_map.py (module
docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from ingestd.sources.pollers.base import (
    ArchiveWriter,
    CheckLine,
    PageArchive,
    PullError,
    Roster,
    register,
)
from ingestd.sources.pollers.clever_map import map_roster, user_roles
from ingestd.sources.pollers.http import ApiClient, ApiResponse, HttpError

if TYPE_CHECKING:
    from ingestd.config import TenantConfig

API = "/v3.0"
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
USER_ROLES = ("student", "teacher", "staff", "district_admin", "contact")


@register("clever")
class CleverPoller:
    """Pulls one Clever district (the district token's) as a OneRoster roster."""

    source: ClassVar[str] = "clever"

    def __init__(self, tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> None:
        self.tenant = tenant
        self.client = client
        self.archive = ArchiveWriter(pages)  # pages written beside the event loop
        self.limit = tenant.page_size or DEFAULT_LIMIT

    async def pull(self) -> Roster:
        """Every collection, then the mapping; PullError if any page could not be read."""
        raw, warnings = await self.archive.around(self._pull_all())
        roster = map_roster(raw)
        roster.warnings[:0] = warnings
        return roster

    async def _pull_all(self) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        warnings: list[str] = []
        raw: dict[str, list[dict[str, Any]]] = {}
        for name in ("districts", "schools", "terms", "courses"):
            raw[name] = await self._collect(name, {}, warnings)
        users: dict[str, dict[str, Any]] = {}
        for role in USER_ROLES:
            for user in await self._collect("users", {"role": role}, warnings):
                users[user["id"]] = user  # a multi-role user is the same object each time
        raw["users"] = list(users.values())
        raw["sections"] = await self._collect("sections", {}, warnings)
        return raw, warnings

    async def check(self) -> list[CheckLine]:
        """Read the first record of each collection: readable or not (and why)."""
        lines: list[CheckLine] = []
        queries = [(n, {}) for n in ("districts", "schools", "terms", "courses", "sections")]
        queries += [("users", {"role": role}) for role in USER_ROLES]
        for name, params in queries:
            label = _label(name, params)
            path = f"{API}/{name}?{urlencode({**params, 'limit': '1'})}"
            try:
                data, _ = _page(await self._get(path, label), label)
            except HttpError as exc:
                lines.append(CheckLine(label, False, f"not readable (HTTP {exc.status})"))
                continue
            except PullError as exc:
                lines.append(CheckLine(label, False, exc.message))
                continue
            detail = "shared (records present)" if data else "shared (no records)"
            lines.append(CheckLine(label, True, detail))
            if params.get("role") == "student" and data:
                student = user_roles(data[0]["data"]).get("student") or {}
                has = any(student.get(k) for k in ("dob", "gender", "race", "hispanic_ethnicity"))
                detail = (
                    "shared (on students)"
                    if has
                    else ("not shared (no demographic fields); pulls go without it")
                )
                lines.append(CheckLine("demographics", True, detail))  # optional either way
        return lines

    # --- paging --------------------------------------------------------------------------

    async def _collect(
        self, collection: str, params: dict[str, str], warnings: list[str]
    ) -> list[dict[str, Any]]:
        """Every record of a collection, following `next` links until an empty page."""
        query = {**params, "limit": str(self.limit)}
        label = _label(collection, params)
        path = f"{API}/{collection}?{urlencode(query)}"
        seen: set[str] = set()
        records: dict[str, dict[str, Any]] = {}
        repeated = 0
        while True:
            seen.add(path)
            response = await self._get(path, label)
            await self.archive.keep(label, response)
            data, links = _page(response, label)
            if not data:
                break
            for item in data:
                record = item["data"]
                if record["id"] in records:
                    repeated += 1
                records[record["id"]] = record
            link = next(
                (x.get("uri") for x in links if isinstance(x, dict) and x.get("rel") == "next"),
                None,
            )
            if not isinstance(link, str) or not link:
                break
            path = _with_params(link, query)
            if path in seen:
                raise PullError(f"{label}: the next link leads back to a page already read", "loop")
        if repeated:
            warnings.append(f"{label}: {repeated} records were listed twice (kept once)")
        return list(records.values())

    async def _get(self, path: str, label: str) -> ApiResponse:
        try:
            return await self.client.get(path)
        except HttpError as exc:
            if exc.status == 413:
                raise HttpError(
                    413,
                    exc.url,
                    f"{label}: Clever refuses pages of more than {MAX_LIMIT:,} records "
                    f"(HTTP 413; page_size is {self.limit:,}): set page_size to {MAX_LIMIT} "
                    "or less",
                ) from None
            if exc.status == 401:
                raise HttpError(
                    401,
                    exc.url,
                    f"{label}: HTTP 401: Clever refused the district token; check token_file "
                    "(a district-app token of this district)",
                ) from None
            raise


def _label(collection: str, params: dict[str, str]) -> str:
    return "-".join([collection, *params.values()])


def _page(response: ApiResponse, label: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The records and links of one page; PullError (naming no value) if it is not a
    Clever list."""
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise PullError(f"{label}: the answer is not a Clever list (no data array)", "bad_response")
    for item in data:
        record = item.get("data") if isinstance(item, dict) else None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("id"), str)
            or not record["id"]
        ):
            raise PullError(f"{label}: the answer holds a record without an id", "bad_response")
    links = body.get("links")
    return data, links if isinstance(links, list) else []


def _with_params(link: str, query: dict[str, str]) -> str:
    """The link with any parameter of the first request it lacks added back."""
    parts = urlsplit(link)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in pairs}
    pairs += [(k, v) for k, v in query.items() if k not in have]
    return parts._replace(query=urlencode(pairs)).geturl()
