"""How fast RL-ACR's focus leaves the MPC, after our pretraining and after the authors'.

Run: ``python benchmarks/acr_focus.py [seeds]``. Both pretrainings fit beta = 0.999 on observations uniform
over the box until the MSE is below 1e-8 (the paper's criterion):

* ours (``RLACRConfig()``): the output bias starts at logit(0.999), so the criterion holds at once;
* the authors' code (``RLACRConfig(**AUTHORS_FOCUS_PRETRAINING)``): the output bias starts at 0 and Adam
  (lr 1e-5, batches of 512) fits the whole network, ~7e4 steps.

Then each network takes the focus update's Adam steps (lr 5e-6) under a constant push towards the RL action
(every state's dQ/dbeta negative: what RL-ACR's focus sees while the critics prefer the RL action, as the
``q_gap`` log showed on the reactor), on batches of states from one small region of the box. Printed per
seed and observation/action size: pretraining steps and the update steps until the batch's mean beta falls
below 0.99, 0.9, 0.5 and 0.1; then the ratio ours / authors' of the steps to 0.5 (> 1: ours leaves the MPC
later). One torch thread.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from safectrl.rl.acr import AUTHORS_FOCUS_PRETRAINING, FocusNetwork, RLACRConfig, pretrain_focus
from safectrl.rl.networks import BoxScaler

THRESHOLDS = (0.99, 0.9, 0.5, 0.1)
SHAPES = {"CSTR (4 obs, 2 actions)": (4, 2), "Glucose (3 obs, 1 action)": (3, 1)}


def steps_to_leave(focus: FocusNetwork, cfg: RLACRConfig, seed: int, max_steps: int = 60_000) -> dict[float, int]:
    """Adam steps (the focus update's rate) that push beta down until its batch mean is below each threshold."""
    gen = torch.Generator().manual_seed(1000 + seed)
    opt = torch.optim.Adam(focus.parameters(), lr=cfg.focus_lr)
    obs_dim = focus.net[0].in_features
    centre = 2 * torch.rand(1, obs_dim, generator=gen) - 1  # normalised observations: the box is [-1, 1]
    reached: dict[float, int] = {}
    for step in range(1, max_steps + 1):
        beta = focus(centre + 0.05 * torch.randn(256, obs_dim, generator=gen)).mean()
        for thr in THRESHOLDS:
            if thr not in reached and beta.item() < thr:
                reached[thr] = step
        if len(reached) == len(THRESHOLDS):
            break
        opt.zero_grad()
        beta.backward()  # descending mean beta = ascending min-Q when the critics prefer the RL action
        opt.step()
    return reached


def main(seeds: int = 3) -> None:
    torch.set_num_threads(1)
    configs = {"ours": RLACRConfig(), "authors'": RLACRConfig(**AUTHORS_FOCUS_PRETRAINING)}
    print(f"{'shape':28s} {'seed':>4s} {'pretraining':12s} {'steps':>7s} {'s':>5s}  "
          + "  ".join(f"to {t:<5g}" for t in THRESHOLDS))
    for label, (obs_dim, act_dim) in SHAPES.items():
        ratios = []
        for seed in range(seeds):
            half = {}
            for name, cfg in configs.items():
                torch.manual_seed(seed)
                focus = FocusNetwork(obs_dim, act_dim, cfg.focus_hidden)
                scaler = BoxScaler(gym.spaces.Box(-1.0, 1.0, (obs_dim,)))
                t0 = time.perf_counter()
                steps, _ = pretrain_focus(focus, scaler, cfg, torch.Generator().manual_seed(seed + 1))
                elapsed = time.perf_counter() - t0
                reached = steps_to_leave(focus, cfg, seed)
                half[name] = reached.get(0.5, np.nan)
                print(f"{label:28s} {seed:>4d} {name:12s} {steps:>7d} {elapsed:>5.0f}  "
                      + "  ".join(f"{reached.get(t, '-'):>8}" for t in THRESHOLDS), flush=True)
            ratios.append(half["ours"] / half["authors'"])
        print(f"{label}: steps to beta < 0.5, ours / authors' = {np.mean(ratios):.2f} "
              f"(seeds: {', '.join(f'{r:.2f}' for r in ratios)})\n", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="?", type=int, default=3, help="seeds per size (default 3)")
    seeds = parser.parse_args().seeds
    if seeds < 1:
        parser.error(f"seeds must be >= 1, got {seeds}")
    main(seeds)
