"""Line prints: two 64-bit hashes of the physical line a row was read from.

A row keeps its line's prints only while this holds: reading that line, under
the same header, with the same rules, by the same ingestd and polars, gives
exactly this row, valid and with nothing to report. The hashes are seeded from
the header bytes and a fingerprint of the rules (the source of the reading and
validating modules, and the versions of ingestd and polars), so a print made
under another header or other rules never matches. A line of the next set whose
prints are those of a row of the tenant's last accepted state can then be taken
as that row without being parsed and checked again (`carry.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import polars as pl

from ingestd.oneroster.csvfile import BOM, physical_lines

L1, L2 = "__l1", "__l2"  # a row's line prints (UInt64; null: the row has none)

# The modules whose code decides what a line reads as, whether it is valid and quiet, and
# what its row is in the state (the diff's alignment), relative to the ingestd package;
# their source is read as files (nothing of the pipeline is imported here).
_RULE_MODULES = [
    f"oneroster/{m}"
    for m in ("carry.py", "csvfile.py", "lineprints.py", "reader.py", "references.py")
]
_RULE_MODULES += [f"oneroster/{m}" for m in ("report.py", "rules.py", "spec.py", "validate.py")]
_RULE_MODULES += ["pipeline/diff.py", "pipeline/carry.py"]
_PACKAGE = Path(__file__).resolve().parents[1]  # ingestd/


@cache
def rules_fingerprint() -> bytes:
    """A digest of everything the reading of a line depends on besides its bytes and header."""
    digest = hashlib.sha256()
    for name in ("ingestd", "polars"):
        try:
            digest.update(f"{name}={metadata.version(name)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=?;".encode())
    for module in _RULE_MODULES:
        try:
            digest.update(module.encode() + b"\0" + (_PACKAGE / module).read_bytes())
        except OSError:
            digest.update(module.encode() + b"\0?")
    return digest.digest()


def line_seeds(header: bytes) -> tuple[int, int]:
    """The two hash seeds of the lines of a file whose header line is `header` (its
    bytes, without BOM and line ending)."""
    digest = hashlib.sha256(rules_fingerprint() + b"\0" + header).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


def header_line(data: bytes) -> bytes:
    """The first line of `data` (a CSV file's bytes), without BOM and line ending."""
    data = data.removeprefix(BOM)
    end = data.find(b"\n")
    return (data if end < 0 else data[:end]).removesuffix(b"\r")


def body_lines(data: bytes | Path) -> pl.Series | None:
    """The physical lines after the header (split at LF, the CR of CRLF removed: as the
    reader numbers them) of a file's bytes or of the file at a path; None when they
    cannot be split (not UTF-8, a unit separator byte)."""
    lines = physical_lines(data)
    if lines is None or lines.is_empty():
        return None
    return lines.slice(1)


def prints_of(lines: pl.Series, seeds: tuple[int, int]) -> pl.DataFrame:
    """L1, L2 of each of `lines`."""
    return pl.DataFrame({"l": lines}).select(
        pl.col("l").hash(seeds[0]).alias(L1), pl.col("l").hash(seeds[1]).alias(L2)
    )


def file_prints(data: bytes) -> tuple[tuple[int, int], pl.DataFrame] | None:
    """The seeds of a file and the prints of its lines after the header (row i of the
    frame: line i + 2), or None when its lines cannot be split (see `body_lines`)."""
    lines = body_lines(data)
    if lines is None:
        return None
    seeds = line_seeds(header_line(data))
    return seeds, prints_of(lines, seeds)


class NotCarried(Exception):
    """A set that cannot be read against the last accepted state; read it whole. Raised
    before anything it found is final (the reading is done again from the start)."""


@dataclass(frozen=True, slots=True)
class CarriedRows:
    """The rows of a file taken from the tenant's last accepted state (`prior`) because
    their lines are unchanged, rather than parsed and checked again."""

    prior: pl.DataFrame  # the entity's rows in the last accepted state
    prior_rows: pl.Series  # UInt32: per carried line, in file order, its row in `prior`
    lines: pl.Series  # UInt32: the LINE of each carried line
    taken: pl.Series  # Boolean, row for row with `prior`: carried today
    prints: pl.DataFrame  # L1, L2 of each carried line

    @property
    def vanished(self) -> pl.Series:
        """Rows of `prior` (UInt32, ascending) that no line of the file is."""
        return (~self.taken).arg_true()

    def ids(self, *columns: str, among: pl.Series | None = None) -> pl.DataFrame:
        """`columns` (sourcedId first) of the carried rows (only those whose sourcedId is
        `among`, if given), in no particular order."""
        present = [c for c in dict.fromkeys(("sourcedId", *columns)) if c in self.prior.columns]
        keep = pl.lit(self.taken)
        if among is not None:
            keep = keep & pl.col("sourcedId").is_in(among.implode())
        return self.prior.select(pl.col(present).filter(keep))
