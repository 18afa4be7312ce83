"""The inbox watcher on real folders, a real SQLite file and real inotify: when loose files,
zips and folders become sets, and the incomplete/stale notices."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from ingestd.config import Config, DaemonConfig, IngestConfig, TenantConfig
from ingestd.events.store import EventStore
from ingestd.oneroster import spec
from ingestd.oneroster.sample import generate
from ingestd.pipeline.ingest import Pipeline
from ingestd.sources.inbox import InboxWatcher, plan, scan
from ingestd.sources.sftp.jail import TEMP_PREFIX

ALL = list(spec.ENTITY_NAMES)


def touch(path: Path, age: float = 0.0, data: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def seven(folder: Path) -> list[Path]:
    return [touch(folder / f"{e}.csv") for e in ALL]


# --- plan(): what is a set, and when -------------------------------------------------------


def test_loose_files_form_a_set_only_when_complete_and_settled(tmp_path: Path):
    files = seven(tmp_path)
    now = time.time()
    assert plan(scan(tmp_path), now, settle=120, required=ALL).claims == []  # not settled
    later = plan(scan(tmp_path), now + 121, settle=120, required=ALL)
    assert [sorted(p.name for p in c) for c in later.claims] == [sorted(p.name for p in files)]
    files[2].unlink()
    waiting = plan(scan(tmp_path), now + 121, settle=120, required=ALL)
    assert waiting.claims == [] and waiting.waiting is not None
    assert waiting.waiting.missing == [ALL[2]]


def test_the_next_check_is_when_the_inbox_settles(tmp_path: Path):
    seven(tmp_path)
    now = time.time()
    result = plan(scan(tmp_path), now, settle=120, required=ALL)
    assert result.next_check is not None and now + 110 < result.next_check <= now + 121


def test_an_upload_in_progress_keeps_the_inbox_unsettled(tmp_path: Path):
    seven(tmp_path)
    upload = touch(tmp_path / f"{TEMP_PREFIX}abc")
    now = time.time() + 200
    os.utime(upload, (now - 1, now - 1))  # still being written
    assert plan(scan(tmp_path), now, settle=120, required=ALL).claims == []
    os.utime(upload, (now - 500, now - 500))  # a session that died long ago: ignored
    assert len(plan(scan(tmp_path), now, settle=120, required=ALL).claims) == 1


def test_the_manifest_decides_which_files_are_required(tmp_path: Path):
    touch(tmp_path / "users.csv")
    touch(tmp_path / "orgs.csv")
    rows = ["propertyName,value", "manifest.version,1.0", "oneroster.version,1.1"]
    rows += [f"file.{e},{'bulk' if e in ('users', 'orgs') else 'absent'}" for e in ALL]
    touch(tmp_path / "manifest.csv", data="\n".join(rows) + "\n")
    result = plan(scan(tmp_path), time.time() + 200, settle=120, required=ALL)
    assert len(result.claims) == 1 and len(result.claims[0]) == 3


def test_other_files_travel_with_the_set_and_partial_uploads_stay(tmp_path: Path):
    seven(tmp_path)
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "users.csv.filepart")
    (claim,) = plan(scan(tmp_path), time.time() + 200, settle=120, required=ALL).claims
    names = {p.name for p in claim}
    assert "notes.txt" in names and "users.csv.filepart" not in names


def test_a_zip_and_a_folder_are_sets_by_themselves_in_arrival_order(tmp_path: Path):
    touch(tmp_path / "b.zip")
    time.sleep(0.02)
    touch(tmp_path / "a.zip")
    time.sleep(0.02)
    touch(tmp_path / "upload" / "users.csv")
    touch(tmp_path / "users.csv")  # a loose file alone: not a set
    now = time.time()
    assert plan(scan(tmp_path), now, settle=120, required=ALL).claims == []
    later = plan(scan(tmp_path), now + 200, settle=120, required=ALL)
    assert [c[0].name for c in later.claims] == ["b.zip", "a.zip", "upload"]
    assert later.waiting is not None and later.waiting.present == ["users.csv"]


# --- the watcher, live -----------------------------------------------------------------------


def make_config(tmp_path: Path, **ingest: object) -> Config:
    ingest.setdefault("settle_seconds", 0.3)
    return Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state"),
        ingest=IngestConfig(**ingest),
        tenants={"alpha": TenantConfig(id="alpha"), "beta": TenantConfig(id="beta")},
    )


async def wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def events_of(state: Path, type_glob: str) -> list[dict]:
    with EventStore.open(state) as store:
        return [json.loads(e[5]) for e in store.read_events(type_glob=type_glob)]


async def run_watcher(config: Config, body) -> list[tuple[str, str]]:
    submitted: list[tuple[str, str]] = []
    watcher = InboxWatcher(
        config.daemon.state_dir, lambda: config, lambda t, s: submitted.append((t, s))
    )
    task = asyncio.create_task(watcher.run())
    try:
        await body(submitted)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        watcher.close()
    return submitted


def test_watcher_claims_files_that_arrive_and_files_already_there(tmp_path: Path):
    config = make_config(tmp_path)
    state = config.daemon.state_dir
    generate(state / "inbox" / "alpha", students=20, seed=1)  # there before the start
    touch(state / "inbox" / "alpha" / "notes.txt")

    async def body(submitted: list) -> None:
        await wait_for(lambda: len(submitted) == 1)
        generate(state / "inbox" / "beta", students=20, seed=2)  # arrives while watching
        await wait_for(lambda: len(submitted) == 2)

    submitted = asyncio.run(run_watcher(config, body))
    assert [t for t, _ in submitted] == ["alpha", "beta"]
    with EventStore.open(state) as store:
        rows = {r.id: r for r in store.list_sets()}
    for tenant, set_id in submitted:
        assert rows[set_id].status == "received" and rows[set_id].tenant == tenant
        raw = state / "sets" / tenant / set_id / "raw"
        assert {f"{e}.csv" for e in ALL} <= {p.name for p in raw.iterdir()}
        assert list((state / "inbox" / tenant).iterdir()) == []  # all moved, none copied
    alpha_raw = state / "sets" / "alpha" / submitted[0][1] / "raw"
    assert (alpha_raw / "notes.txt").exists()  # moved aside with the set, not deleted


def test_a_second_delivery_during_processing_becomes_the_next_set(tmp_path: Path):
    config = make_config(tmp_path)
    inbox = config.daemon.state_dir / "inbox" / "alpha"

    async def body(submitted: list) -> None:
        generate(inbox, students=10, seed=1)
        await wait_for(lambda: len(submitted) == 1)
        generate(inbox, students=10, seed=2)
        await wait_for(lambda: len(submitted) == 2)

    submitted = asyncio.run(run_watcher(config, body))
    assert submitted[0][1] < submitted[1][1]  # ULIDs: arrival order


def test_incomplete_set_is_reported_once_even_across_restarts(tmp_path: Path):
    config = make_config(tmp_path, incomplete_after=0.5)
    inbox = config.daemon.state_dir / "inbox" / "alpha"
    touch(inbox / "users.csv")
    touch(inbox / "orgs.csv")

    async def body(submitted: list) -> None:
        await wait_for(lambda: len(events_of(config.daemon.state_dir, "sets.incomplete")) == 1)
        await asyncio.sleep(1.5)

    asyncio.run(run_watcher(config, body))
    asyncio.run(run_watcher(config, lambda s: asyncio.sleep(1.5)))
    (notice,) = events_of(config.daemon.state_dir, "sets.incomplete")
    assert notice["tenant"] == "alpha" and notice["present"] == ["orgs.csv", "users.csv"]
    assert notice["missing"] == [e for e in ALL if e not in ("users", "orgs")]
    assert sorted(p.name for p in inbox.iterdir()) == ["orgs.csv", "users.csv"]  # still waiting


def test_silent_tenant_gets_one_stale_event(tmp_path: Path):
    config = make_config(tmp_path, stale_after=0.0)
    state = config.daemon.state_dir
    sample = tmp_path / "sample"
    generate(sample, students=10, seed=1)
    with EventStore.open(state) as store:
        assert Pipeline(state, store).ingest_path("alpha", sample).status == "accepted"
    asyncio.run(run_watcher(config, lambda s: asyncio.sleep(0.5)))
    asyncio.run(run_watcher(config, lambda s: asyncio.sleep(0.5)))
    stale = events_of(state, "sets.stale")
    assert [e["tenant"] for e in stale] == ["alpha"]  # beta never delivered: not stale
    assert stale[0]["last_accepted_set"] is not None


@pytest.mark.parametrize("name", ["gamma", ".hidden"])
def test_odd_names_in_the_inbox_root_are_not_tenants_of_ours(tmp_path: Path, name: str):
    config = make_config(tmp_path)
    state = config.daemon.state_dir
    (state / "inbox").mkdir(parents=True)
    odd = (state / "inbox" / name).resolve()
    generate(odd, students=5, seed=1)
    submitted = asyncio.run(run_watcher(config, lambda s: asyncio.sleep(1.0)))
    assert submitted == []
    assert any(odd.iterdir())  # untouched
