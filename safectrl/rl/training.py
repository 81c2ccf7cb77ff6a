"""The offline training loop shared by every agent: seeded minibatches, one update per step, loss history."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from safectrl.rl.bc import BC, BCConfig
from safectrl.rl.iql import IQL, IQLConfig
from safectrl.rl.offline_data import OfflineData

AGENTS: dict[str, tuple[type, type]] = {"bc": (BC, BCConfig), "iql": (IQL, IQLConfig)}


def _streams(seed: int) -> tuple[int, int]:
    """Independent seeds for the initial weights and for the minibatch draws, both from ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    init, sampling = np.random.SeedSequence(seed).generate_state(2)
    return int(init), int(sampling)


def make_agent(algo: str, obs_dim: int, act_dim: int, config: Any = None, seed: int = 0) -> BC | IQL:
    """A fresh agent, ``algo`` "bc" or "iql", its weights a function of ``seed``; ``config`` None: defaults."""
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(AGENTS)}")
    agent_type, config_type = AGENTS[algo]
    config = config_type() if config is None else config
    if not isinstance(config, config_type):
        raise TypeError(f"{algo} needs a {config_type.__name__}, got {type(config).__name__}")
    return agent_type(obs_dim, act_dim, config, seed=_streams(seed)[0])


def train(agent: BC | IQL, data: OfflineData, seed: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """Run ``agent.config.steps`` updates on minibatches of ``data``; returns each loss per step.

    Same agent seed, same data and same ``seed``: the same weights, on CPU, bit for bit.

    Raises:
        FloatingPointError: a loss became NaN or infinite (the step is named).
    """
    steps, batch_size = agent.config.steps, agent.config.batch_size
    generator = torch.Generator().manual_seed(_streams(seed)[1])
    history: dict[str, np.ndarray] = {}
    bar = tqdm(range(steps), desc=f"train {agent.algo}", disable=not progress, mininterval=1.0, unit="step")
    for step in bar:
        losses = agent.update(data.sample(batch_size, generator))
        for name, value in losses.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"{agent.algo} {name} became {value} at step {step}")
            history.setdefault(name, np.empty(steps))[step] = value
        if progress and step % 500 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
    return history
