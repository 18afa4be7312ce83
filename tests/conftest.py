"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# A copy of ../shared/samples/edfi-oneroster-1.1 (Apache-2.0, Ed-Fi Alliance; see
# tests/data/README.md), kept byte for byte so the tests do not depend on shared/.
EDFI_SAMPLE = Path(__file__).resolve().parent / "data" / "edfi-oneroster-1.1"


@pytest.fixture
def edfi_sample() -> Path:
    """The Ed-Fi OneRoster 1.1 sample set (real data written by someone else)."""
    return EDFI_SAMPLE
