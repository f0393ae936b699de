"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder with real MNIST / Fashion-MNIST raw files (``../shared/data`` next to the repo,
    or ``$IMPRESS_SHARED_DATA``); skips the test when it is absent."""
    root = Path(os.environ.get("IMPRESS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set IMPRESS_SHARED_DATA to a folder holding "
                    "MNIST/raw and FashionMNIST/raw)")
    return root
