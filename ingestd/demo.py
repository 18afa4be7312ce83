"""`ingestd demo`: the whole loop on this machine, in a folder of its own.

It writes a config and a school (tenant) with an SFTP password, starts the
daemon in this process on a free loopback port, and plays three days of a
school's life through a real SFTP client: day 1 the full roster arrives (every
record is `created`), day 2 a few students change, leave and join (`updated`
with the old values, `deleted`, `created`), day 3 a users.csv cut in half
arrives and the safeguards hold the set for an operator. It prints what a
consumer of the change events would see, then how to explore the state it
left behind with the ordinary commands.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncssh
import polars as pl

from ingestd.config import Config, load_config
from ingestd.errors import UsageError
from ingestd.events.store import EventStore
from ingestd.logging import configure_logging
from ingestd.oneroster.sample import generate
from ingestd.sources.sftp.auth import hash_password
from ingestd.tenants import write_tenant

TENANT = "lincoln-high"
SETTLE_SECONDS = 1.0
OUTCOME_TIMEOUT = 180.0


def run_demo(folder: Path, students: int = 200, say: Callable[[str], None] = print) -> int:
    """Run the demo in `folder` (created; must be empty or absent). Returns an exit code."""
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder}: not empty; give a new folder (--dir) for the demo")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config_file = _write_config(folder, port)
    password = secrets.token_urlsafe(18)
    write_tenant(
        folder / "tenants.d",
        TENANT,
        {"name": "Lincoln High School", "password_hash": hash_password(password)},
        new=True,
    )
    config = load_config(config_file)
    configure_logging("json", "info", stream=(folder / "daemon.log").open("a"))
    say(f"ingestd demo in {folder}")
    say(f"  config   {config_file} (tenant {TENANT}; only its password's hash is stored)")
    say(f"  daemon   SFTP on 127.0.0.1:{port}, state in {config.daemon.state_dir}")
    say(f"  log      {folder / 'daemon.log'} (JSON lines, as journald would get them)")
    return asyncio.run(_play(folder, config, port, password, students, say))


async def _play(
    folder: Path,
    config: Config,
    port: int,
    password: str,
    students: int,
    say: Callable[[str], None],
) -> int:
    from ingestd.daemon import run_daemon

    stop = asyncio.Event()
    ready = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(config, stop=stop, on_ready=lambda _: ready.set()))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([daemon, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        say("the daemon did not start; see the log")
        return await daemon
    store = EventStore.open(config.daemon.state_dir)
    code = 0
    held = []
    try:
        day1 = folder / "day1"
        generate(day1, students=students, seed=7)
        say("")
        say(f"day 1: the school's SIS uploads its full export ({students} students)")
        outcome = await _deliver(store, port, password, day1, say)
        code = code or (outcome != "accepted")

        day2 = folder / "day2"
        changes = next_day(day1, day2)
        say("")
        say(f"day 2: {changes}")
        outcome = await _deliver(store, port, password, day2, say, show="users.updated")
        code = code or (outcome != "accepted")

        day3 = folder / "day3"
        _cut_users(day2, day3)
        say("")
        say("day 3: a broken export: users.csv holds only half of the students")
        outcome = await _deliver(store, port, password, day3, say)
        code = code or (outcome != "held")
        held = store.list_sets(status="held", limit=1)
    finally:
        stop.set()
        daemon_code = await daemon
        store.close()
    # The command as this shell can run it (`make run` calls .venv/bin/ingestd).
    exe = sys.argv[0] if Path(sys.argv[0]).name == "ingestd" else "python -m ingestd"
    cfg = f"--config {folder / 'ingestd.toml'}"
    say("")
    say("explore what it left behind:")
    say(f"  {exe} {cfg} events --tenant {TENANT} --type 'users.*' --limit 5")
    say(f"  {exe} {cfg} sets --tenant {TENANT}")
    if held:
        say(f"  {exe} {cfg} sets approve {held[0].id}   (or: sets reject ...)")
    say(f"  {exe} {cfg} run   (the daemon again; Ctrl-C stops it)")
    say("  then, in another terminal, push files as a school's SIS would (password below):")
    say(f"    sftp -P {port} -o UserKnownHostsFile=/dev/null {TENANT}@127.0.0.1")
    say(f"    password: {password}   (a demo tenant; real ones: `ingestd tenant add`)")
    say(f"  rm -r {folder}   (when done)")
    return int(code) or daemon_code


async def _deliver(
    store: EventStore,
    port: int,
    password: str,
    source: Path,
    say: Callable[[str], None],
    show: str | None = None,
) -> str:
    """Upload the files of `source` over SFTP, wait for the set's decision, print its events."""
    after = store.last_event_id()
    files = sorted(p for p in source.iterdir() if p.is_file())
    async with (
        asyncssh.connect(
            "127.0.0.1",
            port,
            username=TENANT,
            password=password,
            known_hosts=None,  # the demo trusts the host key the daemon just made
            client_keys=None,
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        for path in files:
            await sftp.put(str(path), path.name)
    total = sum(p.stat().st_size for p in files)
    say(f"  uploaded {len(files)} files ({total / 1e6:.1f} MB) over SFTP")
    started = time.monotonic()
    events: list[tuple] = []
    decision = None
    while decision is None:
        if time.monotonic() - started > OUTCOME_TIMEOUT:
            say("  no decision in time; see the daemon log")
            return "timeout"
        await asyncio.sleep(0.2)
        fresh = store.read_events(after=after, tenant=TENANT)
        for event in fresh:
            events.append(event)
            after = event[0]
            if event[1] in ("sets.accepted", "sets.rejected", "sets.held", "sets.duplicate"):
                decision = event
    seconds = time.monotonic() - started
    counts = Counter(e[1] for e in events)
    status = decision[1].removeprefix("sets.")
    say(f"  the inbox settled, the set was claimed and {status} after {seconds:.1f} s")
    say(f"  events {events[0][0]}..{events[-1][0]}:")
    for type_, n in counts.items():
        say(f"    {n:>6}  {type_}")
    if show and (example := next((e for e in events if e[1] == show), None)):
        data = json.loads(example[5])
        brief = {
            "id": example[0],
            "type": example[1],
            "object": {k: data["object"][k] for k in ("sourcedId", "givenName", "email")},
            "previous_attributes": data.get("previous_attributes"),
        }
        say("  one of them, abridged:")
        say("    " + json.dumps(brief, ensure_ascii=False))
    if status == "held":
        summary = json.loads(decision[5])
        for reason in summary.get("reasons", []):
            say(f"  held: {reason.get('message', reason)}")
        say(f"  an operator decides: ingestd sets approve|reject {summary.get('set_id', '')}")
    return status


def next_day(day1: Path, day2: Path) -> str:
    """Day 2: three students change email, two leave (with their enrollments), one joins."""
    day2.mkdir()
    frames = {
        p.stem: pl.read_csv(p, infer_schema=False) for p in day1.iterdir() if p.suffix == ".csv"
    }
    users = frames["users"]
    students = users.filter(pl.col("role") == "student")["sourcedId"].to_list()
    edited, leaving = students[:3], students[3:5]
    template = users.filter(pl.col("sourcedId") == students[5])
    users = users.with_columns(
        email=pl.when(pl.col("sourcedId").is_in(edited))
        .then(pl.lit("new.") + pl.col("email"))
        .otherwise(pl.col("email"))
    ).filter(~pl.col("sourcedId").is_in(leaving))
    newcomer = template.with_columns(
        sourcedId=pl.lit("demo-new-student"),
        givenName=pl.lit("Ana"),
        familyName=pl.lit("Novak"),
        username=pl.lit("ana.novak"),
        email=pl.lit("ana.novak@example.edu"),
    )
    frames["users"] = pl.concat([users, newcomer])
    enrollments = frames["enrollments"].filter(~pl.col("userSourcedId").is_in(leaving))
    first = enrollments.filter(pl.col("userSourcedId") == students[5]).head(1)
    joined = first.with_columns(
        sourcedId=pl.lit("demo-new-enrollment"), userSourcedId=pl.lit("demo-new-student")
    )
    frames["enrollments"] = pl.concat([enrollments, joined])
    if "demographics" in frames:
        frames["demographics"] = frames["demographics"].filter(~pl.col("sourcedId").is_in(leaving))
    for name, frame in frames.items():
        frame.write_csv(day2 / f"{name}.csv")
    return "3 students get a new email, 2 leave, 1 joins a class"


def _cut_users(day2: Path, day3: Path) -> None:
    """Day 3: a consistent export of only half the users (as a failed SIS query gives)."""
    day3.mkdir()
    users = pl.read_csv(day2 / "users.csv", infer_schema=False)
    users = users.head(users.height // 2)
    kept = users["sourcedId"]
    for p in day2.iterdir():
        if p.name == "users.csv":
            users.write_csv(day3 / p.name)
        elif p.name in ("enrollments.csv", "demographics.csv"):
            key = "userSourcedId" if p.name == "enrollments.csv" else "sourcedId"
            frame = pl.read_csv(p, infer_schema=False)
            frame.filter(pl.col(key).is_in(kept.implode())).write_csv(day3 / p.name)
        elif p.is_file():
            (day3 / p.name).write_bytes(p.read_bytes())


def _write_config(folder: Path, port: int) -> Path:
    path = folder / "ingestd.toml"
    path.write_text(
        "# Written by `ingestd demo`: a loopback-only daemon with a short settle time.\n"
        f'[daemon]\nstate_dir = "{folder / "state"}"\n\n'
        f"[ingest]\nsettle_seconds = {SETTLE_SECONDS}\n\n"
        f'[sftp]\nlisten = "127.0.0.1:{port}"\n'
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
