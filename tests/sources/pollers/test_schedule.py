"""When REST tenants are pulled: every/at schedules with jitter."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from ingestd.config import TenantConfig
from ingestd.sources.pollers.schedule import DAY, next_run


def tenant(**kw: object) -> TenantConfig:
    return TenantConfig(id="d", source="clever", token_file="t", **kw)


def test_every_counts_from_the_last_pull_plus_jitter():
    rng = random.Random(1)
    t = tenant(every="6h", jitter=60)
    now = 1_000_000.0
    at = next_run(t, now - 3600, now, rng)
    assert now - 3600 + 6 * 3600 <= at <= now - 3600 + 6 * 3600 + 60


def test_never_pulled_runs_soon_and_overdue_runs_now():
    rng = random.Random(2)
    now = 1_000_000.0
    assert now <= next_run(tenant(every="6h"), None, now, rng) <= now + 5
    assert next_run(tenant(every="6h", jitter=0), now - 7 * 3600, now, rng) == now


def test_default_is_daily():
    rng = random.Random(3)
    now = 1_000_000.0
    assert next_run(tenant(jitter=0), now - 100, now, rng) == now - 100 + DAY


def test_at_is_the_next_local_time_of_day():
    rng = random.Random(4)
    t = tenant(at="02:30", jitter=0)
    morning = datetime(2026, 11, 29, 1, 0).timestamp()
    assert datetime.fromtimestamp(next_run(t, None, morning, rng)) == datetime(2026, 11, 29, 2, 30)
    noon = datetime(2026, 11, 29, 12, 0).timestamp()
    expected = datetime(2026, 11, 29, 2, 30) + timedelta(days=1)
    assert datetime.fromtimestamp(next_run(t, None, noon, rng)) == expected
    just_pulled = datetime(2026, 11, 29, 2, 30, 10).timestamp()  # not twice the same night
    assert datetime.fromtimestamp(next_run(t, just_pulled, just_pulled, rng)) == expected
