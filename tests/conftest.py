"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
EDFI_SAMPLE = SHARED / "samples" / "edfi-oneroster-1.1"


@pytest.fixture
def edfi_sample() -> Path:
    """The Ed-Fi OneRoster 1.1 sample set (real data written by someone else)."""
    if not EDFI_SAMPLE.is_dir():
        pytest.skip(f"{EDFI_SAMPLE} is not there")
    return EDFI_SAMPLE
