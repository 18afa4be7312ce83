"""A school's days as the daemon sees them: a tenant added with the CLI, files pushed one by
one with OpenSSH `sftp` (pauses shorter than the settle time), the next day's files over
the same names, a zip, a set missing users.csv, an invalid set. A real `ingestd run`."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import polars as pl

from ingestd.demo import next_day
from ingestd.events.store import EventStore
from ingestd.oneroster.sample import generate
from tests.e2e.site import Site


def cli_events(site: Site, tenant: str, after: int = 0) -> list[dict]:
    run = site.cli("events", "--tenant", tenant, "--after", str(after))
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def rows(folder: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(folder / name, infer_schema=False)


def test_files_one_by_one_then_the_next_day_over_the_same_names(site: Site, tmp_path: Path):
    site.write_config(settle=3.0)
    added = site.cli("tenant", "add", "gamma", "--public-key", site.key.with_suffix(".pub"))
    assert added.returncode == 0, added.stderr
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    generate(day1, students=60, seed=21)
    next_day(day1, day2)
    proc = site.start()
    files = sorted(day1.iterdir())
    assert len(files) == 8  # the seven rostering files and the manifest
    site.upload_one_by_one("gamma", files, pause=0.6)  # shorter than the settle time
    site.wait(lambda: [k for k, d in site.decisions() if d["tenant"] == "gamma"] != [], 60)
    with EventStore.open(site.state) as store:
        assert [s.status for s in store.list_sets(tenant="gamma")] == ["accepted"]  # one set
    first = cli_events(site, "gamma")
    expected = Counter()
    for p in files:
        if p.name != "manifest.csv":
            expected[f"{p.stem}.created"] = rows(day1, p.name).height
    expected["sets.accepted"] = 1
    assert Counter(e["type"] for e in first) == expected
    assert all(e["tenant"] == "gamma" for e in first)

    site.upload_one_by_one("gamma", sorted(day2.iterdir()), pause=0.6)
    site.wait(lambda: len(site.decisions()) == 2, 60)
    second = cli_events(site, "gamma", after=first[-1]["id"])
    users1, users2 = rows(day1, "users.csv"), rows(day2, "users.csv")
    leaving = sorted(set(users1["sourcedId"]) - set(users2["sourcedId"]))
    enrollments1 = rows(day1, "enrollments.csv")
    gone_enrollments = enrollments1.filter(pl.col("userSourcedId").is_in(leaving)).height
    gone_demographics = rows(day1, "demographics.csv").filter(pl.col("sourcedId").is_in(leaving))
    assert Counter(e["type"] for e in second) == Counter(
        {
            "users.updated": 3,
            "users.created": 1,
            "enrollments.created": 1,
            "enrollments.deleted": gone_enrollments,
            "demographics.deleted": gone_demographics.height,
            "users.deleted": 2,
            "sets.accepted": 1,
        }
    )
    updated = [e["data"] for e in second if e["type"] == "users.updated"]
    assert all(set(u["previous_attributes"]) == {"email"} for u in updated)
    assert all(u["object"]["email"] == "new." + u["previous_attributes"]["email"] for u in updated)
    assert sorted(e["data"]["object"]["sourcedId"] for e in second
                  if e["type"] == "users.deleted") == leaving  # fmt: skip
    assert site.stop(proc) == 0


def test_a_zip_an_incomplete_set_and_an_invalid_one(site: Site, tmp_path: Path):
    (site.root / "tenants.d" / "gamma.toml").write_text(
        (site.root / "tenants.d" / "alpha.toml").read_text().replace('"alpha"', '"gamma"')
    )
    site.write_config(settle=0.5, incomplete_after=2)
    generate(tmp_path / "zipped.zip", students=30, seed=31, as_zip=True)
    missing = tmp_path / "missing"
    generate(missing, students=30, seed=32)
    (missing / "users.csv").unlink()
    good, bad = tmp_path / "good", tmp_path / "bad"
    generate(good, students=30, seed=33)
    generate(bad, students=30, seed=33)
    users = (bad / "users.csv").read_text().splitlines()
    (bad / "users.csv").write_text("\n".join([users[0].replace("role,", "rôle,"), *users[1:]]))
    proc = site.start()

    site.upload_files("alpha", [tmp_path / "zipped.zip"])  # a zip is a set by itself
    site.upload("beta", missing)  # six of seven: waits, then says what is missing
    site.upload("gamma", good)
    site.wait(lambda: {(d["tenant"], k) for k, d in site.decisions()}
              >= {("alpha", "sets.accepted"), ("gamma", "sets.accepted")}, 60)  # fmt: skip
    with EventStore.open(site.state) as store:
        snapshot = store.snapshot_of("gamma")
    site.upload("gamma", bad)
    site.wait(lambda: ("gamma", "sets.rejected") in {(d["tenant"], k) for k, d in site.decisions()})
    site.wait(lambda: site.events("sets.incomplete") != [], 30)

    (notice,) = [json.loads(e[5]) for e in site.events("sets.incomplete")]
    assert notice["tenant"] == "beta" and notice["missing"] == ["users"]
    assert [k for k, d in site.decisions() if d["tenant"] == "beta"] == ["sets.incomplete"]
    assert {p.name for p in (site.state / "inbox" / "beta").iterdir()} == {
        p.name for p in missing.iterdir()
    }
    with EventStore.open(site.state) as store:
        assert store.snapshot_of("gamma") == snapshot  # the rejected set changed nothing
        rejected = store.list_sets(tenant="gamma", status="rejected")[0]
    report = json.loads(Path(rejected.report_path).read_text())
    assert report["verdict"] == "rejected"
    assert any(i["file"] == "users.csv" for i in report["issues"] if i["severity"] == "error")
    zipped = zipfile.ZipFile(tmp_path / "zipped.zip").namelist()
    alpha_raw = site.state / "sets" / "alpha"
    assert [p.name for d in alpha_raw.iterdir() if d.is_dir() for p in (d / "raw").iterdir()] \
        == ["zipped.zip"] and zipped  # fmt: skip

    site.upload("gamma", good)  # still serving: the good set again is a duplicate of the current
    site.wait(lambda: len(site.cli("sets", "--tenant", "gamma").stdout.splitlines()) == 4)
    assert "duplicate" in site.cli("sets", "--tenant", "gamma", "--limit", "1").stdout
    assert site.stop(proc) == 0
