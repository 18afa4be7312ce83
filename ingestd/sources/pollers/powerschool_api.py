"""PowerSchool's lists read whole: page sizes, paging, counts, completeness and the JSON
shapes of its pages, for the PowerSchool poller (powerschool.py). Every response is kept
in the pull's page archive.

Paging
    `page` (1-based) and `pagesize` = the tenant's `page_size` capped by the metadata's
    `<resource>_max_page_size` (100 when metadata says nothing). The `/count` says how many
    records to expect. Pages are read until an EMPTY page, or a short one once the count is
    reached (a short page before it does not end the list: the server may serve fewer than
    asked). JSON mirrors PowerSchool's XML: `{"students": {"@expansions": "...", "student":
    [...]}}`, with ONE record `student` is an object, not a list, and an empty page may omit
    `student` (or `students`, or send ""); all three are read as such. A 200 whose body has
    none of the expected keys but other ones (an error message) fails the pull.

Completeness
    Pages are offsets into a list that can change while it is read: a record inserted before
    the current page shifts one onto two pages (de-duplicated by `id`), a record removed
    shifts one past us unseen, which would read as a delete. So a list read in more than one
    page is counted again at the end: it is complete when the count did not move and at
    least that many distinct records were read; otherwise the list is read again (at most
    MAX_PASSES times, then the pull fails: an incomplete pull is never diffed). A list read
    in one answer is complete by itself. A list whose /count stays above what its pages
    hold fails the pull too (`count_mismatch`): it cannot be shown complete. A page that
    adds no new record fails the pull (a server ignoring `page` would page forever).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingestd.sources.pollers.base import ArchiveWriter, PageArchive, PullError, text
from ingestd.sources.pollers.http import ApiResponse
from ingestd.sources.pollers.powerschool_map import as_int, as_list, record_id

if TYPE_CHECKING:
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers.http import ApiClient

DEFAULT_PAGE_SIZE = 100
MAX_PASSES = 3


@dataclass(frozen=True, slots=True)
class Resource:
    """One PowerSchool list: its name in messages, metadata cap key and JSON wrapper keys."""

    name: str
    cap_key: str
    outer: str
    inner: str


SCHOOLS = Resource("schools", "school_max_page_size", "schools", "school")
TERMS = Resource("terms", "term_max_page_size", "terms", "term")
COURSES = Resource("courses", "course_max_page_size", "courses", "course")
SECTIONS = Resource("sections", "section_max_page_size", "sections", "section")
STUDENTS = Resource("students", "student_max_page_size", "students", "student")
STAFF = Resource("staff", "staff_max_page_size", "staffs", "staff")
SECTION_ENROLLMENTS = Resource(
    "section_enrollments",
    "section_enrollment_max_page_size",
    "section_enrollments",
    "section_enrollment",
)
GUARDIANS = Resource("guardians", "schema_table_query_max_page_size", "record", "")


class PowerSchoolLists:
    """One tenant's PowerSchool lists, read through `client`; `caps` are the metadata's
    page-size caps (`<resource>_max_page_size`), filled by the poller."""

    def __init__(self, tenant: TenantConfig, client: ApiClient, pages: PageArchive) -> None:
        self.tenant = tenant
        self.client = client
        self.archive = ArchiveWriter(pages)  # every response kept, beside the event loop
        self.caps: dict[str, int] = {}

    def page_size(self, resource: Resource) -> int:
        """Records asked per page: the tenant's page_size, capped by the metadata's."""
        cap = self.caps.get(resource.cap_key, DEFAULT_PAGE_SIZE)
        return max(1, min(self.tenant.page_size or cap, cap))

    async def read(
        self,
        resource: Resource,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        query: bool = False,
    ) -> list[dict[str, Any]]:
        """Every record of one list, complete (see Completeness) or PullError."""
        size = self.page_size(resource)
        before = after = 0
        read = 0
        for _ in range(MAX_PASSES):
            before = await self.count(resource, path, query)
            records: dict[str, dict[str, Any]] = {}
            page = 0
            while True:
                page += 1
                if page > 2 * max(1, math.ceil(before / size)) + 10:
                    raise PullError(
                        f"{path}: page {page} and still no end ({before} records counted)",
                        "paging_loop",
                    )
                items = await self.page(resource, path, params, page, size, query)
                if not items:
                    break
                new = 0
                for item in items:
                    key = _record_key(item, resource, query)
                    if key not in records:
                        records[key] = item
                        new += 1
                if new == 0:
                    raise PullError(
                        f"{path}: page {page} repeats records already read (does the server "
                        "ignore `page`?)",
                        "paging_loop",
                    )
                if len(items) < size and len(records) >= before:
                    break
            read = len(records)
            if page == 1 and read >= before:
                return list(records.values())  # one answer: nothing could shift
            after = await self.count(resource, path, query)
            if after == before and read >= after:
                return list(records.values())
            self.client.log.warning(
                "poll.list_changed", path=path, counted=before, recounted=after, read=read
            )
        if after == before:
            raise PullError(
                f"{path}: read {read} records where its /count says {after}, "
                f"{MAX_PASSES} times; the pull cannot prove it is complete",
                "count_mismatch",
            )
        raise PullError(
            f"{path}: the list kept changing while it was read ({MAX_PASSES} passes; last "
            f"counted {before}, then {after}, read {read}); the next pull tries again",
            "unstable_list",
        )

    async def page(
        self,
        resource: Resource,
        path: str,
        params: dict[str, Any] | None,
        page: int,
        size: int,
        query: bool,
    ) -> list[dict[str, Any]]:
        args = {**(params or {}), "page": page, "pagesize": size}
        if query:
            response = await self.client.request("POST", path, params=args, json_body={})
        else:
            response = await self.client.get(path, args)
        await self.archive.keep(resource.name, response)
        return _items(object_body(response, path), resource, path)

    async def count(self, resource: Resource, path: str, query: bool) -> int:
        if query:
            response = await self.client.request("POST", path + "/count", json_body={})
        else:
            response = await self.client.get(path + "/count")
        await self.archive.keep(resource.name + "_count", response)
        body = object_body(response, path + "/count")
        holder = body.get("resource", body)
        count = as_int(holder.get("count")) if isinstance(holder, dict) else None
        if count is None or count < 0:
            raise PullError(f"{path}/count: the answer holds no count", "bad_response")
        return count

    async def get(self, collection: str, path: str, **params: Any) -> ApiResponse:
        response = await self.client.get(path, params or None)
        await self.archive.keep(collection, response)
        return response


# --- JSON shapes ------------------------------------------------------------------------------


def object_body(response: ApiResponse, path: str) -> dict[str, Any]:
    """The answer's JSON object; PullError if it is not one."""
    body = response.json()
    if not isinstance(body, dict):
        raise PullError(f"{path}: the answer is not a JSON object", "bad_response")
    return body


def _items(body: dict[str, Any], resource: Resource, path: str) -> list[dict[str, Any]]:
    """The records of one page: a list, one object (PowerSchool's single-record page), or
    none (the key omitted or empty)."""
    if resource.inner == "":  # PowerQuery: {"record": [...]}
        holder: Any = body
        key = resource.outer
    else:
        holder = body.get(resource.outer)
        key = resource.inner
        if holder is None:
            if any(not k.startswith("@") for k in body):
                raise PullError(
                    f"{path}: the answer has no {resource.outer!r} (keys: "
                    f"{', '.join(sorted(body)[:5])})",
                    "bad_response",
                )
            return []
    if holder in ("", None):
        return []
    if not isinstance(holder, dict):
        raise PullError(f"{path}: {resource.outer!r} is not an object", "bad_response")
    items = holder.get(key)
    if items in (None, ""):
        return []
    items = as_list(items)
    if not all(isinstance(i, dict) for i in items):
        raise PullError(f"{path}: {key!r} holds something other than records", "bad_response")
    return items


def _record_key(item: dict[str, Any], resource: Resource, query: bool) -> str:
    if query:
        return f"{text(item.get('contact_id'))}/{text(item.get('student_dcid'))}"
    return record_id(item, resource.inner)
