"""Networks shared by the offline agents (BC, IQL): a deterministic actor, twin Q critics, a value network.

Every network works in normalised coordinates: observations standardised with the dataset's mean and std,
actions scaled to [-1, 1] (:mod:`safectrl.rl.offline_data`). Hidden layers are ReLU MLPs (256-256 by
default, the IQL authors' and CORL's setting).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"an MLP needs at least an input and an output width, all >= 1; got {list(sizes)}")
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy ``obs (batch, n_obs) -> action (batch, n_act)`` in [-1, 1] (tanh output).

    IQL's policy extraction is advantage-weighted regression; with a Gaussian of state-independent
    variance (the IQL authors' policy, evaluated at its mean) its log-likelihood reduces to a weighted
    squared error on the mean, which is what this actor is trained with. BC is the same regression with
    unit weights, so the two agents differ only in the weights.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class QNetwork(nn.Module):
    """``Q(obs, action)``: (batch, n_obs), (batch, n_act) -> (batch,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([obs_dim + act_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class TwinQ(nn.Module):
    """Two independent Q networks; :meth:`min` is the pessimistic estimate used for targets and advantages."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.q1 = QNetwork(obs_dim, act_dim, hidden)
        self.q2 = QNetwork(obs_dim, act_dim, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, action), self.q2(obs, action)

    def min(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self(obs, action))


class ValueNetwork(nn.Module):
    """``V(obs)``: (batch, n_obs) -> (batch,)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def regression_loss(actor: Actor, obs: torch.Tensor, action: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``weight * ||actor(obs) - action||²`` (unit weights: behaviour cloning)."""
    squared_error = ((actor(obs) - action) ** 2).sum(dim=-1)
    if weight is not None:
        squared_error = weight * squared_error
    return squared_error.mean()


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded with ``seed``, and restore it afterwards.

    Layer initialisation draws from the global generator; building networks inside this block makes
    them a function of ``seed`` alone without disturbing anyone else's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cosine_adam(net: nn.Module, lr: float, steps: int
                ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Adam on ``net``'s parameters with a learning rate that decays from ``lr`` to 0 over ``steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
