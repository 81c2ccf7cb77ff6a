"""The one episode loop: any decision-maker (:class:`~safectrl.common.protocol.DecisionMaker`) through an env.

Evaluation, studies and online training all run :func:`run_episode`; training passes its exploring
decision-maker and an ``on_step`` callback that learns from each transition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from safectrl.common.protocol import DecisionMaker

#: ``on_step(obs, action, reward, next_obs, terminated, truncated, info)``, called after every env step.
StepCallback = Callable[[np.ndarray, np.ndarray, float, np.ndarray, bool, bool, dict[str, Any]], None]


@dataclass
class Episode:
    """One closed-loop episode, arrays over intervals (``observations`` has one row more)."""

    seed: int | None  # the decision-maker's seed (and the env's, unless it continued its stream)
    observations: np.ndarray  # (n+1, n_obs)
    actions: np.ndarray  # (n, n_act), as returned by the policy (before any env clipping)
    rewards: np.ndarray  # (n,)
    terminations: np.ndarray  # (n,)
    truncations: np.ndarray  # (n,)
    infos: dict[str, np.ndarray]  # each (n+1, ...): the reset info first, then one per step
    decision_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) s per act() call
    step_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) s per act + env step + on_step

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def failed(self) -> bool:
        return bool(self.infos["failure"][-1]) if "failure" in self.infos else bool(self.terminations[-1])


def run_episode(env: gym.Env, policy: DecisionMaker, seed: int | None, options: dict[str, Any] | None = None,
                *, on_step: StepCallback | None = None, reseed_env: bool = True) -> Episode:
    """Reset ``env`` and ``policy`` with ``seed`` and run until the episode ends.

    Args:
        env: the env (reset first, then the policy).
        policy: the decision-maker; ``act`` is called once per interval.
        seed: the policy's seed, and the env's when ``reseed_env``.
        options: the env's reset options.
        on_step: called after every env step with the transition (e.g. a learner's update).
        reseed_env: False resets the env without a seed, so that it continues its random stream (training
            over many episodes draws its initial states from one stream).
    """
    obs, info = env.reset(seed=seed if reseed_env else None, options=options)
    policy.reset(seed=seed)
    observations, actions, rewards, terms, truncs, times, step_times = [obs], [], [], [], [], [], []
    infos: dict[str, list] = {k: [v] for k, v in info.items()}
    done = False
    while not done:
        t0 = time.perf_counter()
        action = np.asarray(policy.act(obs), dtype=float)
        times.append(time.perf_counter() - t0)
        next_obs, reward, term, trunc, info = env.step(action)
        if on_step is not None:
            on_step(obs, action, reward, next_obs, term, trunc, info)
        step_times.append(time.perf_counter() - t0)
        obs = next_obs
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
        step_time=np.asarray(step_times),
    )
