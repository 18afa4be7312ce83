"""A fake OneRoster 1.1 REST server (on fakehttp.FakeServer) serving a CSV district, as ClassLink,
Aeries or Infinite Campus would, with switchable misbehaviour.

    fake = FakeOneRoster(generate(tmp / "d", students=200, seed=3).path, Scenario(max_limit=50))
    with fake:  # fake.url is the base URL (.../ims/oneroster/v1p1)
        ...

The district's CSV tables are held as polars frames (all strings) and turned back into the
JSON binding page by page: GUIDRefs `{href, sourcedId, type}` for references, lists for list
fields, `userIds` as `[{type, identifier}]`, `status` "active" where the CSV leaves it blank and
`dateLastModified` stamped (the REST binding always fills both). Written from the 1.1 JSON
binding, independently of the poller's mapping table, so that a mistake in one shows against
the other.

What it reproduces (SIS-APIS.md, "What a credible fake server reproduces"), and how:

- default page size when `limit` is absent: `Scenario.default_limit` (100, the spec's);
- `limit` silently clamped to a smaller cap: `Scenario.max_limit`;
- a total that is an exact multiple of the page size: serve a district of that size (the page
  after the last full one is empty, as for any other total);
- missing or wrong `X-Total-Count`: `Scenario.total` ("exact" | "missing") and
  `Scenario.total_skew` (added to the true count); ClassLink's `x-count` with `total_header`;
- absolute, relative or missing `Link`: `Scenario.link`; Aeries' `~/ims/...` hrefs with
  `Scenario.href = "tilde"`;
- wrapper-key variants: `Scenario.wrappers` (e.g. {"users": "students"});
- 200 with an error body: `fake.at(collection, n, lambda: Reply(json={"error": ...}))` or
  `error_page(...)`;
- token expiry mid-pull: `fake.at("users", n, issuer.expire_all)` (401 from page n on, until the
  client fetches a new token);
- 429 with Retry-After (seconds or HTTP date), 500/502/503/504, a slow response past the client's
  timeout, truncated JSON, a connection reset: `fake.server.fail_next(...)` (fakehttp);
- 403 for an unshared collection, 404 for an endpoint the vendor lacks: `Scenario.unavailable`;
- a server that ignores `offset`: `Scenario.ignore_offset`;
- records inserted between pages: `fake.at("users", 2, lambda: fake.add("users", row, at=0))`;
- ClassLink's `x-perm-rev` (data revision): `Scenario.revision` sends it, `fake.bump_revision()`
  changes it (from a hook: mid-pull);
- OAuth 1.0a (HMAC-SHA256/SHA1 over every query parameter, timestamp window, nonce replay),
  OAuth 2.0 client credentials, static bearer: fakehttp's OAuth1Verifier / OAuth2Issuer /
  StaticBearer on `fake.server`.

`fake.at(collection, n, fn)` calls `fn()` before the n-th request (1-based) of that collection
reaches the handlers (before any auth check); a Reply it returns is the answer. Requests
answered by a fakehttp fault are not counted.

The fake measures its own work per page, in CPU time of the serving thread: building the JSON
records (`build_seconds`) and `json.dumps` (`serialize_seconds`), for bench/poll.py; gzip,
when its server compresses (`NoDelayServer(gzip=True)`), is timed by the server
(`server.gzip_seconds`, fakehttp).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

import polars as pl

from ingestd.oneroster import spec
from tests.sources.pollers.fakehttp import FakeServer, Reply, Request

BASE = "/ims/oneroster/v1p1"
STAMP = "2026-08-01T06:00:00.000Z"  # dateLastModified of every record not changed since
_USER_ID = re.compile(r"\{([^{}:]*):([^{}]*)\}")


@dataclass
class Scenario:
    """How the fake behaves (defaults: a well-behaved ClassLink-like server)."""

    default_limit: int = 100
    max_limit: int | None = None
    total: Literal["exact", "missing"] = "exact"
    total_skew: int = 0
    total_header: str = "X-Total-Count"
    link: Literal["absolute", "relative", "missing"] = "absolute"
    href: Literal["absolute", "tilde"] = "absolute"
    wrappers: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)  # collection -> 403 | 404
    revision: str | None = None  # x-perm-rev to send
    json_booleans: bool = False  # true/false as JSON booleans instead of "true"/"false"
    ignore_offset: bool = False  # a broken server: every request gets the first page


# collection path -> (entity whose rows it serves, default wrapper key, row filter)
_ROUTES: dict[str, tuple[str, str, Callable[[pl.DataFrame], pl.DataFrame] | None]] = {
    "orgs": ("orgs", "orgs", None),
    "schools": ("orgs", "orgs", lambda f: f.filter(pl.col("type") == "school")),
    "academicSessions": ("academicSessions", "academicSessions", None),
    "terms": ("academicSessions", "academicSessions", lambda f: f.filter(pl.col("type") == "term")),
    "courses": ("courses", "courses", None),
    "classes": ("classes", "classes", None),
    "users": ("users", "users", None),
    "students": ("users", "users", lambda f: f.filter(pl.col("role") == "student")),
    "teachers": ("users", "users", lambda f: f.filter(pl.col("role") == "teacher")),
    "enrollments": ("enrollments", "enrollments", None),
    "demographics": ("demographics", "demographics", None),
}


def read_district(folder: Path) -> dict[str, pl.DataFrame]:
    """The seven tables of a CSV set as frames of strings ("" for empty cells)."""
    tables = {}
    for entity in spec.ENTITIES:
        frame = pl.read_csv(folder / entity.file_name, infer_schema=False)
        tables[entity.name] = frame.with_columns(pl.all().fill_null(""))
    return tables


def _split(value: str) -> list[str]:
    return value.split(",") if value else []


class FakeOneRoster:
    """The fake API; `server` is the underlying FakeServer (faults, auth, recorded requests)."""

    def __init__(
        self,
        district: Path | dict[str, pl.DataFrame],
        scenario: Scenario | None = None,
        server: FakeServer | None = None,
    ) -> None:
        self.tables = read_district(district) if isinstance(district, Path) else dict(district)
        self.scenario = scenario or Scenario()
        self.server = server or NoDelayServer()
        self.stamps: dict[str, dict[str, str]] = {e: {} for e in spec.ENTITY_NAMES}
        self.lock = threading.Lock()
        self.revision = self.scenario.revision
        self.hooks: list[_Hook] = []
        self.counts: dict[str, int] = {}
        self.pages_served = 0
        self.build_seconds = 0.0
        self.serialize_seconds = 0.0
        self.server.before.insert(0, self._run_hooks)  # before any auth check
        for name in _ROUTES:
            self.server.route("GET", re.escape(f"{BASE}/{name}"))(self._handler(name))

    # --- life ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API's base URL."""
        return self.server.url + BASE

    def __enter__(self) -> FakeOneRoster:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    # --- server-side changes ---------------------------------------------------------------

    def at(
        self, collection: str, n: int, fn: Callable[[], Reply | None], *, repeat: bool = False
    ) -> None:
        """Call `fn` before the n-th request of `collection` (and every later one with repeat);
        a Reply it returns answers that request."""
        self.hooks.append(_Hook(collection, n, fn, repeat))

    def error_page(self, collection: str, n: int, body: Any) -> None:
        """Answer the n-th request of `collection` with 200 and `body`."""
        self.at(collection, n, lambda: Reply(json=body))

    def bump_revision(self) -> None:
        """A new x-perm-rev: the district's data changed."""
        with self.lock:
            self.revision = str(int(self.revision or "0") + 1)

    def update(self, entity: str, sourced_id: str, stamp: str | None = None, **values: str) -> None:
        """Change CSV columns of one record (its dateLastModified moves on)."""
        with self.lock:
            frame = self.tables[entity]
            hit = pl.col("sourcedId") == sourced_id
            if not frame.filter(hit).height:
                raise KeyError(sourced_id)
            self.tables[entity] = frame.with_columns(
                pl.when(hit).then(pl.lit(v)).otherwise(pl.col(c)).alias(c)
                for c, v in values.items()
            )
            self.stamps[entity][sourced_id] = stamp or _now()

    def add(self, entity: str, row: dict[str, str], at: int | None = None) -> None:
        """Insert a record (CSV columns; missing ones empty) at position `at` (default: last)."""
        with self.lock:
            frame = self.tables[entity]
            new = pl.DataFrame([{c: row.get(c, "") for c in frame.columns}], schema=frame.schema)
            at = frame.height if at is None else at
            self.tables[entity] = pl.concat([frame.slice(0, at), new, frame.slice(at)])
            self.stamps[entity][row["sourcedId"]] = _now()

    def remove(self, entity: str, sourced_ids: list[str]) -> None:
        """Delete records."""
        with self.lock:
            frame = self.tables[entity]
            self.tables[entity] = frame.filter(~pl.col("sourcedId").is_in(sourced_ids))

    def remove_user(self, sourced_id: str) -> list[str]:
        """Delete a user as an SIS does: with their enrollments and demographics, and out of
        other users' agents. Returns the sourcedIds of the enrollments removed."""
        enrollments = self.tables["enrollments"]
        gone = enrollments.filter(pl.col("userSourcedId") == sourced_id)["sourcedId"].to_list()
        self.remove("enrollments", gone)
        self.remove("demographics", [sourced_id])
        self.remove("users", [sourced_id])
        users = self.tables["users"]
        for row in users.filter(pl.col("agentSourcedIds").str.contains(sourced_id)).iter_rows(
            named=True
        ):
            agents = [a for a in _split(row["agentSourcedIds"]) if a != sourced_id]
            self.update("users", row["sourcedId"], agentSourcedIds=",".join(agents))
        return gone

    # --- serving -----------------------------------------------------------------------------

    def _run_hooks(self, req: Request) -> Reply | None:
        if not req.path.startswith(BASE + "/"):
            return None
        name = req.path[len(BASE) + 1 :]
        with self.lock:
            n = self.counts[name] = self.counts.get(name, 0) + 1
            due = [
                h
                for h in self.hooks
                if h.collection == name and (n == h.n or (h.repeat and n > h.n))
            ]
        for hook in due:
            reply = hook.fn()
            if isinstance(reply, Reply):
                return reply
        return None

    def _handler(self, name: str) -> Callable[[Request], Reply]:
        def handle(req: Request) -> Reply:
            return self._page(name, req)

        return handle

    def _page(self, name: str, req: Request) -> Reply:
        sc = self.scenario
        if name in sc.unavailable:
            status = sc.unavailable[name]
            text = "not shared with this application" if status == 403 else "unknown endpoint"
            return Reply(status, json=_status_info(text, "forbidden" if status == 403 else ""))
        try:
            limit = int(req.arg("limit") or sc.default_limit)
            offset = int(req.arg("offset") or 0)
            if limit < 1 or offset < 0:
                raise ValueError
        except ValueError:
            return Reply(400, json=_status_info("limit and offset must be whole numbers", ""))
        if sc.max_limit is not None:
            limit = min(limit, sc.max_limit)
        if sc.ignore_offset:
            offset = 0
        entity, key, only = _ROUTES[name]
        with self.lock:
            frame = self.tables[entity]
            stamps = self.stamps[entity]
            revision = self.revision
        if only is not None:
            frame = only(frame)
        total = frame.height
        page = frame.slice(offset, limit)
        started = time.thread_time()  # CPU time of this thread: other requests' threads
        to_json = getattr(self, f"_{entity}")  # waiting for the GIL do not count
        base = self.url if sc.href == "absolute" else "~" + BASE
        records = [to_json(row, base, stamps) for row in page.iter_rows(named=True)]
        built = time.thread_time()
        body = json.dumps({sc.wrappers.get(name, key): records}).encode()
        done = time.thread_time()
        with self.lock:
            self.pages_served += 1
            self.build_seconds += built - started
            self.serialize_seconds += done - built
        headers: dict[str, str] = {}
        if sc.total == "exact":
            headers[sc.total_header] = str(total + sc.total_skew)
        if revision is not None:
            headers["x-perm-rev"] = revision
        if sc.link != "missing":
            prefix = self.url if sc.link == "absolute" else BASE
            links = []
            if offset + page.height < total:
                links.append(f'<{prefix}/{name}?limit={limit}&offset={offset + page.height}>; '
                             'rel="next"')  # fmt: skip
            last = max(0, (total - 1) // limit * limit)
            links.append(f'<{prefix}/{name}?limit={limit}&offset={last}>; rel="last"')
            headers["Link"] = ", ".join(links)
        return Reply(body=body, headers=headers)

    # --- the JSON binding, entity by entity ------------------------------------------------

    def _common(self, row: dict[str, str], stamps: dict[str, str]) -> dict[str, Any]:
        sid = row["sourcedId"]
        return {
            "sourcedId": sid,
            "status": row["status"] or "active",
            "dateLastModified": row["dateLastModified"] or stamps.get(sid, STAMP),
        }

    def _bool(self, value: str) -> Any:
        if self.scenario.json_booleans and value in ("true", "false"):
            return value == "true"
        return value

    @staticmethod
    def _ref(base: str, path: str, type_: str, sid: str) -> dict[str, str] | None:
        if not sid:
            return None
        return {"href": f"{base}/{path}/{sid}", "sourcedId": sid, "type": type_}

    def _refs(self, base: str, path: str, type_: str, sids: str) -> list[dict[str, str]]:
        return [self._ref(base, path, type_, s) for s in _split(sids)]  # type: ignore[misc]

    def _orgs(self, row: dict[str, str], base: str, stamps: dict[str, str]) -> dict[str, Any]:
        org = self._common(row, stamps)
        org.update(name=row["name"], type=row["type"], identifier=row["identifier"])
        if row["parentSourcedId"]:  # absent when there is none
            org["parent"] = self._ref(base, "orgs", "org", row["parentSourcedId"])
        return org

    def _academicSessions(
        self, row: dict[str, str], base: str, stamps: dict[str, str]
    ) -> dict[str, Any]:
        session = self._common(row, stamps)
        session.update(
            title=row["title"],
            type=row["type"],
            startDate=row["startDate"],
            endDate=row["endDate"],
            parent=self._ref(base, "academicSessions", "academicSession", row["parentSourcedId"]),
            schoolYear=row["schoolYear"],
        )
        return session

    def _courses(self, row: dict[str, str], base: str, stamps: dict[str, str]) -> dict[str, Any]:
        course = self._common(row, stamps)
        course.update(
            title=row["title"],
            schoolYear=self._ref(
                base, "academicSessions", "academicSession", row["schoolYearSourcedId"]
            ),
            courseCode=row["courseCode"],
            grades=_split(row["grades"]),
            subjects=_split(row["subjects"]),
            org=self._ref(base, "orgs", "org", row["orgSourcedId"]),
            subjectCodes=_split(row["subjectCodes"]),
        )
        return course

    def _classes(self, row: dict[str, str], base: str, stamps: dict[str, str]) -> dict[str, Any]:
        cls = self._common(row, stamps)
        cls.update(
            title=row["title"],
            classCode=row["classCode"],
            classType=row["classType"],
            location=row["location"],
            grades=_split(row["grades"]),
            subjects=_split(row["subjects"]),
            course=self._ref(base, "courses", "course", row["courseSourcedId"]),
            school=self._ref(base, "schools", "org", row["schoolSourcedId"]),
            terms=self._refs(base, "academicSessions", "academicSession", row["termSourcedIds"]),
            subjectCodes=_split(row["subjectCodes"]),
            periods=_split(row["periods"]),
        )
        return cls

    def _users(self, row: dict[str, str], base: str, stamps: dict[str, str]) -> dict[str, Any]:
        user = self._common(row, stamps)
        user.update(
            username=row["username"],
            userIds=[{"type": t, "identifier": i} for t, i in _USER_ID.findall(row["userIds"])],
            enabledUser=self._bool(row["enabledUser"]),
            givenName=row["givenName"],
            familyName=row["familyName"],
            middleName=row["middleName"],
            role=row["role"],
            identifier=row["identifier"],
            email=row["email"],
            sms=row["sms"],
            phone=row["phone"],
            agents=self._refs(base, "users", "user", row["agentSourcedIds"]),
            orgs=self._refs(base, "orgs", "org", row["orgSourcedIds"]),
            grades=_split(row["grades"]),
            password=row["password"],
        )
        return user

    def _demographics(
        self, row: dict[str, str], base: str, stamps: dict[str, str]
    ) -> dict[str, Any]:
        demo = self._common(row, stamps)
        for col in spec.DEMOGRAPHICS.column_names[3:]:
            kind = spec.DEMOGRAPHICS.column(col).kind
            demo[col] = self._bool(row[col]) if kind is spec.Kind.BOOL else row[col]
        return demo

    def _enrollments(
        self, row: dict[str, str], base: str, stamps: dict[str, str]
    ) -> dict[str, Any]:
        enrollment = self._common(row, stamps)
        enrollment.update(
            user=self._ref(base, "users", "user", row["userSourcedId"]),
            # "class" is the JSON field name (a Python keyword, so not as a keyword argument)
            **{"class": self._ref(base, "classes", "class", row["classSourcedId"])},
            school=self._ref(base, "schools", "org", row["schoolSourcedId"]),
            role=row["role"],
            beginDate=row["beginDate"],
            endDate=row["endDate"],
        )
        if row["primary"]:  # students carry no value: leave the field out
            enrollment["primary"] = self._bool(row["primary"])
        return enrollment


class NoDelayServer(FakeServer):
    """A FakeServer whose answers leave at once: FakeServer writes a response's headers and
    body in two sends, and with Nagle's algorithm on, the body waits for the client's delayed
    ACK of the headers (~40 ms per request on Linux loopback, 20x the work of a page)."""

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        h.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        FakeServer._send(h, reply)


@dataclass
class _Hook:
    collection: str
    n: int
    fn: Callable[[], Reply | None]
    repeat: bool


def _status_info(description: str, minor: str) -> dict[str, Any]:
    return {
        "statusInfoSet": [
            {
                "imsx_codeMajor": "failure",
                "imsx_severity": "error",
                "imsx_description": description,
                "imsx_CodeMinor": {
                    "imsx_codeMinorField": [
                        {"imsx_codeMinorFieldName": "TargetEndSystem",
                         "imsx_codeMinorFieldValue": minor or "unknownobject"}
                    ]
                },
            }
        ]
    }  # fmt: skip


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
