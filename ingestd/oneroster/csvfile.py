"""One OneRoster CSV file -> a polars frame of strings with line numbers, or exact reasons why not.

The CSV structure is checked line by line before polars parses anything,
because polars pads short rows silently, accepts a truncated last row, raises
on long rows without a line number, and puts the rest of the file into its
error message on an unclosed quote. OneRoster forbids line breaks inside
fields, so one physical line is one record and every problem has a line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ingestd.oneroster.report import Issue, Report, Scope, Severity

if TYPE_CHECKING:
    from ingestd.oneroster.lineprints import CarriedRows

LINE = "__line"  # the physical line number of each row (header = line 1)
BOM = b"\xef\xbb\xbf"

_FIELD = r'(?:"(?:[^"]|"")*"|[^",]*)'
_WELL_FORMED = rf"^{_FIELD}(?:,{_FIELD})*$"
_QUOTED_FIELD = r'"(?:[^"]|"")*"'


@dataclass(slots=True)
class RawTable:
    """One file's rows as read: every column a string (null when empty), plus `LINE`."""

    entity: str
    name: str
    header: list[str]
    frame: pl.DataFrame
    data_lines: int  # data lines in the file (blank lines excluded), kept or not
    dropped_lines: int  # lines the reader had to drop (ragged, bad quotes)
    fixed_lines: pl.Series | None = None  # LINEs of rows the reader mended (extra empty fields)
    prints: pl.DataFrame | None = None  # line prints of every line after the header, if asked
    seeds: tuple[int, int] | None = None  # what `prints` were seeded with
    carried: CarriedRows | None = None  # rows taken from the last accepted state, not in frame

    @property
    def carried_rows(self) -> int:
        """How many rows of the file were taken from the last accepted state."""
        return 0 if self.carried is None else self.carried.lines.len()


def read_table(
    data: bytes,
    entity: str,
    name: str,
    report: Report,
    *,
    one_pass: bool = True,
    prints: bool = False,
) -> RawTable | None:
    """Parse one entity file; None (with the reasons in `report`) when the file is unusable.

    `one_pass=False` forces the line-by-line path (tests compare both paths). `prints`:
    also give the line prints of every line (`lineprints.py`), when the lines can be split.
    """
    table = _read_table(data, entity, name, report, one_pass)
    if table is not None and prints:
        from ingestd.oneroster.lineprints import file_prints  # it builds on this module

        found = file_prints(data)
        if found is not None:
            table.seeds, table.prints = found
    return table


def _read_table(
    data: bytes, entity: str, name: str, report: Report, one_pass: bool
) -> RawTable | None:
    data = data.removeprefix(BOM)
    if not data or data.isspace():
        report.reject(
            "empty_file",
            f"{name} is empty (not even a header row)",
            "a file with no records must still have its header row; or leave it out and mark "
            "it absent in manifest.csv",
            file=name,
        )
        return None
    if b"\n" not in data and b"\r" in data:
        report.reject(
            "cr_line_endings",
            f"{name} uses old Mac line endings (CR only)",
            "export with LF or CRLF line endings",
            file=name,
        )
        return None
    end = data.find(b"\n")
    header_bytes = (data if end < 0 else data[:end]).removesuffix(b"\r")
    header_text = decode(header_bytes, name, report)
    if header_text is None:
        return None
    header = next(csv.reader([header_text]), [])
    if not _check_header(header, name, report):
        return None
    fast = _parse_sound_file(data, header, header_bytes) if one_pass else None
    if fast is not None:
        return RawTable(entity, name, header, fast, fast.height, 0)
    lines = _split_lines(data, name, report)
    if lines is None:
        return None
    width = len(header)
    ends_with_newline = data.endswith(b"\n")
    body = pl.DataFrame(
        {"l": lines.slice(1), LINE: pl.int_range(2, len(lines) + 1, eager=True, dtype=pl.UInt32)}
    )
    del lines
    kept, dropped, blank_lines, changed, fixed = _check_lines(
        body, width, header, name, ends_with_newline, report
    )
    if kept is None:
        return None
    data_lines = body.height - blank_lines
    del body
    if changed:
        payload = (
            pl.concat([pl.Series([",".join(_quote(h) for h in header)]), kept["l"]])
            .str.join("\n")
            .item()
            .encode()
        )
    else:
        payload = data
    frame = _parse(payload)
    del payload
    if frame.height != kept.height:  # cannot happen after the line checks; never trust it
        report.reject(
            "unparsable",
            f"{name} could not be parsed consistently "
            f"({frame.height} rows for {kept.height} lines)",
            "check the file for unusual quoting or control characters",
            file=name,
        )
        return None
    frame.columns = header
    frame = frame.with_columns(kept[LINE]).select(LINE, *header)
    return RawTable(entity, name, header, frame, data_lines, dropped, fixed)


def _parse(data: bytes) -> pl.DataFrame:
    """polars' CSV parse as ingestd uses it: every column a string, empty = null."""
    return pl.read_csv(
        data,
        has_header=True,
        infer_schema=False,
        quote_char='"',
        null_values=[""],  # a quoted "" and an unquoted empty field are the same value
        raise_if_empty=False,
        truncate_ragged_lines=False,
    )


def _parse_sound_file(data: bytes, header: list[str], header_bytes: bytes) -> pl.DataFrame | None:
    """Parse a file in one polars pass, if it can be proven sound; None sends it line by line.

    The proof is a byte count. Polars raises on a row with too many fields, so no
    row is longer than the header. Every byte of the file is a value byte, one
    of (width - 1) commas per row, a line ending, or a quote: if the bytes add
    up, no row is short either (each missing field would leave a comma
    unaccounted for). A quote inside a value (escaped or stray) or a line break
    inside a value breaks the sum or the line count, which sends the file down
    the line-by-line path that explains it. Costs one parse plus a few memchr.
    """
    try:
        frame = _parse(data)
    except pl.exceptions.PolarsError:
        return None
    width, rows = len(header), frame.height
    if frame.width != width:
        return None
    quotes = data.count(b'"') if b'"' in data else 0
    carriage_returns = data.count(b"\r") if b"\r" in data else 0
    if carriage_returns and carriage_returns != data.count(b"\r\n"):
        return None  # a lone CR: polars reads it as a line end, the line-by-line path does not
    if quotes % 2:
        return None  # well-formed quoting uses quotes in pairs; polars forgives an open one at EOF
    if quotes and data.count(b"\n") + (not data.endswith(b"\n")) != rows + 1:
        return None  # a quoted field spans lines, or a quote swallowed some
    value_bytes = sum(
        n or 0 for n in frame.select(pl.all().str.len_bytes().cast(pl.UInt64).sum()).row(0)
    )
    line_endings = rows + 1 - (not data.endswith(b"\n"))
    expected = (
        len(header_bytes)
        + int(value_bytes or 0)
        + (width - 1) * rows
        + line_endings
        + carriage_returns
        + quotes
        - header_bytes.count(b'"')
    )
    if expected != len(data):
        return None
    # The byte count cannot tell `""a""` or `"a"b` (polars reads `a`, `ab`) from a
    # well-quoted field: lines with quotes must have the shape of quoted fields too.
    if quotes and not _quotes_well_formed(data, rows + 1):
        return None
    frame.columns = header
    return frame.select(pl.int_range(2, rows + 2, dtype=pl.UInt32).alias(LINE), *header)


def _quotes_well_formed(data: bytes, lines: int) -> bool:
    """True when every line of `data` (`lines` of them) that holds a quote is a row of
    well-formed fields."""
    split = physical_lines(data)
    if split is None or split.len() != lines:
        return False
    quoted = split.filter(split.str.contains('"', literal=True)).str.strip_suffix("\r")
    return bool(quoted.str.contains(_WELL_FORMED).all())


def decode(data: bytes, name: str, report: Report) -> str | None:
    """`data` as UTF-8 text, or None with a not_utf8 error naming the line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _report_not_utf8(data, exc.start, name, report)
        return None


def _report_not_utf8(data: bytes, pos: int, name: str, report: Report) -> None:
    line = data.count(b"\n", 0, pos) + 1
    start = data.rfind(b"\n", 0, pos) + 1
    column = len(data[start:pos].decode("utf-8", errors="replace")) + 1
    byte = data[pos]
    guess = bytes([byte]).decode("cp1252", errors="replace")
    report.add(
        Issue(
            Severity.ERROR,
            Scope.FILE,
            "not_utf8",
            f"{name} is not UTF-8: byte 0x{byte:02X} at line {line}, column {column} "
            f"(in Windows-1252 that is {guess!r})",
            "export the file as UTF-8 (in the SIS export settings, or re-save from Excel as "
            "'CSV UTF-8'); OneRoster requires UTF-8",
            file=name,
            line=line,
            column=f"#{column}",
            value=f"0x{byte:02X}",
        )
    )


def _split_lines(data: bytes, name: str, report: Report) -> pl.Series | None:
    """The file's physical lines (CR of CRLF removed) as a string Series, or None if not UTF-8."""
    expected = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    lines = physical_lines(data)
    if lines is not None and lines.len() == expected:
        return lines
    text = decode(data, name, report)
    if text is None:
        return None
    parts = text.split("\n")
    if text.endswith("\n"):
        parts.pop()
    return pl.Series("l", [ln.removesuffix("\r") for ln in parts], dtype=pl.String)


def physical_lines(data: bytes | Path) -> pl.Series | None:
    """The lines of `data` (or of the file at that path) as polars splits them: at each
    LF, with the CR of CRLF removed (one column, no quoting); None when it cannot: a unit
    separator byte in the data, not UTF-8."""
    if isinstance(data, bytes) and b"\x1f" in data:
        return None
    try:
        frame = pl.read_csv(
            data,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            infer_schema=False,
            empty_string_is_null=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    return frame.to_series().fill_null("").rename("l") if frame.width == 1 else None


def _quote(name: str) -> str:
    return f'"{name.replace(chr(34), chr(34) * 2)}"' if any(c in name for c in ',"') else name


def _check_header(header: list[str], name: str, report: Report) -> bool:
    ok = True
    if not header or all(h.strip() == "" for h in header):
        report.reject(
            "missing_header",
            f"{name} has no header row",
            "the first line must name the columns",
            name,
        )
        return False
    seen: set[str] = set()
    for i, h in enumerate(header, start=1):
        if h.strip() == "":
            report.reject(
                "empty_header",
                f"{name}: header column {i} has no name",
                "give every column its OneRoster name; remove trailing commas from the header",
                file=name,
            )
            ok = False
        elif h in seen:
            report.reject(
                "duplicate_header",
                f"{name}: the column {h!r} appears twice in the header",
                "keep one column of each name",
                file=name,
            )
            ok = False
        seen.add(h)
    return ok


def _check_lines(
    body: pl.DataFrame,
    width: int,
    header: list[str],
    name: str,
    ends_with_newline: bool,
    report: Report,
) -> tuple[pl.DataFrame | None, int, int, bool, pl.Series | None]:
    """Field counts and quoting per line: (kept lines, dropped, blank lines, changed?,
    LINEs of the kept lines that were mended)."""
    line = pl.col("l")
    width_expr = line.str.count_matches(",", literal=True) + 1
    has_quotes = body.select(line.str.contains('"', literal=True).any()).item()
    if has_quotes:
        quoted = line.str.contains('"', literal=True)
        # Plain lines: a comma count. Quoted lines (few): shape check and quoted fields folded.
        plain = body.lazy().filter(~quoted)
        fancy = (
            body.lazy()
            .filter(quoted)
            .with_columns(
                well_formed=line.str.contains(_WELL_FORMED),
                quote_count=line.str.count_matches('"', literal=True),
                shape=line.str.replace_all(_QUOTED_FIELD, "Q"),
            )
            .with_columns(fields=pl.col("shape").str.count_matches(",", literal=True) + 1)
            .filter(~pl.col("well_formed") | (pl.col("fields") != width))
            .select(
                LINE,
                "l",
                pl.col("fields").cast(pl.Int64),
                "shape",
                bad_quotes=~pl.col("well_formed"),
                quote_count=pl.col("quote_count").cast(pl.Int64),
            )
        )
    else:
        plain = body.lazy()
        fancy = None
    plain = plain.filter(width_expr != width).select(
        LINE,
        "l",
        fields=width_expr.cast(pl.Int64),
        shape=line,
        bad_quotes=pl.lit(False),
        quote_count=pl.lit(0, pl.Int64),
    )
    found = [plain, fancy] if fancy is not None else [plain]
    problems = pl.concat(pl.collect_all(found)).with_columns(blank=pl.col("l") == "")
    if problems.is_empty():
        return body, 0, 0, False, None
    last = body.height + 1  # line number of the last line

    truncated = problems.filter(
        (pl.col(LINE) == last)
        & ~pl.col("blank")
        & (not ends_with_newline)
        & (pl.col("bad_quotes") | (pl.col("fields") < width))
    )
    if not truncated.is_empty():
        report.reject(
            "truncated_file",
            f"{name}: the last line ({last}) is incomplete: the file looks cut off",
            "upload the whole file again; check that the export finished",
            file=name,
        )
        return None, 0, 0, True, None

    blank = problems.filter("blank")
    if not blank.is_empty():
        report.add_rows(
            severity=Severity.WARNING,
            code="blank_line",
            file=name,
            column=None,
            lines=blank[LINE].head(50).to_list(),
            values=[None] * min(50, blank.height),
            count=blank.height,
            message="blank line ignored",
            fix="remove blank lines from the export",
        )
    rest = problems.filter(~pl.col("blank"))
    quotes = rest.filter("bad_quotes")
    odd = quotes.filter(pl.col("quote_count") % 2 == 1)
    stray = quotes.filter(pl.col("quote_count") % 2 == 0)
    _rows(
        report,
        odd,
        name,
        "unclosed_quote",
        Severity.ERROR,
        "a quoted field is never closed (OneRoster allows no line breaks inside fields)",
        "close the quote, or remove the line break inside the field",
    )
    _rows(
        report,
        stray,
        name,
        "stray_quote",
        Severity.ERROR,
        "a double quote inside an unquoted field",
        'quote the whole field and double the inner quote: "Robert ""Bob"" Smith"',
    )
    counted = rest.filter(~pl.col("bad_quotes"))
    short = counted.filter(pl.col("fields") < width)
    long = counted.filter(pl.col("fields") > width)
    for fields_n, group in short.group_by("fields", maintain_order=True):
        n = int(fields_n[0])
        _rows(
            report,
            group,
            name,
            "too_few_fields",
            Severity.ERROR,
            f"row has {n} fields, the header has {width}",
            "every row needs one field per header column (empty fields as ,,)",
            column=header[n] if n < width else None,
        )
    extra_len = pl.col("fields") - width
    trailing_empty = long.filter(
        pl.col("shape").str.ends_with(",")
        & (
            pl.col("shape").str.len_chars()
            - pl.col("shape").str.strip_chars_end(",").str.len_chars()
            >= extra_len
        )
    )
    long_bad = long.join(trailing_empty.select(LINE), on=LINE, how="anti")
    _rows(
        report,
        trailing_empty,
        name,
        "extra_empty_fields",
        Severity.WARNING,
        f"row has more fields than the {width} header columns; the extra fields are empty "
        "and were ignored",
        "remove the trailing comma(s) at the end of the row",
        column=f"#{width + 1}",
    )
    _rows(
        report,
        long_bad,
        name,
        "too_many_fields",
        Severity.ERROR,
        f"row has more fields than the {width} header columns",
        "quote fields that contain commas, or remove the extra fields",
        column=f"#{width + 1}",
    )
    drop = pl.concat(
        [quotes.select(LINE), short.select(LINE), long_bad.select(LINE), blank.select(LINE)]
    )
    kept = body.join(drop, on=LINE, how="anti", maintain_order="left")
    fixed = None
    if not trailing_empty.is_empty():
        fixed = trailing_empty[LINE]
        fix = trailing_empty.select(LINE, cut=extra_len)
        kept = (
            kept.join(fix, on=LINE, how="left", maintain_order="left")
            .with_columns(
                l=pl.when(pl.col("cut").is_not_null())
                .then(pl.col("l").str.slice(0, pl.col("l").str.len_chars() - pl.col("cut")))
                .otherwise(pl.col("l"))
            )
            .drop("cut")
        )
    dropped = quotes.height + short.height + long_bad.height
    return kept, dropped, blank.height, True, fixed


def _rows(
    report: Report,
    rows: pl.DataFrame,
    name: str,
    code: str,
    severity: Severity,
    message: str,
    fix: str,
    column: str | None = None,
) -> None:
    if rows.is_empty():
        return
    head = rows.head(report.max_examples)
    report.add_rows(
        severity=severity,
        code=code,
        file=name,
        column=column,
        lines=head[LINE].to_list(),
        values=[None] * head.height,  # a broken line is not a cell: print none of it
        count=rows.height,
        message=message,
        fix=fix,
    )
