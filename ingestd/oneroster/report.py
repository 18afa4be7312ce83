"""The validation report: what is wrong with a set, where (file, line, column), and how to fix it.

Issues are counted in full but kept as examples only up to a bound per rule and
file, so a broken million-row file yields a readable report and bounded memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

REPORT_SCHEMA_VERSION = 1
EXCERPT_CHARS = 40


class Severity(StrEnum):
    """How bad an issue is: an error drops the row (or rejects the set); a warning only informs."""

    ERROR = "error"
    WARNING = "warning"


class Scope(StrEnum):
    """What an issue is about: the whole set, a whole file, or one row."""

    SET = "set"
    FILE = "file"
    ROW = "row"


def excerpt(value: object) -> str | None:
    """A short excerpt of a cell, never the whole value: reports must not spill roster data."""
    if value is None:
        return None
    text = str(value)
    if len(text) <= EXCERPT_CHARS:
        return text
    return text[: EXCERPT_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a set. `message` says what is wrong, `fix` how to repair the export."""

    severity: Severity
    scope: Scope
    code: str
    message: str
    fix: str = ""
    file: str | None = None
    line: int | None = None
    column: str | None = None
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The issue as a JSON-ready dict (see docs/report-schema.md)."""
        return asdict(self)

    def where(self) -> str:
        """`users.csv line 10 column role`-style location."""
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column:
            parts.append(f"column {self.column}")
        return " ".join(parts) or "set"


@dataclass(slots=True)
class FileSummary:
    """What was read of one file of the set."""

    entity: str
    name: str
    rows: int = 0
    dropped_rows: int = 0
    mode: str = "bulk"


@dataclass(slots=True)
class Report:
    """All issues of one set, with complete counts and bounded examples."""

    source: str
    max_examples: int = 20
    issues: list[Issue] = field(default_factory=list)
    counts: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    files: dict[str, FileSummary] = field(default_factory=dict)
    rejected: bool = False

    def add(self, issue: Issue, count: int = 1) -> None:
        """Record an issue (`count` occurrences of it); set/file errors reject the set."""
        key = (issue.severity.value, issue.code, issue.file or "", issue.column or "")
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + count
        if seen < self.max_examples:
            self.issues.append(issue)
        if issue.severity is Severity.ERROR and issue.scope is not Scope.ROW:
            self.rejected = True

    def add_rows(
        self,
        *,
        severity: Severity,
        code: str,
        file: str,
        column: str | None,
        lines: Iterable[int],
        values: Iterable[object],
        count: int,
        message: str,
        fix: str,
    ) -> None:
        """Record one rule broken by `count` rows; `lines`/`values` are the first examples."""
        if count <= 0:
            return
        key = (severity.value, code, file, column or "")
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + count
        room = max(0, self.max_examples - seen)
        for line, value in zip(list(lines)[:room], list(values)[:room], strict=False):
            self.issues.append(
                Issue(
                    severity=severity,
                    scope=Scope.ROW,
                    code=code,
                    message=message,
                    fix=fix,
                    file=file,
                    line=line,
                    column=column,
                    value=excerpt(value),
                )
            )

    def reject(self, code: str, message: str, fix: str, file: str | None = None) -> None:
        """Record a set-level error: the set is rejected."""
        self.add(
            Issue(Severity.ERROR, Scope.FILE if file else Scope.SET, code, message, fix, file=file)
        )

    def warn(self, code: str, message: str, fix: str = "", file: str | None = None, **kw) -> None:
        """Record a warning about the set or a file."""
        self.add(
            Issue(
                Severity.WARNING, Scope.FILE if file else Scope.SET, code, message, fix, file, **kw
            )
        )

    @property
    def accepted(self) -> bool:
        """True when the set may be processed (warnings and dropped rows allowed)."""
        return not self.rejected

    def total(self, severity: Severity) -> int:
        """How many occurrences of issues of this severity were found."""
        return sum(n for (sev, *_), n in self.counts.items() if sev == severity.value)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (schema documented in docs/report-schema.md)."""
        return {
            "schema": REPORT_SCHEMA_VERSION,
            "source": self.source,
            "verdict": "accepted" if self.accepted else "rejected",
            "errors": self.total(Severity.ERROR),
            "warnings": self.total(Severity.WARNING),
            "files": {name: asdict(f) for name, f in sorted(self.files.items())},
            "counts": [
                {
                    "severity": sev,
                    "code": code,
                    "file": file or None,
                    "column": col or None,
                    "count": n,
                }
                for (sev, code, file, col), n in sorted(self.counts.items())
            ],
            "issues": [i.to_dict() for i in self.issues],
        }

    def to_json(self) -> str:
        """The report as one JSON document."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_text(self, examples: int = 5) -> str:
        """A human report grouped by file: counts per rule and the first examples with lines."""
        verdict = "ACCEPTED" if self.accepted else "REJECTED"
        errors, warnings = self.total(Severity.ERROR), self.total(Severity.WARNING)
        out = [f"{verdict}: {self.source}  ({errors} errors, {warnings} warnings)"]
        for name, f in sorted(self.files.items(), key=lambda kv: kv[1].entity):
            dropped = f", {f.dropped_rows} dropped" if f.dropped_rows else ""
            out.append(f"  {name:<24} {f.rows:>9} rows{dropped}  ({f.mode})")
        groups: dict[str, list[tuple[str, str, str, int]]] = {}
        for (sev, code, file, col), n in self.counts.items():
            groups.setdefault(file, []).append((sev, code, col, n))
        for file in sorted(groups, key=lambda f: (f != "", f)):
            summary = self.files.get(file) if file else None
            if file == "":
                out.append("\nthe set as a whole")
            elif summary is not None:
                out.append(f"\n{file}  ({summary.rows} rows, {summary.dropped_rows} dropped)")
            else:
                out.append(f"\n{file}")
            rules = sorted(groups[file], key=lambda r: (r[0] != "error", r[1], r[2]))
            for sev, code, col, n in rules:
                examples_of = [
                    i
                    for i in self.issues
                    if i.severity.value == sev
                    and i.code == code
                    and (i.file or "") == file
                    and (i.column or "") == col
                ]
                head = f"  {sev:<7} {code}" + (f" [{col}]" if col else "") + f"  x{n}"
                out.append(head)
                if examples_of:
                    out.append(f"          {examples_of[0].message}")
                    if examples_of[0].fix:
                        out.append(f"          fix: {examples_of[0].fix}")
                for issue in examples_of[:examples]:
                    if issue.line is None:
                        continue
                    value = f": {issue.value!r}" if issue.value is not None else ""
                    out.append(f"          {issue.where()}{value}")
                if n > examples and any(i.line is not None for i in examples_of):
                    out.append(f"          ... and {n - min(n, examples)} more")
        return "\n".join(out)
