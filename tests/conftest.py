"""Shared fixtures. Every test runs with its own Minari folder so no dataset leaks between tests."""

from __future__ import annotations

import numpy as np
import pytest

import safectrl  # noqa: F401  (registers the environments)
from safectrl.models import polycstr as pc


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def nominal_params() -> pc.PolyCSTRParams:
    return pc.PolyCSTRParams()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
