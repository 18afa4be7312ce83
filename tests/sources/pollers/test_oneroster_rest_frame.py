"""The OneRoster REST poller's two ways of turning a page into rows, polars (the fast path,
oneroster_rest_frame.py) and json.loads + the Python mapping (oneroster_rest_map.py), give
the same rows, or the same PullError, for the same page: pages of a generated district
served by the fake OneRoster server (real HTTP), and hand-made pages of odd shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from ingestd.sources.pollers.base import PullError, Roster
from ingestd.sources.pollers.http import ApiResponse
from ingestd.sources.pollers.oneroster_rest import COLLECTIONS, Collection, _records
from ingestd.sources.pollers.oneroster_rest_frame import PageDecoder, rows_frame
from ingestd.sources.pollers.oneroster_rest_map import make_mapper
from ingestd.sources.pollers.runner import write_roster
from tests.oneroster.corpus import generated
from tests.sources.pollers.fake_oneroster import FakeOneRoster, Scenario

BY_ENTITY = {c.entity: c for c in COLLECTIONS}


def python_way(collection: Collection, body: bytes) -> pl.DataFrame | str:
    """The page through json.loads and the Python mapping: rows, or the PullError's text
    ("not_json" for a body json.loads refuses)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "not_json"
    response = ApiResponse(200, "http://x/", httpx.Headers(), body, data)
    mapper = make_mapper(collection.entity, {})
    try:
        return rows_frame(collection.entity, [mapper(r) for r in _records(collection, response)])
    except PullError as exc:
        return f"{exc.code}: {exc.message}"


def both_ways(collection: Collection, body: bytes) -> tuple[bool, pl.DataFrame | str]:
    """(whether polars took the page, what the poller makes of it)."""
    page = PageDecoder(collection.entity, collection.keys).decode(body)
    if page is None:
        return False, python_way(collection, body)
    return True, page.frame


def assert_same(got: pl.DataFrame | str, want: pl.DataFrame | str) -> None:
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
    else:
        assert got.equals(want), f"{got.to_dicts()[:3]} != {want.to_dicts()[:3]}"


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory, "district", 120, 5)


@pytest.mark.parametrize("json_booleans", [False, True])
def test_sample_pages_take_the_fast_path_with_the_same_rows(
    district: Path, json_booleans: bool
) -> None:
    fake = FakeOneRoster(district, Scenario(json_booleans=json_booleans))
    with fake, httpx.Client() as http:
        pages = {
            c.entity: http.get(f"{fake.url}{c.path}", params={"limit": 1000}).content
            for c in COLLECTIONS
        }
    for entity, body in pages.items():
        took, got = both_ways(BY_ENTITY[entity], body)
        want = python_way(BY_ENTITY[entity], body)
        assert took, entity
        assert isinstance(want, pl.DataFrame) and want.height > 0, entity
        assert_same(got, want)


GUIDREF = {"href": "https://sis/orgs/o1", "sourcedId": "o1", "type": "org"}
FAILURE = {"statusInfoSet": [{"imsx_codeMajor": "failure", "imsx_description": "busy"}]}
SUCCESS = {"statusInfoSet": [{"imsx_codeMajor": "success"}]}
UNICODE = 'Zoë Ñúñez \u2028 “quoted” "q", a\nb\r\tc 😀 你好'


def page(key: str, *records: Any, **extra: Any) -> bytes:
    return json.dumps({key: list(records), **extra}, ensure_ascii=False).encode()


# (collection, body, whether polars takes it)
ODD_PAGES: list[tuple[str, bytes, bool]] = [
    # valid and usual enough for the fast path
    ("users", page("users", {}), True),
    ("users", page("users"), True),
    ("users", page("users", {"sourcedId": "u", "metadata": {"x": [1, {"y": True}]}}), True),
    ("users", page("users", {"sourcedId": "u", "orgs": [GUIDREF, None], "agents": []}), True),
    ("users", page("users", {"userIds": [{"type": "SIS", "identifier": 7}, {"type": None}]}), True),
    ("users", page("users", {"identifier": 12345, "sms": -0, "phone": True, "email": None}), True),
    ("users", page("users", {"grades": "09,10", "enabledUser": False, "password": ""}), True),
    ("users", page("users", {"grades": ["09", None, 10, True]}), True),
    ("users", page("users", {"givenName": UNICODE}), True),
    ("users", page("students", {"sourcedId": "s"}), True),
    ("users", page("teachers", {"sourcedId": "t"}, metadata={"n": 2}), True),
    ("users", b' \n\t{"users": [{"sourcedId": "a"}], "error": null} \r\n', True),
    ("academicSessions", page("terms", {"sourcedId": "t", "schoolYear": 2027}), True),
    ("classes", page("classes", {"periods": "1,2", "terms": [{"sourcedId": 3}]}), True),
    ("enrollments", page("enrollments", {"class": {"sourcedId": "c"}, "user": {}}), True),
    ("demographics", page("demographics", {"asian": True, "white": "false", "sex": None}), True),
    # odd but valid: the Python way, same rows
    ("users", page("users", {"enabledUser": "TRUE"}), False),
    ("users", page("users", {"enabledUser": 1}), False),
    ("users", page("users", {"orgs": "o1"}), False),
    ("users", page("users", {"orgs": ["o1", GUIDREF]}), False),
    ("users", page("users", {"orgs": GUIDREF}), False),
    ("users", page("users", {"userIds": "{SIS:7}"}), False),
    ("users", page("users", {"identifier": 1.0, "sms": 1e20, "phone": 2.5e-7}), False),
    ("users", page("users", {"grades": [9.0]}), False),
    ("users", page("users", {"sourcedId": "u"}, metadata={"v": 1.5}), False),
    ("users", json.dumps({"users": [{"givenName": "😀"}]}).encode(), False),  # \ud83d\ude00
    ("users", page("students", {"sourcedId": "users"}), False),  # "users" named: unsure
    ("users", page("users", {"sourcedId": "u"}, **SUCCESS), False),
    ("enrollments", page("enrollments", {"school": "s1", "primary": " True "}), False),
    # not allowed: the Python way, the same PullError
    ("users", page("users", None), False),
    ("users", page("users", 5), False),
    ("users", page("users", {"userIds": [None]}), False),
    ("users", page("users", {"userIds": {"type": "SIS", "identifier": "7"}}), False),
    ("users", page("users", {"grades": [["a"]]}), False),
    ("users", page("users", {"identifier": {"a": 1}}), False),
    ("enrollments", page("enrollments", {"class": [GUIDREF]}), False),
    ("enrollments", page("enrollments", {"class": 5}), False),
    ("enrollments", page("enrollments", {"class": {"sourcedId": {"a": 1}}}), False),
    ("users", b'{"students": [{"sourcedId": "s"}], "users": null}', False),
    ("users", b'{"users": {"sourcedId": "s"}}', False),
    ("users", b'{"error": "invalid_token", "error_description": "expired"}', False),
    ("users", b'{"users": [], "error": {"message": "down"}}', False),
    ("users", page("users", **FAILURE), False),
    ("users", b'[{"users": []}]', False),
    ("users", b'{"orgs": []}', False),
    ("users", b'{"users": [{"givenName": "\\ud83d"}]}', False),
    # not JSON: retried by ApiClient
    ("users", b"<html>busy</html>", False),
    ("users", b'{"users": [{"sourcedId": "a"', False),
    ("users", b'{"users": []} {"users": []}', False),
    ("users", b'{"users": [{"sourcedId": "\xff"}]}', False),
]


@pytest.mark.parametrize(("entity", "body", "fast"), ODD_PAGES)
def test_odd_pages_give_the_same_rows_or_error(entity: str, body: bytes, fast: bool) -> None:
    took, got = both_ways(BY_ENTITY[entity], body)
    assert took is fast
    assert_same(got, python_way(BY_ENTITY[entity], body))


def test_the_python_way_of_a_page_is_the_same_rows_as_before() -> None:
    """The odd shapes of test_values_map_to_csv_forms, through a whole page."""
    body = page("users", {"sourcedId": "u1", "orgs": [GUIDREF, "o2"], "identifier": 12345})
    took, got = both_ways(BY_ENTITY["users"], body)
    assert not took and isinstance(got, pl.DataFrame)
    row = got.row(0, named=True)
    assert (row["orgSourcedIds"], row["identifier"], row["givenName"]) == ("o1,o2", "12345", "")


def test_a_frame_is_written_as_its_rows_would_be(tmp_path: Path) -> None:
    """write_roster writes a frame byte for byte as the csv module writes the same rows
    (quotes, commas, newlines, empty cells, unicode; all but a carriage return)."""
    values = ["", "plain", "a,b", 'say "hi"', "two\nlines", " padded ", UNICODE.replace("\r", "")]
    rows = [{"sourcedId": f"o{i}", "name": v, "identifier": v[::-1]} for i, v in enumerate(values)]
    rows.append({"sourcedId": "", "type": "school"})
    frame = rows_frame("orgs", rows)
    write_roster(tmp_path / "frame", Roster(tables={"orgs": frame}))
    write_roster(tmp_path / "rows", Roster(tables={"orgs": rows}))
    for name in ("orgs.csv", "manifest.csv"):
        written = (tmp_path / "frame" / name).read_bytes()
        assert written == (tmp_path / "rows" / name).read_bytes(), name
    assert b'"two\nlines"' in (tmp_path / "frame" / "orgs.csv").read_bytes()
