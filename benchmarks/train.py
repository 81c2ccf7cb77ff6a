"""Training speed of the offline agents: gradient steps per second for BC and IQL on this machine.

Run: ``python benchmarks/train.py [--steps 300] [--threads 1 2]``. Uses the startup PI dataset (generated
if missing, 100 episodes, seed 0) and the default configs (256-256 MLPs, batch 256). Each agent is timed
beside the previous implementation, built here: IQL's critics as two separate ``nn.Linear`` MLPs run one
after the other instead of the batched ensemble, and every optimiser as Adam's per-parameter loop instead
of the fused kernel; the update methods are the package's. Beside both, the default config with
``precision="bfloat16"`` (the square hidden layers multiply in bfloat16, ``safectrl.rl.networks``), whose
column is its rate and its ratio to the default's. Rates are the best of three timed blocks after a
warm-up, the implementations' blocks taken in turn, so a busy machine shows as lower rates for all, not as
a ratio of noise. Then the default's floating-point work: the matrix products of one update counted by
torch (``MFLOP``), the rate that makes at the measured steps/s (``GFLOP/s``), and the ``ceiling``: the
steps/s this machine would reach if every product ran at the rate torch gets on one 256 x 256 x 256
float32 product timed here with the same threads (``roofline.py``; that rate is printed per thread count).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import torch
from torch import nn

from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.bc import BC
from safectrl.rl.iql import IQL, IQLConfig, learning_rewards
from safectrl.rl.networks import mlp, seeded_init
from safectrl.rl.offline_data import Normalisation, OfflineData
from safectrl.rl.training import AGENTS, make_agent
from safectrl.studies import datasets

from roofline import counted_flops, matmul_gflops


class SeparateTwinQ(nn.Module):
    """The critic before the ensemble: two ReLU MLPs, called one after the other; TwinQ's interface."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.q1 = mlp([obs_dim + act_dim, *hidden, 1])
        self.q2 = mlp([obs_dim + act_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.minimum(self.q1(x).squeeze(-1), self.q2(x).squeeze(-1))


def loop_adam(net: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam as the package made it before: torch's CPU default, one loop of ~10 operations per parameter."""
    return torch.optim.Adam(net.parameters(), lr=lr, foreach=False)


def previous(agent: BC | IQL) -> BC | IQL:
    """``agent`` rebuilt as the previous implementation (module docstring); same sizes and learning rates."""
    config = agent.config
    if isinstance(agent, IQL):
        obs_dim, act_dim = agent.actor.net[0].in_features, agent.actor.net[-1].out_features
        with seeded_init(0):
            agent.critic = SeparateTwinQ(obs_dim, act_dim, config.hidden)
        agent.critic_target = copy.deepcopy(agent.critic).requires_grad_(False)
        agent.critic_optimizer = loop_adam(agent.critic, config.critic_lr)
        agent.value_optimizer = loop_adam(agent.value, config.critic_lr)
    agent.actor_optimizer = loop_adam(agent.actor, config.actor_lr if isinstance(agent, IQL) else config.lr)
    agent.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(agent.actor_optimizer, config.steps)
    return agent


def steps_per_second(agents: list[BC | IQL], offline: OfflineData, steps: int) -> list[float]:
    """Best rate of three blocks of ``steps`` updates per agent, the agents' blocks in turn."""
    generator = torch.Generator().manual_seed(0)
    batch_size = agents[0].config.batch_size
    for agent in agents:
        for _ in range(20):
            agent.update(offline.sample(batch_size, generator))
    best = [float("inf")] * len(agents)
    for _ in range(3):
        for k, agent in enumerate(agents):
            t0 = time.perf_counter()
            for _ in range(steps):
                agent.update(offline.sample(batch_size, generator))
            best[k] = min(best[k], time.perf_counter() - t0)
    return [steps / b for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per timed block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    args = parser.parse_args()
    ds_id = datasets.generate_dataset("startup", 100, 0, progress=True)
    t = data.load_transitions(ds_id)
    norm = Normalisation.from_data(t.obs, pc.U_LOW, pc.U_HIGH)
    offline = OfflineData.from_transitions(t, norm, learning_rewards(t, IQLConfig())[0])
    obs_dim, act_dim = offline.normalisation.net_obs_dim, offline.normalisation.act_dim
    print(f"dataset {ds_id}: {len(t)} transitions, {t.obs.shape[1]} observations, {t.action.shape[1]} actions")
    print(f"torch {torch.__version__}, CPU\n")
    print(f"{'algo':5} {'threads':>7} {'steps/s':>8} {'previous':>8} {'speed-up':>8} {'bfloat16':>15} "
          f"{'MFLOP':>6} {'GFLOP/s':>7} {'ceiling':>7} {'batch':>5}  default steps -> minutes (bfloat16)  "
          f"parameters")
    generator = torch.Generator().manual_seed(1)
    product_rate = {}
    for algo in AGENTS:
        config = AGENTS[algo][1]()
        for threads in args.threads:
            torch.set_num_threads(threads)
            if threads not in product_rate:
                product_rate[threads] = matmul_gflops()
            agent = make_agent(algo, obs_dim, act_dim, seed=0)
            mixed = make_agent(algo, obs_dim, act_dim, replace(config, precision="bfloat16"), seed=0)
            rate, before, rate16 = steps_per_second(
                [agent, previous(make_agent(algo, obs_dim, act_dim, seed=0)), mixed], offline, args.steps)
            sizes = {name: sum(p.numel() for p in net.parameters()) for name, net in agent.networks().items()}
            params = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
            minutes, minutes16 = config.steps / rate / 60, config.steps / rate16 / 60
            batch = offline.sample(config.batch_size, generator)
            flops = counted_flops(lambda: agent.update(batch))  # noqa: B023 (called here)
            ceiling = product_rate[threads] * 1e9 / flops
            print(f"{algo:5} {threads:7d} {rate:8.0f} {before:8.0f} {rate / before:7.2f}x "
                  f"{rate16:6.0f} ({rate16 / rate:4.2f}x) {flops / 1e6:6.0f} {rate * flops / 1e9:7.1f} "
                  f"{ceiling:7.0f} {config.batch_size:5d}  {config.steps:>8} -> "
                  f"{minutes:5.1f} min ({minutes16:4.1f})  {params}")
    print(f"\nhidden layers {AGENTS['iql'][1]().hidden} (ReLU); one IQL step updates V, both Q networks, "
          f"the targets and the actor; one BC step the actor only. previous: two separate critic MLPs and "
          f"Adam's per-parameter loop.")
    rates = ", ".join(f"{n} thread{'s' * (n > 1)} {r:.1f} GFLOP/s" for n, r in product_rate.items())
    print(f"one float32 product of two 256 x 256 matrices here: {rates}")


if __name__ == "__main__":
    main()
