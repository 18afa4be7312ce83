"""The Ed-Fi sample: real data with real defects, which the validator must accept."""

from __future__ import annotations

from pathlib import Path

from ingestd.oneroster.validate import validate_set
from tests.oneroster.corpus import issues


def test_edfi_sample_is_accepted_with_the_trailing_commas_reported(edfi_sample: Path) -> None:
    result = validate_set(edfi_sample)
    assert result.accepted, result.report.to_text()
    extra = issues(result.report, "extra_empty_fields")
    assert [(i.file, i.line) for i in extra] == [("users.csv", 10), ("users.csv", 11)]
    rows = {entity: frame.height for entity, frame in result.tables.items()}
    assert rows == {
        "orgs": 2,
        "academicSessions": 3,
        "courses": 2,
        "classes": 2,
        "users": 10,
        "demographics": 8,
        "enrollments": 24,
    }


def test_edfi_values_stay_strings(edfi_sample: Path) -> None:
    tables = validate_set(edfi_sample).tables
    assert "03100500" in tables["courses"]["sourcedId"].to_list()
    assert set(tables["users"]["grades"].drop_nulls().to_list()) == {"09"}
    assert tables["orgs"].columns[-5:] == [
        "metadata.address1",
        "metadata.address2",
        "metadata.city",
        "metadata.postCode",
        "metadata.state",
    ]
    # the last row of a file without a final newline is complete, and kept
    assert tables["enrollments"]["sourcedId"][-1] == "54AFE73B-66E5-451E-B681-013D9865EA27"
    # the two teachers whose rows had a trailing comma are kept, without the extra field
    teachers = tables["users"].filter(tables["users"]["role"] == "teacher")
    assert sorted(teachers["sourcedId"].to_list()) == ["207268", "207270"]
    assert teachers["password"].to_list() == [None, None]
