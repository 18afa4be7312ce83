"""Read a OneRoster set (a directory or a zip) into polars tables of strings, with line numbers.

The CSV structure is checked line by line before polars parses anything,
because polars pads short rows silently, accepts a truncated last row, raises
on long rows without a line number, and puts the rest of the file into its
error message on an unclosed quote. OneRoster forbids line breaks inside
fields, so one physical line is one record and every problem has a line.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from ingestd.oneroster import spec
from ingestd.oneroster.report import FileSummary, Issue, Report, Scope, Severity, excerpt

LINE = "__line"  # the physical line number of each row (header = line 1)
BOM = b"\xef\xbb\xbf"
TEMP_SUFFIXES = (".filepart", ".part", ".tmp")
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz", ".zst")
_RATIO_MIN_BYTES = 1 << 20  # tiny entries compress absurdly well and harm nobody

_FIELD = r'(?:"(?:[^"]|"")*"|[^",]*)'
_WELL_FORMED = rf"^{_FIELD}(?:,{_FIELD})*$"
_QUOTED_FIELD = r'"(?:[^"]|"")*"'


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds on what a zip may expand to, checked from its directory before anything is read."""

    max_total_bytes: int = 2 << 30
    max_ratio: float = 100.0
    max_entries: int = 10_000


@dataclass(slots=True)
class RawTable:
    """One file's rows as read: every column a string (null when empty), plus `LINE`."""

    entity: str
    name: str
    header: list[str]
    frame: pl.DataFrame
    data_lines: int  # data lines in the file (blank lines excluded), kept or not
    dropped_lines: int  # lines the reader had to drop (ragged, bad quotes)


@dataclass(slots=True)
class RawSet:
    """What the reader found in a set: tables by entity, the manifest, and everything else."""

    source: str
    tables: dict[str, RawTable] = field(default_factory=dict)
    manifest: dict[str, tuple[str, int]] | None = None  # key -> (value, line)
    manifest_name: str | None = None
    other_files: list[str] = field(default_factory=list)  # kept, not part of rostering


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # path inside the set, for messages
    load: Callable[[], bytes]


class _NotAZip(Exception):
    pass


def classify(name: str) -> tuple[str, str | None, bool]:
    """Kind of a file name in a set: (kind, entity, exact) with kind one of
    entity, manifest, gradebook, temp, unknown; `exact` False for tolerated variants."""
    base = PurePosixPath(name).name
    if base.startswith(".") or base.lower().endswith(TEMP_SUFFIXES):
        return "temp", None, True
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if ext and ext.lower() != "csv":
        return "unknown", None, True
    exact = ext == "csv"
    for entity in spec.ENTITY_NAMES:
        if stem == entity:
            return "entity", entity, exact
        if stem.lower() == entity.lower():
            return "entity", entity, False
    if stem.lower() == "manifest":
        return "manifest", None, exact and stem == "manifest"
    for g in spec.GRADEBOOK_NAMES:
        if stem.lower() == g.lower():
            return "gradebook", g, exact and stem == g
    return "unknown", None, True


def read_set(
    path: Path,
    report: Report,
    limits: ReadLimits | None = None,
    progress: Callable[[str], None] | None = None,
) -> RawSet:
    """Read the set at `path` (directory or zip); problems go to `report`."""
    limits = limits or ReadLimits()
    raw = RawSet(source=str(path))
    if path.is_dir():
        entries = list(_dir_entries(path, report))
    else:
        try:
            entries = _zip_entries(path, report, limits)
        except _NotAZip:
            report.reject(
                "not_a_set",
                f"{path.name} is neither a directory nor a zip archive",
                "give the folder holding the CSV files, or the zip the SIS exported",
            )
            return raw
        if report.rejected:
            return raw
    seen: dict[str, str] = {}
    for entry in entries:
        kind, entity, exact = classify(entry.name)
        if kind == "temp":
            report.warn(
                "temp_file_ignored",
                f"{entry.name} looks like an unfinished upload (temp name) and was ignored",
                "let the upload finish; the client renames it when done",
                file=entry.name,
            )
            continue
        if kind in ("unknown", "gradebook"):
            raw.other_files.append(entry.name)
            if kind == "unknown":
                report.warn(
                    "unknown_file",
                    f"{entry.name} is not a OneRoster rostering file; kept, not processed",
                    "remove it from the export if it does not belong there",
                    file=entry.name,
                )
            continue
        key = entity or "manifest"
        if key in seen:
            report.reject(
                "ambiguous_file",
                f"both {seen[key]} and {entry.name} would be read as {key}",
                "send one file per entity, named exactly as OneRoster says",
                file=entry.name,
            )
            continue
        seen[key] = entry.name
        if not exact:
            proper = f"{entity}.csv" if entity else spec.MANIFEST_FILE
            report.warn(
                "file_name_variant",
                f"{entry.name} was read as {proper}",
                f"name the file exactly {proper} (names are case-sensitive)",
                file=entry.name,
            )
        if progress is not None:
            progress(f"reading {entry.name}")
        data = entry.load()
        if entity is None:
            raw.manifest = _read_manifest(data, entry.name, report)
            raw.manifest_name = entry.name
            continue
        table = _read_table(data, entity, entry.name, report)
        if table is not None:
            raw.tables[entity] = table
            report.files[entry.name] = FileSummary(
                entity=entity,
                name=entry.name,
                rows=table.data_lines,
                dropped_rows=table.dropped_lines,
            )
    return raw


def _dir_entries(path: Path, report: Report) -> Iterator[_Entry]:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(classify(p.name)[0] in ("entity", "manifest") for p in files) and len(dirs) == 1:
        report.warn(
            "nested_folder",
            f"the files were found inside the folder {dirs[0].name}/",
            "put the CSV files at the top of the set",
        )
        yield from (
            _Entry(f"{dirs[0].name}/{e.name}", e.load) for e in _dir_entries(dirs[0], report)
        )
        return
    for p in files:
        yield _Entry(p.name, p.read_bytes)


def _zip_entries(path: Path, report: Report, limits: ReadLimits) -> list[_Entry]:
    """Check the zip's directory (paths, nesting, sizes) before reading any entry."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _NotAZip from exc
    infos = [i for i in zf.infolist() if not i.is_dir()]
    name = path.name
    if len(infos) > limits.max_entries:
        report.reject(
            "zip_too_many_entries",
            f"{name} holds {len(infos)} files (limit {limits.max_entries})",
            "export only the OneRoster files",
            file=name,
        )
        return []
    total = 0
    for info in infos:
        entry = info.filename.replace("\\", "/")
        parts = PurePosixPath(entry).parts
        if entry.startswith("/") or (len(entry) > 1 and entry[1] == ":") or ".." in parts:
            report.reject(
                "zip_unsafe_path",
                f"{name} holds an entry with an unsafe path ({excerpt(entry)!r})",
                "export the files with plain relative names at the root of the zip",
                file=name,
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            report.reject(
                "zip_symlink",
                f"{name} holds a symbolic link ({excerpt(entry)!r})",
                "export regular files only",
                file=name,
            )
        if info.flag_bits & 0x1:
            report.reject(
                "zip_encrypted",
                f"{name} holds an encrypted entry ({excerpt(entry)!r})",
                "export the zip without a password",
                file=name,
            )
        if entry.lower().endswith(ARCHIVE_SUFFIXES):
            report.reject(
                "zip_nested_archive",
                f"{name} holds another archive ({excerpt(entry)!r})",
                "put the CSV files directly in one zip",
                file=name,
            )
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
            report.reject(
                "zip_bomb",
                f"{name}: entry {excerpt(entry)!r} expands {ratio:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1)",
                "this does not look like a roster export; check what was uploaded",
                file=name,
            )
    if total > limits.max_total_bytes:
        report.reject(
            "zip_too_large",
            f"{name} expands to {total} bytes (limit {limits.max_total_bytes})",
            "split the export or raise [ingest] max_zip_total_bytes",
            file=name,
        )
    if report.rejected:
        return []
    roots = {
        PurePosixPath(i.filename).parts[0]
        for i in infos
        if len(PurePosixPath(i.filename).parts) > 1
    }
    at_root = [i for i in infos if len(PurePosixPath(i.filename).parts) == 1]
    prefix = ""
    if not at_root and len(roots) == 1:
        prefix = f"{next(iter(roots))}/"
        report.warn(
            "nested_folder",
            f"the files of {name} are inside the folder {prefix}",
            "zip the CSV files themselves, not the folder holding them",
            file=name,
        )
    entries = []
    for info in infos:
        if not info.filename.startswith(prefix) or "/" in info.filename[len(prefix) :]:
            report.warn(
                "unknown_file",
                f"{name}: entry {excerpt(info.filename)!r} is in a subfolder and was ignored",
                "put the CSV files at the root of the zip",
                file=name,
            )
            continue
        entries.append(_Entry(info.filename, _zip_loader(zf, info, name, report)))
    return entries


def _zip_loader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, report: Report):
    def load() -> bytes:
        # Read at most one byte more than the directory declares: a lying header is a bomb.
        try:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
            report.reject(
                "zip_corrupt",
                f"{name}: entry {excerpt(info.filename)!r} cannot be decompressed",
                "upload the zip again; it is damaged or uses an unsupported compression",
                file=name,
            )
            return b""
        if len(data) > info.file_size:
            report.reject(
                "zip_bomb",
                f"{name}: entry {excerpt(info.filename)!r} is larger than its header says",
                "this does not look like a roster export; check what was uploaded",
                file=name,
            )
            return b""
        return data

    return load


def _read_manifest(data: bytes, name: str, report: Report) -> dict[str, tuple[str, int]] | None:
    """manifest.csv as key -> (value, line); header `propertyName,value`, any row order."""
    text = _decode(data.removeprefix(BOM), name, report)
    if text is None:
        return None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != list(spec.MANIFEST_HEADER):
        report.reject(
            "manifest_header",
            f"{name} must start with the header propertyName,value",
            "re-export the manifest, or remove it to let the files present decide",
            file=name,
        )
        return None
    out: dict[str, tuple[str, int]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            report.warn(
                "manifest_row",
                f"manifest row has {len(row)} fields instead of 2; ignored",
                "each manifest row is propertyName,value",
                file=name,
                line=lineno,
            )
            continue
        out[row[0].strip()] = (row[1].strip(), lineno)
    return out


def _decode(data: bytes, name: str, report: Report) -> str | None:
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
    if b"\x1f" not in data:
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
        except pl.exceptions.ComputeError:
            frame = None
        if frame is not None and frame.width == 1 and frame.height == expected:
            return frame.to_series().fill_null("").rename("l")
    text = _decode(data, name, report)
    if text is None:
        return None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return pl.Series("l", [ln.removesuffix("\r") for ln in lines], dtype=pl.String)


def _read_table(data: bytes, entity: str, name: str, report: Report) -> RawTable | None:
    data = data.removeprefix(BOM)
    if not data.strip():
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
    lines = _split_lines(data, name, report)
    if lines is None:
        return None
    header = next(csv.reader([lines[0]]), [])
    if not _check_header(header, name, report):
        return None
    width = len(header)
    ends_with_newline = data.endswith(b"\n")
    body = pl.DataFrame(
        {"l": lines.slice(1), LINE: pl.int_range(2, len(lines) + 1, eager=True, dtype=pl.UInt32)}
    )
    del lines
    kept, dropped, changed = _check_lines(body, width, header, name, ends_with_newline, report)
    if kept is None:
        return None
    data_lines = body.height - int(body.select((pl.col("l") == "").sum()).item())
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
    frame = pl.read_csv(
        payload,
        has_header=True,
        infer_schema=False,
        quote_char='"',
        null_values=[""],  # a quoted "" and an unquoted empty field are the same value
        raise_if_empty=False,
        truncate_ragged_lines=False,
    )
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
    return RawTable(entity, name, header, frame, data_lines, dropped)


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
) -> tuple[pl.DataFrame | None, int, bool]:
    """Field counts and quoting per line: returns (kept lines, dropped count, changed?)."""
    quoted = pl.col("l").str.contains('"', literal=True)
    scan = body.with_columns(quoted=quoted, commas=pl.col("l").str.count_matches(",", literal=True))
    has_quotes = bool(scan["quoted"].any())
    if has_quotes:
        q = scan.filter("quoted").select(
            LINE,
            well_formed=pl.col("l").str.contains(_WELL_FORMED),
            quote_count=pl.col("l").str.count_matches('"', literal=True),
            shape=pl.col("l").str.replace_all(_QUOTED_FIELD, "Q"),
        )
        q = q.with_columns(qcommas=pl.col("shape").str.count_matches(",", literal=True))
        scan = scan.join(q, on=LINE, how="left", maintain_order="left")
        fields = pl.when("quoted").then(pl.col("qcommas")).otherwise(pl.col("commas")) + 1
        shape = pl.when("quoted").then(pl.col("shape")).otherwise(pl.col("l"))
        bad_quotes = pl.col("quoted") & ~pl.col("well_formed")
    else:
        fields = pl.col("commas") + 1
        shape = pl.col("l")
        bad_quotes = pl.lit(False)
    last = body.height + 1  # line number of the last line
    scan = scan.with_columns(
        fields=fields.cast(pl.Int64), shape=shape, bad_quotes=bad_quotes, blank=pl.col("l") == ""
    )
    problems = scan.filter(pl.col("blank") | pl.col("bad_quotes") | (pl.col("fields") != width))
    if problems.is_empty():
        return body, 0, False

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
        return None, 0, True

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
    odd = quotes.filter(pl.col("quote_count") % 2 == 1) if has_quotes else quotes
    stray = quotes.filter(pl.col("quote_count") % 2 == 0) if has_quotes else quotes.clear()
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
    if not trailing_empty.is_empty():
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
    return kept, dropped, True


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
