"""Shared test fixtures."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_era5_dir() -> Path:
    """The ERA5 Rhine sample shipped as package data (works against an installed wheel too)."""
    path = Path(str(resources.files("scigpt.sample_data") / "era5_rhine_2020-01-01"))
    assert path.is_dir(), f"shipped sample folder missing: {path}"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared real sample data (../shared/data, see its PROVENANCE.md)."""
    path = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared sample data not found at {path}")
    return path
