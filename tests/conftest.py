"""Fixtures shared by every test package. Tiny, deterministic, CPU-only; files live in pytest's tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill import prepare
from distill.config import PrepareConfig

# ---------------------------------------------------------------------------------------------- data

SYNTHETIC_USERS = 60
SYNTHETIC_ITEMS = 40


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory prepared from the synthetic generator (seed 0). Read it; never modify it."""
    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare.run(
        PrepareConfig(
            synthetic=True, num_users=SYNTHETIC_USERS, num_items=SYNTHETIC_ITEMS, seed=0, output=str(out)
        )
    )
    return out
