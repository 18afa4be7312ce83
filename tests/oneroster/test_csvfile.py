"""The CSV file reader: the one-pass path must agree with the line-by-line path, always."""

from __future__ import annotations

import csv
import io
import os
import random

import polars as pl
import pytest

from ingestd.oneroster.csvfile import read_table
from ingestd.oneroster.report import Report

HEADER = ["sourcedId", "status", "title", "grades", "note"]
ALPHABET = ['a', 'b', 'Z', '0', '9', ' ', ',', '"', 'é', '李', '-', "'"]  # fmt: skip


def _value(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return ""
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))


def _csv(rng: random.Random, rows: int, eol: str) -> bytes:
    buf = io.StringIO()
    quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
    writer = csv.writer(buf, lineterminator=eol, quoting=quoting)
    writer.writerow(HEADER)
    for i in range(rows):
        writer.writerow([f"id{i}", *(_value(rng) for _ in HEADER[1:])])
    return buf.getvalue().encode()


MUTATIONS = [
    lambda d, i: d[:i] + d[i + 1 :],  # drop a byte (a comma, a quote, a newline...)
    lambda d, i: d[:i] + b"," + d[i:],  # an extra field
    lambda d, i: d[:i] + b'"' + d[i:],  # a stray or unclosed quote
    lambda d, i: d[:i] + b"\n" + d[i:],  # a line break (blank line, split row)
    lambda d, i: d[:i] + b"\r" + d[i:],  # a lone carriage return
    lambda d, i: d[:i],  # truncated file
]


def _frames(data: bytes) -> tuple[pl.DataFrame | None, Report, pl.DataFrame | None, Report]:
    fast_report, slow_report = Report("fast"), Report("slow")
    fast = read_table(data, "classes", "x.csv", fast_report)
    slow = read_table(data, "classes", "x.csv", slow_report, one_pass=False)
    return (
        fast.frame if fast else None,
        fast_report,
        slow.frame if slow else None,
        slow_report,
    )


# 40 seeds x 25 files in CI; INGESTD_FUZZ_SEEDS=2000 for a deeper run (5000 seen agreeing).
@pytest.mark.parametrize("seed", range(int(os.environ.get("INGESTD_FUZZ_SEEDS", "40"))))
def test_one_pass_agrees_with_line_by_line(seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(25):
        data = _csv(rng, rng.randint(0, 12), rng.choice(["\n", "\r\n"]))
        if trial % 5:  # most trials break the file somewhere
            i = rng.randrange(len(data.split(b"\n", 1)[0]) + 1, len(data) + 1)
            data = rng.choice(MUTATIONS)(data, i)
        fast, fast_report, slow, slow_report = _frames(data)
        assert fast_report.counts == slow_report.counts, data
        assert fast_report.rejected == slow_report.rejected, data
        if slow is None:
            assert fast is None
        else:
            assert fast is not None and fast.equals(slow), data


def test_clean_file_takes_one_pass_and_keeps_line_numbers() -> None:
    data = b'sourcedId,title\r\na,"x,y"\r\nb,""\r\nc,z'
    report = Report("t")
    table = read_table(data, "classes", "x.csv", report)
    assert table is not None and report.counts == {}
    assert table.frame.rows() == [(2, "a", "x,y"), (3, "b", None), (4, "c", "z")]


def test_escaped_quotes_are_read() -> None:
    data = b'sourcedId,title\na,"Robert ""Bob"" Smith"\n'
    report = Report("t")
    table = read_table(data, "classes", "x.csv", report)
    assert table is not None and report.counts == {}
    assert table.frame["title"].to_list() == ['Robert "Bob" Smith']


@pytest.mark.parametrize("eol", [b"\n", b""])
@pytest.mark.parametrize("value", [b'""a""', b'"a"b'])
def test_text_around_quotes_is_a_stray_quote_on_both_paths(eol: bytes, value: bytes) -> None:
    """`""a""` and `"a"b` add up byte for byte like quoted fields (polars reads `a` and
    `ab`), but are not: the one-pass path must not take them."""
    data = b"sourcedId,title\nid0," + value + eol
    for one_pass in (True, False):
        report = Report("t")
        read_table(data, "classes", "x.csv", report, one_pass=one_pass)
        code = "stray_quote" if eol else "truncated_file"
        assert {c for _, c, _, _ in report.counts} == {code}, one_pass
