"""Training speed of the offline agents: gradient steps per second for BC and IQL on this machine.

Run: ``python benchmarks/train.py [--steps 300] [--threads 1 2]``. Uses the startup PI dataset (generated
if missing, 100 episodes, seed 0) and the default configs (256-256 MLPs, batch 256). Rates are the best
of three timed blocks after a warm-up, so a busy machine shows as a lower rate, not as noise.
"""

from __future__ import annotations

import argparse
import time

import torch

from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.iql import IQLConfig, learning_rewards
from safectrl.rl.offline_data import Normalisation, OfflineData
from safectrl.rl.training import AGENTS, make_agent
from safectrl.studies import datasets


def steps_per_second(algo: str, offline: OfflineData, steps: int) -> tuple[float, dict[str, int]]:
    agent = make_agent(algo, offline.normalisation.net_obs_dim, offline.normalisation.act_dim, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch_size = agent.config.batch_size
    for _ in range(20):
        agent.update(offline.sample(batch_size, generator))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            agent.update(offline.sample(batch_size, generator))
        best = min(best, time.perf_counter() - t0)
    sizes = {name: sum(p.numel() for p in net.parameters()) for name, net in agent.networks().items()}
    return steps / best, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per timed block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    args = parser.parse_args()
    ds_id = datasets.generate_dataset("startup", 100, 0, progress=True)
    t = data.load_transitions(ds_id)
    norm = Normalisation.from_data(t.obs, pc.U_LOW, pc.U_HIGH)
    offline = OfflineData.from_transitions(t, norm, learning_rewards(t, IQLConfig())[0])
    print(f"dataset {ds_id}: {len(t)} transitions, {t.obs.shape[1]} observations, {t.action.shape[1]} actions")
    print(f"torch {torch.__version__}, CPU\n")
    print(f"{'algo':5} {'threads':>7} {'steps/s':>8} {'batch':>5}  default steps -> minutes  parameters")
    for algo in AGENTS:
        config = AGENTS[algo][1]()
        for threads in args.threads:
            torch.set_num_threads(threads)
            rate, sizes = steps_per_second(algo, offline, args.steps)
            params = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
            print(f"{algo:5} {threads:7d} {rate:8.0f} {config.batch_size:5d}  {config.steps:>8} -> "
                  f"{config.steps / rate / 60:5.1f} min  {params}")
    print(f"\nhidden layers {AGENTS['iql'][1]().hidden} (ReLU); one IQL step updates V, both Q networks, "
          f"the targets and the actor; one BC step the actor only.")


if __name__ == "__main__":
    main()
