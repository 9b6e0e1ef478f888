"""Shared fixtures for venue adapter tests: the recorded data of ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The recorded venue data folder; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"recorded venue data not available at {SHARED_DATA}")
    return SHARED_DATA
