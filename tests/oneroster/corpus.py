"""Helpers to build malformed sets: a generated district plus one defect, edited as text."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from ingestd.oneroster.report import Issue, Report
from ingestd.oneroster.sample import generate


def read_lines(path: Path) -> list[str]:
    """The file's lines without their line endings."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def write_lines(path: Path, lines: list[str], *, eol: str = "\n", final: bool = True) -> None:
    """Write `lines` joined by `eol`, with or without a final line ending."""
    path.write_bytes((eol.join(lines) + (eol if final else "")).encode("utf-8"))


def fields(line: str) -> list[str]:
    """One CSV line parsed into fields."""
    return next(csv.reader([line]))


def join(values: list[str]) -> str:
    """Fields serialized as one CSV line, quoted only where needed."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def set_cell(path: Path, line_no: int, column: str, value: str) -> str:
    """Replace one cell (line numbers as in the report: header = 1); returns the old value."""
    lines = read_lines(path)
    header = fields(lines[0])
    row = fields(lines[line_no - 1])
    i = header.index(column)
    old = row[i]
    row[i] = value
    lines[line_no - 1] = join(row)
    write_lines(path, lines)
    return old


def cell(path: Path, line_no: int, column: str) -> str:
    """The value of one cell."""
    lines = read_lines(path)
    return fields(lines[line_no - 1])[fields(lines[0]).index(column)]


def find_line(path: Path, column: str, value: str) -> int:
    """The line number of the first row whose `column` equals `value`."""
    lines = read_lines(path)
    i = fields(lines[0]).index(column)
    for n, line in enumerate(lines[1:], start=2):
        if fields(line)[i] == value:
            return n
    raise LookupError(f"{column}={value} not in {path.name}")


def drop_column(path: Path, column: str) -> None:
    """Remove a column from the header and every row."""
    rows = [fields(x) for x in read_lines(path)]
    i = rows[0].index(column)
    write_lines(path, [join(r[:i] + r[i + 1 :]) for r in rows])


def copy_set(src: Path, dst: Path) -> Path:
    """A fresh copy of a set directory."""
    shutil.copytree(src, dst)
    return dst


def zip_dir(src: Path, dst: Path, *, prefix: str = "") -> Path:
    """Zip every file of `src` (with an optional folder prefix inside the zip)."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, prefix + f.name)
    return dst


def issues(report: Report, code: str) -> list[Issue]:
    """Every recorded example of `code`."""
    return [i for i in report.issues if i.code == code]


def count(report: Report, code: str) -> int:
    """How many times `code` occurred (all occurrences, not just examples)."""
    return sum(n for (_, c, _, _), n in report.counts.items() if c == code)


def generated(factory: pytest.TempPathFactory, name: str, students: int, seed: int) -> Path:
    """A district made by `ingestd sample`'s generator, in a temp folder of its own (for
    module-scoped fixtures)."""
    out = factory.mktemp(name) / "set"
    generate(out, students=students, seed=seed)
    return out
