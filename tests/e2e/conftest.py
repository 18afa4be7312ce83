"""The e2e tests' site: a state dir, a config, two tenants with a key, a notify socket; every
daemon it started is killed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.site import Site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    s = Site(root)
    try:
        yield s
    finally:
        s.close()
