"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The recorded venue data of ``../shared/data``; tests using it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"recorded venue data not available at {SHARED_DATA}")
    return SHARED_DATA
