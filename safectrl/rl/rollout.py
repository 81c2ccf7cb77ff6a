"""Run any decision-maker with the common interface (``reset(seed=None)``, ``act(obs)``) through an env."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np


class Policy(Protocol):
    """What every controller and agent in safectrl implements."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


@dataclass
class Episode:
    """One closed-loop episode, arrays over intervals (``observations`` has one row more)."""

    seed: int
    observations: np.ndarray  # (n+1, n_obs)
    actions: np.ndarray  # (n, n_act), as returned by the policy (before any env clipping)
    rewards: np.ndarray  # (n,)
    terminations: np.ndarray  # (n,)
    truncations: np.ndarray  # (n,)
    infos: dict[str, np.ndarray]  # each (n+1, ...): the reset info first, then one per step
    decision_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) s per act() call

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def failed(self) -> bool:
        return bool(self.infos["failure"][-1]) if "failure" in self.infos else bool(self.terminations[-1])


def run_episode(env: gym.Env, policy: Policy, seed: int, options: dict[str, Any] | None = None) -> Episode:
    """Reset ``env`` and ``policy`` with ``seed`` and run until the episode ends."""
    obs, info = env.reset(seed=seed, options=options)
    policy.reset(seed=seed)
    observations, actions, rewards, terms, truncs, times = [obs], [], [], [], [], []
    infos: dict[str, list] = {k: [v] for k, v in info.items()}
    done = False
    while not done:
        t0 = time.perf_counter()
        action = np.asarray(policy.act(obs), dtype=float)
        times.append(time.perf_counter() - t0)
        obs, reward, term, trunc, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(term)
        truncs.append(trunc)
        for k, v in info.items():
            infos.setdefault(k, []).append(v)
        done = term or trunc
    return Episode(
        seed=seed,
        observations=np.asarray(observations),
        actions=np.asarray(actions),
        rewards=np.asarray(rewards, dtype=float),
        terminations=np.asarray(terms, dtype=bool),
        truncations=np.asarray(truncs, dtype=bool),
        infos={k: np.asarray(v) for k, v in infos.items()},
        decision_time=np.asarray(times),
    )
