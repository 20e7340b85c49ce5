"""Paths to the optional shared data sets; tests using them skip with a clear reason when absent."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("SIAMESE_INDEX_SHARED", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (only developers and CI have ../shared/data)")
    return path
