"""Line prints: two 64-bit hashes of the physical line each row was read from.

A row carries its line's prints only while this holds: reading that line, under
the same header, with the same rules, by the same ingestd and polars, gives
exactly this row, valid and with nothing to warn about. The hashes are seeded
from the header bytes and a fingerprint of the rules (the source of the reading
and validating modules, and the versions of ingestd and polars), so a print
made under another header or other rules never matches. A line whose prints
match a row of the tenant's last accepted state can then take that row as it is,
without being parsed or checked again (`incremental.py`).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata, resources

import polars as pl

L1, L2 = "__l1", "__l2"  # a row's line prints (UInt64; null: the row has none)
ORIGIN = "__o"  # per row read incrementally, the row of the prior state it is (UInt32)
HELPER_COLUMNS = (L1, L2, ORIGIN)

# The modules whose code decides what a line reads as and whether it is valid and quiet.
_RULE_MODULES = ("csvfile.py", "incremental.py", "lineprints.py", "rules.py", "spec.py")
_RULE_MODULES += ("validate.py", "references.py", "reader.py", "report.py")


@cache
def rules_fingerprint() -> bytes:
    """A digest of everything a line's reading depends on besides its bytes and header."""
    digest = hashlib.sha256()
    for name in ("ingestd", "polars"):
        try:
            digest.update(f"{name}={metadata.version(name)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=?;".encode())
    package = resources.files("ingestd.oneroster")
    for module in _RULE_MODULES:
        try:
            digest.update(module.encode() + b"\0" + package.joinpath(module).read_bytes())
        except OSError:
            digest.update(module.encode() + b"\0?")
    return digest.digest()


def line_seeds(header: bytes, mode: str = "bulk") -> tuple[int, int]:
    """The two hash seeds of lines read under `header` (the header line's bytes, without
    its line ending) in a file of `mode`."""
    digest = hashlib.sha256(rules_fingerprint() + mode.encode() + b"\0" + header).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


def prints_of(lines: pl.Expr, seeds: tuple[int, int]) -> list[pl.Expr]:
    """The L1, L2 columns of `lines` (the lines' text, without line endings)."""
    return [lines.hash(seeds[0]).alias(L1), lines.hash(seeds[1]).alias(L2)]


def no_prints() -> list[pl.Expr]:
    """L1, L2 columns that say "no line print"."""
    return [pl.lit(None, pl.UInt64).alias(L1), pl.lit(None, pl.UInt64).alias(L2)]
