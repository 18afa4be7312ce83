"""diff_entity on small hand-built frames: what is created, updated, deleted, and kept."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from ingestd.oneroster import spec
from ingestd.pipeline.diff import H1, H2, PREVIOUS, DiffOptions, EntityDiff, _match, diff_entity


def frame(
    entity: str, rows: list[dict[str, str | None]], extra: tuple[str, ...] = ()
) -> pl.DataFrame:
    """Rows of `entity` (spec columns plus `extra`), every column a string, missing = null."""
    cols = [*spec.ENTITY_BY_NAME[entity].column_names, *extra]
    unknown = {k for r in rows for k in r} - set(cols)
    assert not unknown, unknown
    return pl.DataFrame(
        {c: [r.get(c) for r in rows] for c in cols}, schema={c: pl.String for c in cols}
    )


def org(sid: str, name: str = "School", **values: str | None) -> dict[str, str | None]:
    return {"sourcedId": sid, "name": name, "type": "school", **values}


def orgs(*rows: dict[str, str | None]) -> pl.DataFrame:
    return frame("orgs", list(rows))


def ids(df: pl.DataFrame) -> list[str]:
    """The sourcedIds of a frame, sorted (the order of rows within a frame is not specified)."""
    return sorted(df["sourcedId"].to_list())


def column(df: pl.DataFrame, name: str) -> dict[str, str | None]:
    """sourcedId -> value of `name`."""
    return dict(zip(df["sourcedId"].to_list(), df[name].to_list(), strict=True))


def previous(d: EntityDiff) -> dict[str, dict[str, Any]]:
    """sourcedId -> previous_attributes of every update."""
    return {row["sourcedId"]: json.loads(row[PREVIOUS]) for row in d.updated.iter_rows(named=True)}


def no_changes(d: EntityDiff) -> bool:
    return d.created.height == d.updated.height == d.deleted.height == 0


# --- created / updated / deleted ---------------------------------------------------------


def test_created_updated_deleted() -> None:
    old = orgs(org("1", "One"), org("2", "Two"), org("3", "Three"))
    new = orgs(org("2", "Two B"), org("3", "Three"), org("4", "Four"))
    d = diff_entity("orgs", old, new)
    assert ids(d.created) == ["4"]
    assert ids(d.updated) == ["2"]
    assert ids(d.deleted) == ["1"]
    assert ids(d.state) == ["2", "3", "4"]
    assert d.counts == {"rows": 3, "prior_rows": 3, "created": 1, "updated": 1, "deleted": 1}
    assert previous(d) == {"2": {"name": "Two"}}
    # created and updated rows are as they are now; deleted rows as last seen
    assert d.created.row(0, named=True) == {
        "sourcedId": "4",
        "status": None,
        "dateLastModified": None,
        "name": "Four",
        "type": "school",
        "identifier": None,
        "parentSourcedId": None,
    }
    assert d.updated["name"].to_list() == ["Two B"]
    assert d.deleted["name"].to_list() == ["One"]
    assert d.updated.columns == [*spec.ORGS.column_names, PREVIOUS]
    assert d.kept_rows == 0 and d.notes == []


def test_previous_attributes_hold_exactly_the_changed_fields_with_old_values() -> None:
    old = orgs(
        org("1", "One", identifier=None, parentSourcedId="100"),
        org("2", "Two", identifier="ID-2", parentSourcedId="100"),
        org("3", 'Quote " and \\ back', identifier="X"),
    )
    new = orgs(
        org("1", "One B", identifier="ID-1", parentSourcedId="100"),  # old null -> ""
        org("2", "Two", identifier=None, parentSourcedId="100"),  # new null, old "ID-2"
        org("3", "Plain", identifier="X"),  # old value needs JSON escaping
    )
    d = diff_entity("orgs", old, new)
    assert previous(d) == {
        "1": {"name": "One", "identifier": ""},
        "2": {"identifier": "ID-2"},
        "3": {"name": 'Quote " and \\ back'},
    }
    # fields in spec order inside the JSON text
    assert d.updated.filter(pl.col("sourcedId") == "1")[PREVIOUS].item() == (
        '{"name":"One","identifier":""}'
    )
    assert d.updated.filter(pl.col("sourcedId") == "2")["identifier"].item() is None


def test_date_last_modified_alone_is_not_an_update() -> None:
    old = orgs(
        org("1", dateLastModified="2026-01-01T00:00:00Z"),
        org("2", "Two", dateLastModified="2026-01-01T00:00:00Z"),
    )
    new = orgs(
        org("1", dateLastModified="2026-02-02T00:00:00Z"),
        org("2", "Two B", dateLastModified="2026-02-02T00:00:00Z"),
    )
    d = diff_entity("orgs", old, new)
    assert ids(d.updated) == ["2"]
    assert previous(d) == {"2": {"name": "Two"}}  # dateLastModified never listed
    # the new state carries the new stamp even where nothing else changed
    assert d.state["dateLastModified"].to_list() == ["2026-02-02T00:00:00Z"] * 2


def test_ignore_columns_option() -> None:
    old = orgs(org("1", identifier="A"))
    new = orgs(org("1", identifier="B"))
    assert no_changes(
        diff_entity("orgs", old, new, options=DiffOptions(ignore_columns=("identifier",)))
    )
    d = diff_entity("orgs", old, new, options=DiffOptions(ignore_columns=()))
    assert previous(d) == {"1": {"identifier": "A"}}


def test_null_and_null_are_equal() -> None:
    old = orgs(org("1", identifier=None), org("2", status=None))
    new = orgs(org("1", identifier=None), org("2", status=None))
    assert no_changes(diff_entity("orgs", old, new))


def test_null_and_empty_string_are_equal() -> None:
    old = orgs(org("1", identifier=None, parentSourcedId=""), org("2", identifier=""))
    new = orgs(org("1", identifier="", parentSourcedId=None), org("2", identifier=None))
    d = diff_entity("orgs", old, new)
    assert no_changes(d)
    assert d.counts == {"rows": 2, "prior_rows": 2, "created": 0, "updated": 0, "deleted": 0}


def test_empty_string_list_and_metadata_values_equal_null() -> None:
    old = frame("users", [user("1", agentSourcedIds=None, grades="")])
    new = frame(
        "users",
        [{**user("1", agentSourcedIds="", grades=None), "metadata.x": ""}],
        extra=("metadata.x",),
    )
    assert no_changes(diff_entity("users", old, new))


def user(sid: str, **values: str | None) -> dict[str, str | None]:
    base: dict[str, str | None] = {
        "sourcedId": sid,
        "enabledUser": "true",
        "orgSourcedIds": "o1",
        "role": "student",
        "username": f"user{sid}",
        "givenName": "Ana",
        "familyName": "Diaz",
    }
    return {**base, **values}


def test_list_fields_compare_as_sets() -> None:
    old = frame(
        "users",
        [
            user("1", orgSourcedIds="o1,o2", grades="09,10"),
            user("2", orgSourcedIds="o1, o2", agentSourcedIds="g1,g2"),
            user("3", orgSourcedIds="o1,o2"),
            user("4", userIds="{SIS:1},{LDAP:a}"),
        ],
    )
    new = frame(
        "users",
        [
            user("1", orgSourcedIds="o2,o1", grades="10,09"),  # reordered
            user("2", orgSourcedIds="o2 ,o1", agentSourcedIds="g2, g1"),  # spaces
            user("3", orgSourcedIds="o1,o3"),  # a real change
            user("4", userIds="{LDAP:a},{SIS:1}"),
        ],
    )
    d = diff_entity("users", old, new)
    assert ids(d.updated) == ["3"]
    assert previous(d) == {"3": {"orgSourcedIds": "o1,o2"}}  # the old text, verbatim
    assert d.updated["orgSourcedIds"].to_list() == ["o1,o3"]
    # the state keeps the new text as received
    assert column(d.state, "orgSourcedIds") == {
        "1": "o2,o1",
        "2": "o2 ,o1",
        "3": "o1,o3",
        "4": "o1",
    }


def test_text_fields_are_not_lists() -> None:
    old = orgs(org("1", "Smith, Jones"))
    new = orgs(org("1", "Jones, Smith"))
    assert previous(diff_entity("orgs", old, new)) == {"1": {"name": "Smith, Jones"}}


def test_blank_status_equals_active() -> None:
    old = orgs(org("1", status=None), org("2", status="active"))
    new = orgs(org("1", status="active"), org("2", status=None))
    assert no_changes(diff_entity("orgs", old, new))
    # a real status change is an update
    d = diff_entity("orgs", old, orgs(org("1", status="inactive"), org("2", status=None)))
    assert previous(d) == {"1": {"status": ""}}


def test_empty_string_status_equals_active() -> None:
    old = orgs(org("1", status=""), org("2", status="active"))
    new = orgs(org("1", status="active"), org("2", status=""))
    assert no_changes(diff_entity("orgs", old, new))


# --- deletes ---------------------------------------------------------------------------------


def test_tobedeleted_in_bulk_is_a_delete() -> None:
    old = orgs(org("1", "One"), org("2", "Two"))
    new = orgs(
        org("1", "One B", status="tobedeleted"), org("2", "Two"), org("9", status="tobedeleted")
    )
    d = diff_entity("orgs", old, new)
    assert ids(d.deleted) == ["1"]
    assert d.deleted["name"].to_list() == ["One"]  # as last seen
    assert d.created.height == 0  # a tobedeleted row never seen before is nothing
    assert d.updated.height == 0
    assert ids(d.state) == ["2"]


def test_delta_upserts_and_deletes_only_what_it_names() -> None:
    old = orgs(org("1", "One"), org("2", "Two"), org("3", "Three"))
    new = orgs(
        org("2", status="tobedeleted"),
        org("3", "Three B"),
        org("4", "Four"),
        org("9", status="tobedeleted"),
    )
    d = diff_entity("orgs", old, new, mode="delta")
    assert ids(d.deleted) == ["2"]
    assert ids(d.created) == ["4"]
    assert ids(d.updated) == ["3"]
    assert previous(d) == {"3": {"name": "Three"}}
    assert ids(d.state) == ["1", "3", "4"]  # 1 untouched, kept as it was
    assert d.state.filter(pl.col("sourcedId") == "1")["name"].item() == "One"
    assert d.counts == {"rows": 3, "prior_rows": 3, "created": 1, "updated": 1, "deleted": 1}


def test_bulk_missing_row_is_a_delete_but_delta_missing_row_is_not() -> None:
    old = orgs(org("1"), org("2"))
    new = orgs(org("2"))
    assert ids(diff_entity("orgs", old, new).deleted) == ["1"]
    d = diff_entity("orgs", old, new, mode="delta")
    assert no_changes(d)
    assert ids(d.state) == ["1", "2"]


def test_keep_ids_carry_an_invalid_rows_previous_version() -> None:
    old = orgs(org("1", "One"), org("2", "Two"), org("3", "Three"))
    new = orgs(org("1", "One"), org("3", "Three"))  # row 2 was dropped by the validator
    d = diff_entity("orgs", old, new, keep_ids=["2", "never-seen"])
    assert no_changes(d)
    assert d.kept_rows == 1
    assert ids(d.state) == ["1", "2", "3"]
    assert d.state.filter(pl.col("sourcedId") == "2")["name"].item() == "Two"
    # without keep_ids the same set deletes it
    assert ids(diff_entity("orgs", old, new).deleted) == ["2"]


# --- natural key of enrollments ----------------------------------------------------------


def enrollment(sid: str, cls: str, usr: str, role: str = "student", **values: str | None):
    return {
        "sourcedId": sid,
        "classSourcedId": cls,
        "schoolSourcedId": "s1",
        "userSourcedId": usr,
        "role": role,
        **values,
    }


NATURAL = DiffOptions(natural_key=True)


def test_natural_key_ignores_renumbered_enrollments() -> None:
    old = frame("enrollments", [enrollment("e1", "c1", "u1"), enrollment("e2", "c1", "u2")])
    new = frame("enrollments", [enrollment("e71", "c1", "u1"), enrollment("e72", "c1", "u2")])
    d = diff_entity("enrollments", old, new, options=NATURAL)
    assert no_changes(d)
    assert d.notes == []
    assert ids(d.state) == ["e71", "e72"]  # the state takes the new numbers
    # keyed by sourcedId (the default), the same files delete and create everything
    d = diff_entity("enrollments", old, new)
    assert ids(d.deleted) == ["e1", "e2"] and ids(d.created) == ["e71", "e72"]


def test_natural_key_update_does_not_list_the_sourced_id() -> None:
    old = frame("enrollments", [enrollment("e1", "c1", "u1", primary="false")])
    new = frame("enrollments", [enrollment("e9", "c1", "u1", primary="true")])
    d = diff_entity("enrollments", old, new, options=NATURAL)
    assert d.created.height == d.deleted.height == 0
    assert d.updated["sourcedId"].to_list() == ["e9"]
    assert json.loads(d.updated[PREVIOUS].item()) == {"primary": "false"}


def test_natural_key_falls_back_to_sourced_id_when_not_unique() -> None:
    old = frame("enrollments", [enrollment("e1", "c1", "u1"), enrollment("e2", "c1", "u2")])
    new = frame(
        "enrollments",
        [
            enrollment("e1", "c1", "u1"),
            enrollment("e3", "c1", "u2"),
            enrollment("e4", "c1", "u2"),  # c1+u2+student twice: not a key
        ],
    )
    d = diff_entity("enrollments", old, new, options=NATURAL)
    assert d.notes == ["natural key not unique; matched on sourcedId"]
    assert ids(d.created) == ["e3", "e4"]
    assert ids(d.deleted) == ["e2"]
    assert d.updated.height == 0


def test_natural_key_only_for_enrollments() -> None:
    old = orgs(org("1", "One"))
    new = orgs(org("2", "One"))
    d = diff_entity("orgs", old, new, options=NATURAL)
    assert ids(d.created) == ["2"] and ids(d.deleted) == ["1"]


# --- absent entities and extension columns ------------------------------------------------


def test_absent_entity_changes_nothing() -> None:
    old = orgs(org("1", "One"), org("2", "Two"))
    d = diff_entity("orgs", old, None)
    assert no_changes(d)
    assert d.state.equals(old)
    assert d.counts == {"rows": 2, "prior_rows": 2, "created": 0, "updated": 0, "deleted": 0}


def test_first_set_creates_everything() -> None:
    new = orgs(org("2"), org("1"))
    d = diff_entity("orgs", None, new)
    assert ids(d.created) == ["1", "2"]
    assert d.counts == {"rows": 2, "prior_rows": 0, "created": 2, "updated": 0, "deleted": 0}


def test_metadata_column_added() -> None:
    old = orgs(org("1"), org("2"))
    new = frame(
        "orgs",
        [
            {**org("1"), "metadata.district.code": "A1"},
            {**org("2"), "metadata.district.code": None},
        ],
        extra=("metadata.district.code",),
    )
    d = diff_entity("orgs", old, new)
    assert ids(d.updated) == ["1"]
    assert previous(d) == {"1": {"metadata.district.code": ""}}
    assert d.state.columns == [*spec.ORGS.column_names, "metadata.district.code"]
    assert d.updated["metadata.district.code"].to_list() == ["A1"]


def test_metadata_columns_follow_the_spec_columns_sorted() -> None:
    old = frame("orgs", [{**org("1"), "metadata.b": "x"}], extra=("metadata.b",))
    new = frame(
        "orgs",
        [{**org("1"), "metadata.c": "y", "metadata.b": "x"}],
        extra=("metadata.c", "metadata.b"),
    )
    d = diff_entity("orgs", old, new)
    assert d.state.columns == [*spec.ORGS.column_names, "metadata.b", "metadata.c"]
    assert previous(d) == {"1": {"metadata.c": ""}}


@pytest.mark.parametrize("mode", ["bulk", "delta"])
def test_unchanged_rows_make_no_events(mode: str) -> None:
    rows = orgs(org("1", "One", identifier="I"), org("2", "Two"))
    d = diff_entity("orgs", rows, rows.clone(), mode=mode)
    assert no_changes(d)
    assert d.state.sort("sourcedId").equals(rows)


def test_swapped_values_between_columns_are_an_update() -> None:
    old = frame("users", [user("1", givenName="Ana", familyName="Diaz")])
    new = frame("users", [user("1", givenName="Diaz", familyName="Ana")])
    assert previous(diff_entity("users", old, new)) == {
        "1": {"givenName": "Ana", "familyName": "Diaz"}
    }


def test_natural_key_keeps_an_invalid_renumbered_enrollment() -> None:
    old = frame("enrollments", [enrollment("e1", "c1", "u1"), enrollment("e2", "c1", "u2")])
    # today e1 is e71 and e2 is e72; e72 was dropped by the validator (say, a bad date)
    new = frame("enrollments", [enrollment("e71", "c1", "u1")])
    dropped = frame("enrollments", [enrollment("e72", "c1", "u2")])
    d = diff_entity("enrollments", old, new, keep_ids=["e72"], keep_rows=dropped, options=NATURAL)
    assert d.deleted.height == 0
    assert d.kept_rows == 1


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"parentSourcedId": "x"}, {"identifier": "x"}, {"identifier": "", "parentSourcedId": "x"}),
        ({"identifier": "ab", "parentSourcedId": "c"}, {"identifier": "a", "parentSourcedId": "bc"},
         {"identifier": "ab", "parentSourcedId": "c"}),
        ({"name": "N"}, {"name": None, "identifier": "N"}, {"name": "N", "identifier": ""}),
        ({"identifier": "x"}, {}, {"identifier": "x"}),
        ({}, {"status": "inactive"}, {"status": ""}),
    ],
)  # fmt: skip
def test_values_moving_between_columns_or_to_null_are_updates(
    before: dict[str, str | None], after: dict[str, str | None], expected: dict[str, str]
) -> None:
    """Rows are matched by a fingerprint first: these must still be seen as changed."""
    old = orgs({**org("1", "Name"), **before})
    new = orgs({**org("1", "Name"), **after})
    assert previous(diff_entity("orgs", old, new)) == {"1": expected}


# --- fingerprints ------------------------------------------------------------------------


def test_state_fingerprints_are_row_for_row_and_reused_by_the_next_diff() -> None:
    day1 = orgs(org("1", "One"), org("2", "Two"), org("3", "Three"))
    first = diff_entity("orgs", None, day1)
    assert first.fingerprints is None  # a first set needs none: made for the snapshot
    assert first.state_fingerprints().hashes.height == first.state.height
    day2 = orgs(org("3", "Three"), org("2", "Two B"), org("4", "Four"))
    recomputed = diff_entity("orgs", first.state, day2)
    reused = diff_entity("orgs", first.state, day2, old_fingerprints=first.fingerprints)
    for name in ("state", "created", "updated", "deleted"):
        assert getattr(reused, name).equals(getattr(recomputed, name)), name
    assert reused.fingerprints.hashes.equals(recomputed.fingerprints.hashes)
    assert (ids(reused.created), ids(reused.updated), ids(reused.deleted)) == (["4"], ["2"], ["1"])


def test_stored_fingerprints_are_trusted_only_for_the_columns_they_cover() -> None:
    old = orgs(org("1", "One"), org("2", "Two"))
    new = orgs(org("1", "One B"), org("2", "Two"))
    # fingerprints of today's rows posing as yesterday's: trusted, nothing looks changed
    lying = diff_entity("orgs", None, new).state_fingerprints()
    assert no_changes(diff_entity("orgs", old, new, old_fingerprints=lying))
    # ... but not when this diff compares other columns (here: dateLastModified too)
    options = DiffOptions(ignore_columns=())
    d = diff_entity("orgs", old, new, old_fingerprints=lying, options=options)
    assert previous(d) == {"1": {"name": "One"}}


def test_unmatched_rows_keep_file_order_whatever_the_hash_order() -> None:
    old = orgs(*(org(str(i), f"n{i}") for i in range(50)))
    new = orgs(*(org(str(i), f"n{i}" if i % 7 else f"m{i}") for i in reversed(range(60))))
    d = diff_entity("orgs", old, new)
    assert d.updated["sourcedId"].to_list() == [str(i) for i in reversed(range(50)) if i % 7 == 0]
    assert d.created["sourcedId"].to_list() == [str(i) for i in reversed(range(50, 60))]


def test_a_fingerprint_that_pairs_two_rows_pairs_nothing() -> None:
    """Keys are unique on both sides; if they were not, no row is paired by fingerprint
    (all are matched on the key), whichever side repeats."""

    def prints(pairs: list[tuple[int, int]]) -> pl.DataFrame:
        return pl.DataFrame(pairs, schema={H1: pl.UInt64, H2: pl.UInt64}, orient="row")

    plain = _match(prints([(1, 1), (2, 2), (3, 3)]), prints([(3, 3), (9, 9), (1, 1)]))
    assert plain.old_of_new is not None and plain.old_of_new.to_list() == [2, None, 0]
    assert plain.new_lone.to_list() == [1] and plain.old_lone.to_list() == [1]
    assert _match(prints([(1, 1)]), prints([(1, 1), (1, 1)])).old_of_new is None
    assert _match(prints([(1, 1), (1, 1)]), prints([(1, 1)])).old_of_new is None
    same_h1 = _match(prints([(1, 1)]), prints([(1, 2), (1, 1)]))  # H1 alike, H2 not
    assert same_h1.old_of_new is None
