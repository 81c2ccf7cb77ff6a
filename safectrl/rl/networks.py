"""The networks of every agent (BC, IQL, SAC, RL-ACR): one MLP, two actors, twin Q critics, a value network.

Every network works in normalised coordinates: observations standardised by the dataset's statistics
(:mod:`safectrl.rl.offline_data`) or mapped onto [-1, 1] by the observation box (:class:`BoxScaler`),
actions in [-1, 1]. Hidden layers are ReLU MLPs (256-256 by default: the IQL authors', CORL's and Tian et
al.'s setting).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
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


class BoxScaler:
    """Affine map of a ``gym.spaces.Box`` onto [-1, 1]^n (finite bounds required)."""

    def __init__(self, space: gym.spaces.Box) -> None:
        low, high = np.asarray(space.low, dtype=float), np.asarray(space.high, dtype=float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(f"the box needs finite bounds with high > low, got {low} .. {high}")
        self.low, self.high = low, high
        self.center = torch.tensor((high + low) / 2, dtype=torch.float32)
        self.half = torch.tensor((high - low) / 2, dtype=torch.float32)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.half

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.half + self.center


class DeterministicActor(nn.Module):
    """Deterministic policy ``obs (batch, obs_dim) -> action (batch, act_dim)`` in [-1, 1] (tanh output).

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


class TanhGaussianActor(nn.Module):
    """SAC's policy: a Gaussian squashed by tanh, actions in [-1, 1]^act_dim.

    The trunk is the MLP of all hidden layers (ReLU after the last too); the mean and the log standard
    deviation are linear heads on it, the latter mapped smoothly into [log_std_min, log_std_max] (CleanRL's
    choice).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], log_std_min: float,
                 log_std_max: float) -> None:
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden])
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log standard deviation before squashing, each (batch, act_dim)."""
        h = F.relu(self.trunk(obs))
        span = self.log_std_max - self.log_std_min
        log_std = self.log_std_min + 0.5 * span * (torch.tanh(self.log_std(h)) + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample: action (batch, act_dim) in [-1, 1], its log-density (batch,), the mean action."""
        mean, log_std = self(obs)
        normal = torch.distributions.Normal(mean, log_std.exp())
        pre = normal.rsample()
        act = torch.tanh(pre)
        # change of variables of the tanh squashing; 1e-6 keeps the log finite at the bounds
        log_prob = (normal.log_prob(pre) - torch.log(1 - act.pow(2) + 1e-6)).sum(-1)
        return act, log_prob, torch.tanh(mean)


class QNetwork(nn.Module):
    """``Q(obs, action)``: (batch, obs_dim), (batch, act_dim) -> (batch,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([obs_dim + act_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class TwinQ(nn.Module):
    """Two independent Q networks; :meth:`min_q` is the pessimistic estimate (targets, advantages, actor loss)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.q1 = QNetwork(obs_dim, act_dim, hidden)
        self.q2 = QNetwork(obs_dim, act_dim, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, action), self.q2(obs, action)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self(obs, action))


class ValueNetwork(nn.Module):
    """``V(obs)``: (batch, obs_dim) -> (batch,)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def regression_loss(actor: DeterministicActor, obs: torch.Tensor, action: torch.Tensor,
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
