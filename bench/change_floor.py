"""Spike: the floor of a change ingest that never builds the whole tables (what the carried
read, ingestd/oneroster/carry.py, was built on; kept to compare it with that floor).

    python bench/change_floor.py [--dir bench/out/ingest] [--students 100000] [--runs 3]

Uses the two days bench/ingest.py generated (run it first). What a snapshot of day 1 would
keep for such a path is written once: per row, two hashes of its line, and the id and
reference columns. Then, timed per run on day 2, the steps every row must pay for:

- read the files' bytes;
- split each into lines and hash them (a one-column polars read, two seeds);
- load the prior line hashes and id/reference columns;
- join the new line hashes with the prior ones (unchanged rows found);
- per entity, the ids that went away, and whether any unchanged row still points at one.

Printed beside a bare `polars.read_csv` of the same files in the same run. Not measured:
claim (copy and digest, about 0.15 s at 100,000 students), the commit (about 0.1 s for a
day's 44k events) and the work on the ~2% of rows that changed (parse, checks, diff).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from ingestd.oneroster.csvfile import physical_lines

ENTITIES = ["academicSessions", "orgs", "courses", "classes", "users", "demographics"]
ENTITIES += ["enrollments"]
REFERENCES = {
    "enrollments": ["classSourcedId", "userSourcedId", "schoolSourcedId"],
    "users": ["orgSourcedIds", "agentSourcedIds"],
    "classes": ["courseSourcedId", "schoolSourcedId", "termSourcedIds"],
    "courses": ["orgSourcedId", "schoolYearSourcedId"],
    "demographics": [],
    "orgs": ["parentSourcedId"],
    "academicSessions": ["parentSourcedId"],
}


def lines_of(data: bytes) -> pl.Series:
    """The lines after the header, split by polars as the reader splits them."""
    lines = physical_lines(data)
    assert lines is not None
    return lines.slice(1)


def hashes(lines: pl.Series) -> pl.DataFrame:
    return pl.DataFrame({"l": lines}).select(
        pl.col("l").hash(7).alias("h1"), pl.col("l").hash(8).alias("h2")
    )


def _stopwatch(times: dict[str, float]) -> Callable[[str, float], None]:
    """A function that records, under a name, the seconds since a start."""

    def timed(name: str, started: float) -> None:
        times[name] = time.perf_counter() - started

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("bench/out/ingest"))
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    day1 = args.dir / f"district-{args.students}"
    day2 = args.dir / f"district-{args.students}-day2"
    if not day2.is_dir():
        raise SystemExit(f"{day2} is missing: run bench/ingest.py --students {args.students}")
    prior_dir = args.dir / "change-floor"
    prior_dir.mkdir(exist_ok=True)
    for entity in ENTITIES:
        path = day1 / f"{entity}.csv"
        keys = pl.read_csv(path, infer_schema=False).select("sourcedId", *REFERENCES[entity])
        prior = pl.concat([hashes(lines_of(path.read_bytes())), keys], how="horizontal")
        prior.write_parquet(prior_dir / f"{entity}.parquet", compression="lz4", statistics=False)
    for run in range(1, args.runs + 1):
        times: dict[str, float] = {}
        timed = _stopwatch(times)
        started = time.perf_counter()
        datas = {e: (day2 / f"{e}.csv").read_bytes() for e in ENTITIES}
        timed("read", started)
        started = time.perf_counter()
        new = {e: hashes(lines_of(data)) for e, data in datas.items()}
        timed("split+hash", started)
        started = time.perf_counter()
        prior = {e: pl.read_parquet(prior_dir / f"{e}.parquet") for e in ENTITIES}
        timed("load prior", started)
        started = time.perf_counter()
        origin = {}
        for e in ENTITIES:
            known = prior[e].select(
                "h1", pl.col("h2").alias("k2"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("o")
            )
            found = new[e].join(known, on="h1", how="left", maintain_order="left")
            origin[e] = found.select(pl.when(pl.col("h2") == pl.col("k2")).then("o")).to_series()
        timed("join", started)
        started = time.perf_counter()
        for e in ENTITIES:
            taken = pl.repeat(False, prior[e].height, eager=True).scatter(
                origin[e].drop_nulls(), True
            )
            gone = prior[e].filter(~taken)["sourcedId"].implode()
            kept = prior[e].filter(taken)
            for column in REFERENCES[e]:
                kept.select(pl.col(column).is_in(gone).any())
        timed("references", started)
        started = time.perf_counter()
        frames = [pl.read_csv(day2 / f"{e}.csv", infer_schema=False) for e in ENTITIES]
        bare = time.perf_counter() - started
        del frames
        total = sum(times.values())
        steps = ", ".join(f"{k} {v:.3f}" for k, v in times.items())
        print(f"run {run}: {steps}; total {total:.3f} s = {total / bare:.2f}x the bare read")
        print(f"  bare polars.read_csv of the same files: {bare:.3f} s")


if __name__ == "__main__":
    main()
