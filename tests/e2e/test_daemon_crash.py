"""SIGKILL of the daemon while it ingests a set (seeded moments, 10 trials): after a restart
the event log is the one an uninterrupted run writes: nothing lost, nothing twice, ids
without gaps."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path

from ingestd.demo import next_day
from ingestd.oneroster.sample import generate
from tests.e2e.site import Site

TRIALS = 10


def normalized(site: Site) -> list[tuple]:
    """The log as a consumer sees it; a set event's summary only by its counts (set ids and
    times differ between runs by nature)."""
    out = []
    for id_, type_, _, tenant, _, data in site.events():
        body = json.loads(data)
        if type_.startswith("sets."):
            body = body.get("counts")
        out.append((id_, type_, tenant, body))
    return out


def accepted(site: Site) -> int:
    return sum(1 for kind, _ in site.decisions() if kind == "sets.accepted")


def poll(predicate, seconds: float = 120) -> float:
    """Wait (finely: a set of this size is processed in well under a second) until
    `predicate` holds; the time it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.005)
    return time.monotonic() - started


def test_sigkill_during_an_ingest_loses_and_repeats_nothing(site: Site, tmp_path: Path):
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    generate(day1, students=2500, seed=41)
    next_day(day1, day2)
    inbox = site.state / "inbox" / "alpha"

    # The reference: day 1, then day 2, uninterrupted. Keep the state after day 1.
    shutil.copytree(day1, inbox, dirs_exist_ok=True)
    proc = site.start()
    site.wait(lambda: accepted(site) == 1, 120)
    assert site.stop(proc) == 0
    after_day1 = tmp_path / "after-day1"
    shutil.copytree(site.state, after_day1)
    shutil.copytree(day2, inbox, dirs_exist_ok=True)
    proc = site.start()
    poll(lambda: not list(inbox.iterdir()))  # claimed: the set is being processed
    processing = poll(lambda: accepted(site) == 2)
    assert site.stop(proc) == 0
    reference = normalized(site)
    assert [t for _, t, _, _ in reference].count("users.updated") == 3

    rng = random.Random(20261129)
    landed = 0
    for _ in range(TRIALS):
        shutil.rmtree(site.state)
        shutil.copytree(after_day1, site.state)
        shutil.copytree(day2, inbox, dirs_exist_ok=True)
        proc = site.start()
        poll(lambda: not list(inbox.iterdir()))
        # within the processing as the reference timed it, the commit at its end included
        # (a little less: a run may go faster than the reference did)
        time.sleep(rng.uniform(0, processing * 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += accepted(site) == 1  # killed before the commit
        proc = site.start()
        site.wait(lambda: accepted(site) == 2, 120)
        assert site.stop(proc) == 0
        assert normalized(site) == reference
        assert not list(inbox.iterdir())  # every file claimed, none left behind
    assert landed >= TRIALS // 2, "most kills should land before the commit"
