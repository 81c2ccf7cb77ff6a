"""The networks of every agent (BC, IQL, SAC, RL-ACR): one MLP, two actors, twin Q critics, a value network.

Every network works in normalised coordinates: observations standardised by the dataset's statistics
(:mod:`safectrl.rl.offline_data`) or mapped onto [-1, 1] by the observation box (:class:`BoxScaler`),
actions in [-1, 1]. Hidden layers are ReLU MLPs (256-256 by default: the IQL authors', CORL's and Tian et
al.'s setting).

Precision (each agent's config, ``precision``): ``"float32"`` everywhere, or ``"bfloat16"``, mixed precision
for the updates only: inside :func:`precision_context` the layers between two hidden layers multiply in
bfloat16 (oneDNN accumulates in float32), while every network's first layer (the observation and the
action) and its output layers stay float32, as do the losses, the gradients' accumulation into the float32
weights and Adam. Acting is always float32. Why and what it measured: ``docs/decisions.md#training-speed``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


PRECISIONS = ("float32", "bfloat16")


#: CPU flags (``/proc/cpuinfo``) of bfloat16 arithmetic in hardware: x86's AVX512_BF16 and AMX, Arm's BF16.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bfloat16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bfloat16 in hardware (one of :data:`BF16_FLAGS` among its flags); None
    where ``cpuinfo`` cannot be read (not Linux). Without it oneDNN emulates bfloat16, slower than float32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.lower().startswith(("flags", "features"))
             for f in line.split(":", 1)[-1].split()}
    return any(f in flags for f in BF16_FLAGS)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` (else a ValueError naming them), with a warning when it
    is bfloat16 and the CPU has no bfloat16 hardware, or cannot tell. The agents' configs call it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    native = native_bfloat16() if precision == "bfloat16" else True
    if native is not True:
        why = "has none of the flags " + ", ".join(BF16_FLAGS) if native is False else "cannot be asked"
        warnings.warn(f"precision='bfloat16' asked for, but this CPU {why}: oneDNN emulates bfloat16, slower "
                      "than float32 (a 256x256 matmul measured 1.3-1.4x slower without AVX512_BF16, 29x on "
                      "AVX2 alone); use precision='float32' here", RuntimeWarning, stacklevel=4)
    return precision


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """The context an agent's updates run in: CPU autocast to bfloat16 for ``"bfloat16"``, else nothing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()


def _in_float32(function, *args: torch.Tensor) -> torch.Tensor:
    """``function(*args)`` in float32, also inside an autocast region (its tensors cast up first)."""
    if not torch.is_autocast_enabled("cpu"):
        return function(*args)
    with torch.autocast("cpu", enabled=False):
        return function(*(a.float() for a in args))


class Float32Linear(nn.Linear):
    """``nn.Linear`` (the same parameters and state-dict keys) that stays float32 under autocast: the layers
    that read the observation or give a network's output (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_float32(super().forward, x)


def mlp(sizes: Sequence[int], output: bool = True) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last).

    The first layer, and the last if ``output`` (False: the last layer feeds further layers, as a trunk's),
    are :class:`Float32Linear`.
    """
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"an MLP needs at least an input and an output width, all >= 1; got {list(sizes)}")
    layers: list[nn.Module] = []
    last = len(sizes) - 2
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append((Float32Linear if k == 0 or (output and k == last) else nn.Linear)(n_in, n_out))
        if k < last:
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
        self.trunk = mlp([obs_dim, *hidden], output=False)
        self.mean = Float32Linear(hidden[-1], act_dim)
        self.log_std = Float32Linear(hidden[-1], act_dim)
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


class TwinQ(nn.Module):
    """Two independent Q networks run as one ensemble: ``(batch, obs_dim), (batch, act_dim) -> (2, batch)``.

    Layer k of both members is one batched matmul, ``h_k = h_{k-1} @ weights[k] + biases[k]`` with
    ``weights[k]`` (2, n_in, n_out) and ``biases[k]`` (2, 1, n_out), ReLU between the layers: the same
    function as two separate ReLU MLPs ``[obs_dim + act_dim, *hidden, 1]``, with half the operator calls.
    The first and the last layer stay float32 under autocast, as :func:`mlp`'s.
    Member j's layers are initialised as ``nn.Linear`` layers of their sizes, drawn member by member, so a
    seed gives the weights two MLPs built one after the other would have had. :meth:`min_q` is the
    pessimistic estimate (targets, advantages, actor loss).
    """

    members = 2

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, 1]
        if min(sizes) < 1:
            raise ValueError(f"a Q network needs widths >= 1, got {sizes}")
        shapes = list(zip(sizes[:-1], sizes[1:]))
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(self.members, n_in, n_out))
                                        for n_in, n_out in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(self.members, 1, n_out))
                                       for _, n_out in shapes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each member's layers drawn as ``nn.Linear`` draws them (from torch's global generator)."""
        for j in range(self.members):
            for weight, bias in zip(self.weights, self.biases):
                layer = nn.Linear(weight.shape[1], weight.shape[2])
                weight[j].copy_(layer.weight.T)
                bias[j, 0].copy_(layer.bias)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Both members' Q values, (2, batch)."""
        x = torch.cat([obs, action], dim=-1)
        h = x.expand(self.members, *x.shape)  # a view: both members read the same input
        last = len(self.weights) - 1
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if k == 0 or k == last:
                h = _in_float32(torch.baddbmm, bias, h, weight)
            else:
                h = torch.baddbmm(bias, h, weight)
            if k < last:
                h = torch.relu(h)
        return h.squeeze(-1)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The smaller of the two Q values, (batch,)."""
        q = self(obs, action)
        return torch.minimum(q[0], q[1])

    @staticmethod
    def state_from_separate(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This module's state from one of the layout before the ensemble (two MLPs, ``q1.net.<i>.weight``).

        That layout held ``q1`` and ``q2``, each an :func:`mlp` (Linear layers at even indices, weights
        (n_out, n_in)); its tensors are transposed and stacked here, the values unchanged.

        Raises:
            ValueError: ``state`` is not exactly the tensors of two such MLPs of the same shapes.
        """
        n_layers = len(state) // 4
        expected = {f"q{j}.net.{2 * k}.{part}"
                    for j in (1, 2) for k in range(n_layers) for part in ("weight", "bias")}
        if n_layers == 0 or set(state) != expected:
            raise ValueError(f"not the state of two separate Q networks: {sorted(state)[:6]}")
        weights, biases = [], []
        for k in range(n_layers):
            w1, w2 = state[f"q1.net.{2 * k}.weight"], state[f"q2.net.{2 * k}.weight"]
            b1, b2 = state[f"q1.net.{2 * k}.bias"], state[f"q2.net.{2 * k}.bias"]
            if w1.ndim != 2 or w1.shape != w2.shape or b1.shape != b2.shape or b1.shape != w1.shape[:1]:
                raise ValueError(f"layer {k} of the two Q networks has weights {tuple(w1.shape)}, "
                                 f"{tuple(w2.shape)} and biases {tuple(b1.shape)}, {tuple(b2.shape)}")
            if k > 0 and w1.shape[1] != weights[-1].shape[2]:
                raise ValueError(f"layer {k} of the Q networks takes {w1.shape[1]} inputs, layer {k - 1} "
                                 f"gives {weights[-1].shape[2]}")
            weights.append(torch.stack([w1.T, w2.T]).contiguous())
            biases.append(torch.stack([b1, b2]).unsqueeze(1).contiguous())
        return {**{f"weights.{k}": w for k, w in enumerate(weights)},
                **{f"biases.{k}": b for k, b in enumerate(biases)}}


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


def adam(net: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam on ``net``'s parameters with torch's fused kernel: one call per step, not ~10 per parameter."""
    return torch.optim.Adam(net.parameters(), lr=lr, fused=True)


def cosine_adam(net: nn.Module, lr: float, steps: int
                ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """:func:`adam` on ``net``'s parameters with a learning rate that decays from ``lr`` to 0 over ``steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = adam(net, lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
