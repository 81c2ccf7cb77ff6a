"""Shared fixtures. Every test runs with its own Minari folder so no dataset leaks between tests."""

from __future__ import annotations

import numpy as np
import pytest

import safectrl  # noqa: F401  (registers the environments)
from safectrl.models import polycstr as pc


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks on a shared machine: one thread is faster than contended ones (as in the workers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def reactor_points(rng):
    """``draw(n) -> (x (n, 5), u (n, 2))``: random reactor states and inputs over and around the operating region."""
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.column_stack([rng.uniform(0, 600, n), rng.uniform(0, 15, n), rng.uniform(0, 5e-6, n),
                             rng.uniform(0, 200, n), rng.uniform(320, 400, n)])
        u = np.column_stack([rng.uniform(0, 2.5, n), rng.uniform(300, 350, n)])
        return x, u

    return draw



@pytest.fixture
def separate_q_mlps():
    """``make(obs_dim, act_dim, hidden)``: the critic layout before :class:`TwinQ` was one ensemble, two
    separate ReLU MLPs, their state named ``q1.net.<i>.*`` and ``q2.net.<i>.*`` as its checkpoints hold it."""
    from torch import nn

    from safectrl.rl.networks import mlp

    def make(obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> nn.ModuleDict:
        sizes = [obs_dim + act_dim, *hidden, 1]
        return nn.ModuleDict({f"q{j}": nn.ModuleDict({"net": mlp(sizes)}) for j in (1, 2)})

    return make
