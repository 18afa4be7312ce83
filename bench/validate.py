"""Benchmark: validate a large generated district against a bare polars.read_csv of its files.

    python bench/validate.py [--students 100000] [--repeat 3] [--dir bench/out/validate]

Prints the validate time, the ratio to reading the same CSV files with a bare
`polars.read_csv` in the same process (targets: ratio <= 3), and the peak RSS of
a process that only validates, as a multiple of the set's CSV bytes (target <= 4).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from ingestd.oneroster.sample import generate
from ingestd.oneroster.validate import validate_set

_CHILD = """
import json, sys, time
from pathlib import Path
mode, path = sys.argv[1], Path(sys.argv[2])
import polars as pl
from ingestd.oneroster.validate import validate_set

def hwm_kib():
    # VmHWM is this process's own peak (ru_maxrss would include the parent's at fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm_kib()
t = time.perf_counter()
if mode == "validate":
    ok = validate_set(path).accepted
else:
    frames = [pl.read_csv(f, infer_schema=False) for f in sorted(path.glob("*.csv"))]
    ok = True
print(json.dumps({"seconds": time.perf_counter() - t, "ok": ok, "base_kib": base,
                  "peak_kib": hwm_kib()}))
"""


def bare_read(path: Path) -> float:
    """Seconds to read every CSV of the set with a bare polars.read_csv (all strings)."""
    t = time.perf_counter()
    for f in sorted(path.glob("*.csv")):
        pl.read_csv(f, infer_schema=False)
    return time.perf_counter() - t


def child(mode: str, path: Path) -> dict:
    """Run one validate (or bare read) in a fresh process: its time and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("bench/out/validate"))
    args = parser.parse_args()

    path = args.dir / f"district-{args.students}"
    if not (path / "users.csv").exists():
        t = time.perf_counter()
        generate(path, students=args.students, seed=1)
        print(f"generated {path} in {time.perf_counter() - t:.1f}s")
    csv_bytes = sum(f.stat().st_size for f in path.glob("*.csv"))
    rows = {f.stem: sum(1 for _ in f.open("rb")) - 1 for f in sorted(path.glob("*.csv"))}
    print(f"set: {csv_bytes / 1e6:.1f} MB of CSV, rows {rows}")

    bare, val = [], []
    for _ in range(args.repeat):
        bare.append(bare_read(path))
        t = time.perf_counter()
        result = validate_set(path)
        val.append(time.perf_counter() - t)
        assert result.accepted, result.report.to_text()
    b, v = min(bare), min(val)
    print(f"bare polars.read_csv: {b:.3f}s (best of {args.repeat})")
    print(f"validate:             {v:.3f}s (best of {args.repeat})")
    print(f"ratio validate/bare:  {v / b:.2f}  (target <= 3)")

    for mode in ("bare", "validate"):
        r = child(mode, path)
        peak = r["peak_kib"] * 1024
        print(
            f"peak RSS, process that only does {mode:8s}: {peak / 1e6:.0f} MB "
            f"= {peak / csv_bytes:.2f}x the CSV bytes (interpreter + polars import: "
            f"{r['base_kib'] * 1024 / 1e6:.0f} MB)"
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"bench peak RSS (this process): {own / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
