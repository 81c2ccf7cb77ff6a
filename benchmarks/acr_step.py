"""Time per RL-ACR training step on each task, split into the MPC solve, the learning updates and the rest.

Run: ``python benchmarks/acr_step.py [steps]``. For every env, RL-ACR (with its NMPC regulariser on the
estimated model) trains on the actual plant for ``steps`` steps after the 256 warm-up steps (so every
measured step includes a SAC update and a focus update). Printed per env: seconds per training step, steps
per second, the MPC's and the updates' shares, and the ratio to the same agent's step without the MPC
solve (a zero prior, measured in the same run), and the updates' floating-point work: the matrix products of
one step's SAC and focus updates counted by torch (``MFLOP``, the mean over a critic step with and one
without the actor's steps), the rate the measured update time makes of them (``GFLOP/s``), and their
``floor``: the seconds per step the updates alone would take if every product ran at the rate torch gets
on one 256 x 256 x 256 float32 product timed in this process (``roofline.py``). One torch thread, as in the
study's workers. Tian et al.
report 0.0235, 0.0667, 0.0378 and 0.0206 s per step (Glucose, BiGlucose, CSTR, CartPole) on a laptop with
a GPU.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import safectrl  # noqa: F401
from safectrl.controllers.acr_mpc import REGULARISERS
from safectrl.rl.acr import RLACR

from roofline import counted_flops, matmul_gflops

PAPER = {"safectrl/Glucose-v0": 0.0235, "safectrl/BiGlucose-v0": 0.0667, "safectrl/KlattEngellCSTR-v0": 0.0378,
         "safectrl/CartPoleContinuous-v0": 0.0206}


class TimedPrior:
    """Wraps a prior and adds up the wall time of its ``act`` calls."""

    def __init__(self, prior) -> None:
        self.prior = prior
        self.seconds = 0.0
        self.calls = 0

    def reset(self, seed=None) -> None:
        self.prior.reset(seed)

    def act(self, obs):
        t0 = time.perf_counter()
        a = self.prior.act(obs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return a


class ZeroPrior:
    """A prior that costs nothing: isolates the MPC's share of a step."""

    def __init__(self, act_dim: int) -> None:
        self.a = np.zeros(act_dim)

    def reset(self, seed=None) -> None:
        pass

    def act(self, obs):
        return self.a.copy()


def time_steps(env: gym.Env, agent: RLACR, steps: int) -> tuple[float, float, float, float]:
    """(s per step, s per update, s per prior action) over ``steps`` steps once learning has started, and
    the matrix-product FLOPs per step of the updates, counted over ``policy_frequency`` further steps (not
    timed), so that the actor's steps, taken every ``policy_frequency``-th critic step, count by their
    share."""
    obs, _ = env.reset(seed=0)
    agent.begin_episode(0)
    t_update, measured, t_start, prior_start = 0.0, 0, 0.0, 0.0
    total = agent.sac.config.learning_starts + steps
    for k in range(total):
        if k == agent.sac.config.learning_starts:
            t_start, prior_start = time.perf_counter(), agent.prior.seconds
        a = agent.explore(obs)
        next_obs, r, term, trunc, _ = env.step(a)
        t0 = time.perf_counter()
        agent.observe(obs, a, r, next_obs, term)
        if k >= agent.sac.config.learning_starts:
            t_update += time.perf_counter() - t0
            measured += 1
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()
            agent.begin_episode(k)
    elapsed = time.perf_counter() - t_start
    flops, counted = 0, agent.sac.config.policy_frequency
    for _ in range(counted):
        a = agent.explore(obs)
        next_obs, r, term, trunc, _ = env.step(a)
        flops += counted_flops(lambda: agent.observe(obs, a, r, next_obs, term))  # noqa: B023 (called here)
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()
            agent.begin_episode(total)
    prior = (agent.prior.seconds - prior_start) / measured
    return elapsed / measured, t_update / measured, prior, flops / counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="?", type=int, default=300,
                        help="measured training steps per env, after the 256 warm-up steps (default 300)")
    steps = parser.parse_args().steps
    if steps < 1:
        parser.error(f"steps must be >= 1, got {steps}")
    torch.set_num_threads(1)
    rate = matmul_gflops()
    print(f"{'env':32s} {'s/step':>8s} {'steps/s':>8s} {'MPC':>6s} {'updates':>8s} {'vs no MPC':>9s} "
          f"{'paper s/step':>12s} {'MFLOP':>6s} {'GFLOP/s':>7s} {'floor':>7s}")
    floors = []
    for env_id, build in REGULARISERS.items():
        env = gym.make(env_id).unwrapped
        prior = TimedPrior(build())
        agent = RLACR(env.observation_space, env.action_space, prior, seed=0)
        full, update, mpc, flops = time_steps(env, agent, steps)
        free = TimedPrior(ZeroPrior(env.action_space.shape[0]))
        bare, _, _, _ = time_steps(env, RLACR(env.observation_space, env.action_space, free, seed=0), steps)
        floors.append(flops / (rate * 1e9))
        print(f"{env_id:32s} {full:8.4f} {1 / full:8.1f} {mpc / full:6.0%} {update / full:8.0%} "
              f"{full / bare:8.1f}x {PAPER[env_id]:12.4f} {flops / 1e6:6.0f} {flops / update / 1e9:7.1f} "
              f"{floors[-1]:7.4f}")
    print(f"\none float32 product of two 256 x 256 matrices here: {rate:.1f} GFLOP/s; the updates' floor, "
          f"mean over the tasks: {np.mean(floors):.4f} s per step")


if __name__ == "__main__":
    main()
