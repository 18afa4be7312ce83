"""Benchmark: pull a large district from the fake OneRoster 1.1 REST server.

    python bench/poll.py [--students 100000] [--limit 10000] [--concurrency 4] [--runs 2]
                         [--no-gzip]

The district is written by `ingestd.oneroster.sample.generate` (cached in --dir) and served
by tests/sources/pollers/fake_oneroster.py in a child process (so that the server's JSON
work does not share the client's GIL), behind a static bearer token, `limit` capped at
10,000 (ClassLink's cap). The parent pulls it with `OneRosterPoller` and a real `ApiClient`
and `PageArchive` (every page gzip-kept, as `runner.pull_set` does), then writes the CSV
set with `runner.write_roster` (timed apart).

Transfer: the fake gzips its answers (`Content-Encoding: gzip`), as nginx or a CDN in front
of a vendor API does, at level 1 (nginx's default `gzip_comp_level`: the least compression a
real server is likely to send, so the sizes are not flattered); the client decompresses them
and the archive keeps the server's gzip bytes as they came. `--no-gzip` benches the plain
(identity) transfer, where the archive compresses each body itself. The server's gzip time
is timed apart and printed on its own line; it is not part of the ratio.

Printed per run: pull time, requests, rows/s, the client's peak RSS, and where the time
goes. The ratio asked for, *client overhead per page / server serialization per page*, is
measured directly on both sides, not as a difference of wall clocks:

- server serialization per page: the fake times `json.dumps` of each page it sends (and,
  apart, turning the page's rows into JSON records: "build"), in CPU time of the thread
  serving it (`time.thread_time`: time spent waiting for the GIL while another request's
  thread runs is not counted);
- client overhead per page: the CPU time (`time.process_time`, all threads) the client
  process spent during the pull, divided by the pages: receiving and checking the body in
  ApiClient (and decompressing it), decoding the JSON, mapping it to rows, archiving it
  (compressing it first when it came plain). CPU time is used because the collections are
  pulled concurrently, so wall-clock segments overlap each other and the server's work;
  with --concurrency 1 the wall-clock difference (pull time minus the server's whole time
  per request) is printed too, as a cross-check.

Two more readings of the ratio are printed under it: without polars' decode and map (what
is left when the JSON, which every client must read, is set aside), and against the
server's whole serialization (building the records and json.dumps).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package

TOKEN = "bench-token"


def _serve(district: str, cap: int, gzip: bool, conn) -> None:  # the child process
    from tests.sources.pollers.fake_oneroster import FakeOneRoster, NoDelayServer, Scenario
    from tests.sources.pollers.fakehttp import StaticBearer

    fake = FakeOneRoster(Path(district), Scenario(max_limit=cap), NoDelayServer(gzip=gzip))
    StaticBearer(fake.server, TOKEN)
    with fake:
        conn.send(fake.url)
        cpu = time.process_time()
        while True:
            command = conn.recv()
            if command == "reset":
                fake.pages_served, fake.build_seconds, fake.serialize_seconds = 0, 0.0, 0.0
                fake.server.gzip_seconds = 0.0
                fake.server.requests.clear()
                cpu = time.process_time()
                conn.send(None)
            elif command == "stats":
                conn.send(
                    {
                        "pages": fake.pages_served,
                        "build": fake.build_seconds,
                        "serialize": fake.serialize_seconds,
                        "gzip": fake.server.gzip_seconds,
                        "cpu": time.process_time() - cpu,
                        "requests": len(fake.server.requests),
                    }
                )
            else:
                return


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class _Timer:
    """CPU seconds (of the calling thread) spent in a wrapped function."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kw):
        started = time.thread_time()
        try:
            return self.fn(*args, **kw)
        finally:
            self.seconds += time.thread_time() - started


async def _pull(url: str, limit: int, concurrency: int, pages_dir: Path, out: dict) -> None:
    """Pull once; the results go into `out`. (Not returned: on Python 3.11, asyncio.run
    formats the repr of its main task's result when it restores the SIGINT handler, which
    for a roster of a million rows takes 10 s and 1.7 GB.)"""
    from ingestd.config import TenantConfig
    from ingestd.sources.pollers import http
    from ingestd.sources.pollers.base import PageArchive
    from ingestd.sources.pollers.http import ApiClient, BearerAuth
    from ingestd.sources.pollers.oneroster_rest import OneRosterPoller

    # measured, not changed: json.loads (ApiClient's, or the poller's for a page polars did
    # not take), ApiClient's gunzip of a gzip body, and the archive (its gzip, and writing)
    is_json = http.parse_json = _Timer(http.parse_json)
    gunzip = http.gunzip = _Timer(http.gunzip)
    archive = PageArchive(pages_dir)
    record = archive.record = _Timer(archive.record)

    tenant = TenantConfig(
        id="bench",
        source="oneroster",
        base_url=url,
        auth="bearer",
        token_file=Path("/unused"),
        page_size=limit,
        max_concurrent_requests=concurrency,
    )
    async with ApiClient(url, BearerAuth(TOKEN), max_concurrent=concurrency, timeout=300) as c:
        poller = OneRosterPoller(tenant, c, archive)
        started, cpu = time.perf_counter(), time.process_time()
        roster = await poller.pull()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    http.parse_json, http.gunzip = is_json.fn, gunzip.fn
    parts = {"parse": is_json.seconds, "gunzip": gunzip.seconds, "archive": record.seconds}
    out.update(roster=roster, seconds=seconds, cpu=cpu, client=c, poller=poller, parts=parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("bench/out/poll"))
    parser.add_argument("--no-gzip", action="store_true", help="plain (identity) transfer")
    args = parser.parse_args()

    from ingestd.oneroster.sample import generate
    from ingestd.sources.pollers.runner import write_roster

    district = args.dir / f"district-{args.students}-{args.seed}"
    if not (district / "manifest.csv").exists():
        print(f"generating {args.students:,} students ...", flush=True)
        generate(district, students=args.students, seed=args.seed)

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    gzip = not args.no_gzip
    server = ctx.Process(target=_serve, args=(str(district), 10_000, gzip, child), daemon=True)
    server.start()
    url = parent.recv()
    try:
        for run in range(1, args.runs + 1):
            parent.send("reset")
            parent.recv()
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                out: dict = {}
                asyncio.run(_pull(url, args.limit, args.concurrency, Path(tmp) / "pages", out))
                roster, seconds, cpu = out.pop("roster"), out["seconds"], out["cpu"]
                client, poller, parts = out["client"], out["poller"], out["parts"]
                parent.send("stats")
                srv = parent.recv()
                started = time.perf_counter()
                write_roster(Path(tmp) / "raw", roster)
                write = time.perf_counter() - started
            rows = sum(len(r) for r in roster.tables.values())
            st = poller.stats
            pages = st.pages
            client_page = cpu / pages
            serialize_page = srv["serialize"] / srv["pages"]
            build_page = srv["build"] / srv["pages"]
            gzip_page = srv["gzip"] / srv["pages"]
            transfer = "gzip (server level 1)" if gzip else "plain (identity, --no-gzip)"
            print(f"run {run}: {args.students:,} students, limit {args.limit:,}, "
                  f"max_concurrent {args.concurrency}, transfer {transfer}")  # fmt: skip
            print(f"  pull            {seconds:8.2f} s   {client.requests} requests "
                  f"({client.retries} retries), {pages} pages, {rows:,} rows, "
                  f"{rows / seconds:,.0f} rows/s")  # fmt: skip
            print(f"  write_roster    {write:8.2f} s   (CSV set, not part of the pull)")
            print(f"  client peak RSS {_hwm() / 2**30:8.2f} GiB")
            timed = parts["parse"] + parts["gunzip"] + parts["archive"]
            rest = cpu - timed - st.decode_seconds - st.map_seconds
            print(f"  client CPU      {cpu:8.2f} s   {client_page * 1000:7.1f} ms/page")
            print(f"    gunzip                 {parts['gunzip']:6.2f} s   (ApiClient, of the "
                  "bodies that came gzipped)")  # fmt: skip
            print(f"    json.loads             {parts['parse']:6.2f} s   "
                  f"({st.python_pages} pages the Python way)")  # fmt: skip
            print(f"    polars decode + map    {st.decode_seconds:6.2f} s   (the calling thread's "
                  "CPU: polars' own threads count in the rest)")  # fmt: skip
            print(f"    rows, de-dup           {st.map_seconds:6.2f} s   (Python mapping included)")
            archived = "the server's gzip bytes written as they came" if gzip else "gzip level 1"
            print(f"    archive                {parts['archive']:6.2f} s   (its own thread: "
                  f"{archived})")  # fmt: skip
            print(f"    HTTP, asyncio, rest    {rest:6.2f} s")
            print(f"  waiting         {st.fetch_seconds:8.2f} s   for responses, summed over the "
                  "collections pulled at once")  # fmt: skip
            print(
                f"  server          {srv['cpu']:8.2f} s CPU; per page: json.dumps "
                f"{serialize_page * 1000:.1f} ms, building records {build_page * 1000:.1f} ms"
            )
            if gzip:
                print(f"  server gzip per page {gzip_page * 1000:.1f} ms   (level 1, timed apart: "
                      "not in the ratio)")  # fmt: skip
            print(f"  ratio           {client_page / serialize_page:8.2f}   client overhead per "
                  "page / server serialization (json.dumps) per page")  # fmt: skip
            decoding = st.decode_seconds / pages
            print(f"    of which          {(client_page - decoding) / serialize_page:8.2f}   "
                  "without polars decode + map (the JSON every client must read)")  # fmt: skip
            print(f"    against        {client_page / (serialize_page + build_page):8.2f}   the "
                  "server's whole serialization (building records + json.dumps)")  # fmt: skip
            if args.concurrency == 1:
                waited = seconds - srv["build"] - srv["serialize"] - srv["gzip"]
                print(f"  cross-check     {waited / pages * 1000:7.1f} ms/page = (pull time - "
                      "server build+serialize+gzip) / pages, requests one at a time (wall clock: "
                      "includes the HTTP transfer and any time the machine was busy "
                      "elsewhere)")  # fmt: skip
            for warning in roster.warnings:
                print(f"  warning: {warning}")
            del roster, out
    finally:
        parent.send("stop")
        server.join(10)


if __name__ == "__main__":
    main()
