"""Writing the synthetic district: CSV bytes per file, the manifest, a folder or a zip.

Files are written under temp names and renamed when complete (the inbox ignores
dotfiles and *.tmp, so it never picks up half a set); zips are byte-identical
for the same content (fixed timestamps, modes and compression).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import polars as pl

from ingestd.oneroster import spec

Columns = dict[str, list[str]]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: reproducible zips


def sample_csv(entity: spec.Entity, cols: Columns) -> bytes:
    """CSV bytes with the spec header; columns a builder leaves out (status...) stay empty."""
    names = entity.column_names
    unknown = [c for c in cols if c not in names]
    if unknown:
        raise ValueError(f"{entity.name}: not spec columns: {unknown}")
    empty = [None] * len(cols["sourcedId"])
    frame = pl.DataFrame(
        {c: cols.get(c, empty) for c in names}, schema=dict.fromkeys(names, pl.String)
    )
    # polars writes "" as a quoted `""`; the spec's empty value is nothing between commas.
    frame = frame.with_columns(pl.all().replace("", None))
    buf = io.BytesIO()
    frame.write_csv(buf, line_terminator="\n", quote_style="necessary")
    return buf.getvalue()


def sample_manifest() -> bytes:
    """manifest.csv of a bulk set with the seven rostering files."""
    rows = [
        spec.MANIFEST_HEADER,
        ("manifest.version", "1.0"),
        ("oneroster.version", "1.1"),
        *((f"file.{name}", "bulk") for name in spec.ENTITY_NAMES),
        *((f"file.{name}", "absent") for name in spec.GRADEBOOK_NAMES),
        ("source.systemName", "ingestd sample"),
        ("source.systemCode", "ingestd-sample"),
    ]
    return "".join(f"{k},{v}\n" for k, v in rows).encode()


class SampleSink:
    """A directory of loose files or one zip, each written under a temp name and renamed when
    complete: the inbox ignores dotfiles and *.tmp, so it never picks up half a set."""

    def __init__(self, out: Path, as_zip: bool) -> None:
        self.out, self.size, self.zip = out, 0, None
        (out.parent if as_zip else out).mkdir(parents=True, exist_ok=True)
        self.tmp = out.with_name(f".{out.name}.tmp")
        if as_zip:
            self.zip = zipfile.ZipFile(self.tmp, "w")

    def put(self, name: str, data: bytes) -> None:
        self.size += len(data)
        if self.zip is None:
            tmp = self.out / f".{name}.tmp"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.out / name)
            finally:
                tmp.unlink(missing_ok=True)
            return
        info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # Unix; the default depends on the platform writing the zip
        info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
        self.zip.writestr(info, data, compresslevel=6)

    def close(self) -> int:
        if self.zip is None:
            return self.size
        self.zip.close()
        os.replace(self.tmp, self.out)
        return self.out.stat().st_size

    def abort(self) -> None:
        if self.zip is not None:
            self.zip.close()
            self.tmp.unlink(missing_ok=True)
