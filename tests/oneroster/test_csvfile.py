"""The CSV file reader: the one-pass path must agree with the line-by-line path, always."""

from __future__ import annotations

import csv
import io
import os
import random

import polars as pl
import pytest

from ingestd.oneroster.csvfile import read_table
from ingestd.oneroster.incremental import NotIncremental, PriorRows, read_incremental
from ingestd.oneroster.lineprints import L1, L2, ORIGIN
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
    rows = table.frame.drop(L1, L2).rows()
    assert rows == [(2, "a", "x,y"), (3, "b", None), (4, "c", "z")]


def test_escaped_quotes_are_read() -> None:
    data = b'sourcedId,title\na,"Robert ""Bob"" Smith"\n'
    report = Report("t")
    table = read_table(data, "classes", "x.csv", report)
    assert table is not None and report.counts == {}
    assert table.frame["title"].to_list() == ['Robert "Bob" Smith']


def _edit_lines(rng: random.Random, data: bytes, eol: str) -> bytes:
    """The next day's file: some lines replaced, dropped, added, repeated or broken."""
    lines = data.decode().split(eol)
    head, body = lines[0], lines[1:]
    for _ in range(rng.randint(0, 4)):
        what = rng.random()
        at = rng.randrange(len(body) + 1)
        if what < 0.3:
            body.insert(at, f"new{rng.randrange(99)}," + ",".join(_value(rng) for _ in HEADER[1:]))
        elif what < 0.5 and body:
            body.pop(min(at, len(body) - 1))
        elif what < 0.6 and body:
            body.insert(at, rng.choice(body))  # a repeated line
        elif what < 0.7:
            body.insert(at, "")
        elif body:  # a line edited byte-wise
            i = min(at, len(body) - 1)
            line = body[i].encode()
            j = rng.randrange(len(line) + 1)
            body[i] = rng.choice(MUTATIONS[:3])(line, j).decode(errors="replace")
    return eol.join([head, *body]).encode()


@pytest.mark.parametrize("seed", range(int(os.environ.get("INGESTD_FUZZ_SEEDS", "40"))))
def test_reading_against_prior_rows_agrees_with_a_whole_read(seed: int) -> None:
    """Lines taken from the prior rows by their prints give the table a whole read gives."""
    rng = random.Random(seed)
    reused = 0
    for trial in range(25):
        eol = rng.choice(["\n", "\r\n"])
        before = _csv(rng, rng.randint(0, 12), eol)
        if trial % 5 == 0:
            i = rng.randrange(len(before.split(b"\n", 1)[0]) + 1, len(before) + 1)
            before = rng.choice(MUTATIONS)(before, i)
        old = read_table(before, "classes", "x.csv", Report("before"))
        if old is None:
            continue
        prior = PriorRows(rows=old.frame.select(old.header), prints=old.frame.select(L1, L2))
        after = _edit_lines(rng, before, eol) if before.count(b"\n") else before
        whole_report, part_report = Report("whole"), Report("part")
        whole = read_table(after, "classes", "x.csv", whole_report)
        try:
            part = read_incremental(after, "classes", "x.csv", part_report, prior)
        except NotIncremental:
            assert part_report.counts == {}  # nothing said before giving up
            continue
        assert part_report.counts == whole_report.counts, after
        assert part_report.rejected == whole_report.rejected, after
        if whole is None:
            assert part is None
            continue
        assert part is not None
        reused += part.frame[ORIGIN].count()
        assert part.frame.drop(ORIGIN).equals(whole.frame), after
        assert (part.data_lines, part.dropped_lines) == (whole.data_lines, whole.dropped_lines)
    assert reused > 0  # the test would prove nothing if no line were ever taken


def test_a_line_read_under_another_header_is_read_again() -> None:
    before = b"sourcedId,title\na,x\nb,y\n"
    old = read_table(before, "classes", "x.csv", Report("t"))
    assert old is not None
    prior = PriorRows(rows=old.frame.select(old.header), prints=old.frame.select(L1, L2))
    same = read_incremental(b"sourcedId,title\na,x\nb,z\n", "classes", "x.csv", Report("t"), prior)
    assert same is not None and same.frame[ORIGIN].to_list() == [0, None]
    swapped = read_incremental(
        b"title,sourcedId\na,x\nb,y\n", "classes", "x.csv", Report("t"), prior
    )
    assert swapped is not None and swapped.frame[ORIGIN].to_list() == [None, None]
    assert swapped.frame["sourcedId"].to_list() == ["x", "y"]
