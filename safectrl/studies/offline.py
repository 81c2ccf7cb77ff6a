"""Offline RL on the PI datasets: datasets -> training -> checkpoint folder, and closed-loop evaluation.

Training (:func:`train_policy`) generates or reuses the Minari PI datasets of the chosen scenarios, fits
BC or IQL on them, and writes a checkpoint folder (:mod:`safectrl.rl.checkpoint`) with the loss curves
as ``losses.csv`` and ``losses.png``. One scenario gives a policy for that scenario; several give one
pooled policy (the observation carries the setpoint through e_P = P_sp - P, so one network can serve all).

Evaluation (:func:`compare`) runs every policy, the nominal PI and two of the dataset's own PI tunings
(its median and its best episode, re-run) on the same evaluation seeds, disjoint from the data seeds.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import safectrl
from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.pi import NOMINAL_TUNING, PIController, PITuning
from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.bc import BCConfig
from safectrl.rl.checkpoint import save_policy
from safectrl.rl.iql import IQLConfig, learning_rewards
from safectrl.rl.networks import PRECISIONS
from safectrl.rl.offline_data import Normalisation, OfflineData
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.rl.training import AGENTS, make_agent, train
from safectrl.studies import datasets, plots, report, runfolder
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics, metric_names

#: Loss curves are written as means over this many blocks of steps (fewer if there are fewer steps).
LOSS_POINTS = 500


def default_out_dir(algo: str, scenarios: Sequence[str], seed: int) -> Path:
    name = scenarios[0] if len(scenarios) == 1 else "pooled"
    return Path("runs") / f"{algo}-{name}-s{seed}"


def train_policy(
    algo: str,
    scenarios: Sequence[str],
    steps: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    episodes: int = 100,
    dataset_seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    config: BCConfig | IQLConfig | None = None,
) -> Path:
    """Train ``algo`` ("bc" | "iql") on the PI datasets of ``scenarios`` and write its checkpoint folder.

    Args:
        algo: "bc" or "iql".
        scenarios: one scenario (a policy for it) or several (one pooled policy).
        steps: gradient steps (None: the config's default).
        seed: training seed (initial weights and minibatches).
        out: checkpoint folder (default ``runs/<algo>-<scenario|pooled>-s<seed>``).
        episodes: episodes per dataset; dataset_seed: which dataset; root: Minari folder.
        progress: progress bars.
        config: hyperparameters, a :class:`BCConfig` or :class:`IQLConfig` (None: the defaults); ``steps``
            overrides its ``steps``.

    Returns:
        The checkpoint folder (``model.safetensors``, ``config.json``, ``losses.csv``, ``losses.png``).
    """
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(AGENTS)}")
    scenarios = list(dict.fromkeys(scenarios))
    if not scenarios:
        raise ValueError("no scenario given")
    for s in scenarios:
        pc.get_scenario(s)
    ids = [datasets.generate_dataset(s, episodes, dataset_seed, root=root, progress=progress) for s in scenarios]
    transitions = data.load_transitions(ids, root)
    config = AGENTS[algo][1]() if config is None else config
    if not isinstance(config, AGENTS[algo][1]):
        raise TypeError(f"{algo} needs a {AGENTS[algo][1].__name__}, got {type(config).__name__}")
    if steps is not None:
        config = replace(config, steps=steps)
    unknown = [name for name in config.observed if name not in pc.OBSERVATIONS]
    if unknown:
        raise ValueError(f"{algo} config observes {unknown}, not in the observation {list(pc.OBSERVATIONS)}")
    reward, reward_scale = (transitions.reward, None) if algo == "bc" else learning_rewards(transitions, config)
    normalisation = Normalisation.from_data(transitions.obs, pc.U_LOW, pc.U_HIGH,
                                            [pc.OBSERVATIONS.index(name) for name in config.observed])
    offline = OfflineData.from_transitions(transitions, normalisation, reward)
    agent = make_agent(algo, normalisation.net_obs_dim, normalisation.act_dim, config, seed)
    t0 = time.perf_counter()
    history = train(agent, offline, seed, progress=progress)
    seconds = time.perf_counter() - t0
    folder = Path(out) if out is not None else default_out_dir(algo, scenarios, seed)
    save_policy(folder, agent, normalisation, record={
        "scenarios": scenarios,
        "datasets": ids,
        "dataset_episodes": episodes,
        "dataset_seed": dataset_seed,
        "transitions": len(transitions),
        "seed": seed,
        "reward_scale": reward_scale,
        "observations": list(pc.OBSERVATIONS),
        "observed": list(config.observed),
        "inputs": list(pc.INPUTS),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "safectrl": safectrl.__version__,
        "torch": torch.__version__,
    })
    steps_logged, curves = _block_means(history, LOSS_POINTS)
    _write_loss_csv(folder / "losses.csv", steps_logged, curves)
    plots.loss_figure(steps_logged, curves, folder / "losses.png",
                      title=f"{algo.upper()} on {' + '.join(scenarios)}, seed {seed}")
    return folder


def _block_means(history: dict[str, np.ndarray], points: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Means of each curve over ``points`` consecutive blocks, and the last step of each block."""
    n = len(next(iter(history.values())))
    edges = np.linspace(0, n, min(points, n) + 1).astype(int)
    return edges[1:], {k: np.add.reduceat(v, edges[:-1]) / np.diff(edges) for k, v in history.items()}


def _write_loss_csv(path: Path, steps: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", *curves])
        for k, step in enumerate(steps):
            writer.writerow([int(step), *(f"{c[k]:.6g}" for c in curves.values())])


def evaluate(policy: DecisionMaker, scenario: str, seeds: Sequence[int]) -> list[Episode]:
    """Closed-loop episodes of ``policy`` on the nominal plant of ``scenario``, one per seed."""
    env = TaskEnv(pc.TASK, scenario=scenario)
    return [run_episode(env, policy, s) for s in seeds]


def dataset_tunings(scenario: str, episodes: int = 100, dataset_seed: int = 0,
                    root: str | os.PathLike | None = None) -> dict[str, PITuning]:
    """The PI tunings of the dataset's median-cost and lowest-cost episodes (ranked on the data seeds)."""
    ds_id = datasets.generate_dataset(scenario, episodes, dataset_seed, root=root)
    eps = data.load_episodes(ds_id, root)
    meta = data.episode_metadata(data.load_dataset(ds_id, root))
    order = np.argsort([-ep.rewards.sum() for ep in eps], kind="stable")
    fields = NOMINAL_TUNING.as_dict()
    pick = {"PI dataset median": order[len(order) // 2], "PI dataset best": order[0]}
    return {label: PITuning(**{k: float(meta[i][k]) for k in fields}) for label, i in pick.items()}


def compare(
    policies: dict[str, DecisionMaker],
    scenario: str,
    seeds: Sequence[int],
    baselines: bool = True,
    episodes: int = 100,
    dataset_seed: int = 0,
    root: str | os.PathLike | None = None,
) -> dict[str, list[Episode]]:
    """Episodes of every policy (and, with ``baselines``, of the nominal and dataset PI) on ``seeds``."""
    controllers: dict[str, DecisionMaker] = dict(policies)
    if baselines:
        controllers["PI nominal"] = PIController(NOMINAL_TUNING)
        for label, tuning in dataset_tunings(scenario, episodes, dataset_seed, root).items():
            controllers[label] = PIController(tuning)
    return {label: evaluate(ctrl, scenario, seeds) for label, ctrl in controllers.items()}


def metrics_of(results: dict[str, list[Episode]]) -> dict[str, list[EpisodeMetrics]]:
    return {label: [episode_metrics(ep) for ep in eps] for label, eps in results.items()}


def policy_label(path: str | os.PathLike, record: dict, merge_seeds: bool, taken: Sequence[str] = ()) -> str:
    """Table label of a checkpoint: its folder name (the whole path if that name is taken), or with
    ``merge_seeds`` "<ALGO> <scenario|pooled>", shared by every training seed of the same setting."""
    if merge_seeds:
        scenarios = record.get("scenarios", [])
        return f"{str(record.get('algo', '?')).upper()} {scenarios[0] if len(scenarios) == 1 else 'pooled'}"
    p = Path(path)
    folder = p.parent if p.is_file() else p
    return folder.name if folder.name not in taken else str(folder)


def evaluation_report(
    policy_paths: Sequence[str | os.PathLike],
    scenarios: Sequence[str] | None,
    seeds: Sequence[int],
    baselines: bool = False,
    merge_seeds: bool = False,
    out: str | os.PathLike | None = None,
    episodes: int = 100,
    dataset_seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = True,
) -> str:
    """Evaluate checkpoints (and optionally the PI baselines) and return the summary table (markdown).

    Args:
        policy_paths: checkpoint folders.
        scenarios: where to evaluate; None: every scenario each policy was trained on.
        seeds: evaluation seeds.
        baselines: add the nominal PI and the dataset's median and best PI tunings.
        merge_seeds: one row per algorithm and training set, pooling the episodes of all its training seeds.
        out: if given, also write ``episodes.csv``, ``summary.md`` and ``trajectories.png`` there.
        episodes, dataset_seed, root: the dataset whose tunings are the baselines.
        progress: a progress bar over scenarios.
    """
    from tqdm.auto import tqdm

    from safectrl.rl.checkpoint import load_policy

    groups: dict[str, list[DecisionMaker]] = {}
    trained_on: dict[str, list[str]] = {}
    for path in policy_paths:
        policy = load_policy(path)
        label = policy_label(path, policy.info, merge_seeds, list(groups))
        groups.setdefault(label, []).append(policy)
        trained_on[label] = list(policy.info.get("scenarios", pc.SCENARIOS))
    wanted = list(scenarios) if scenarios else list(dict.fromkeys(s for v in trained_on.values() for s in v))
    if not wanted:
        raise ValueError("nothing to evaluate: give a policy or a scenario")
    results: dict[str, dict[str, list[EpisodeMetrics]]] = {}
    records = []
    panels: dict[str, list[plots.Trace]] = {}
    for scenario in tqdm(wanted, desc="evaluate", disable=not progress):
        eps: dict[str, list[Episode]] = {}
        for label, group in groups.items():
            if scenarios or scenario in trained_on[label]:
                runs = [(policy.info.get("seed"), evaluate(policy, scenario, seeds)) for policy in group]
                eps[label] = [ep for _, run in runs for ep in run]
                records += [(scenario, label, train_seed, ep) for train_seed, run in runs for ep in run]
        if baselines:
            base = compare({}, scenario, seeds, True, episodes, dataset_seed, root)
            eps.update(base)
            records += [(scenario, label, None, ep) for label, run in base.items() for ep in run]
        results[scenario] = metrics_of(eps)
        panels[scenario] = [plots.Trace(v[0], k, color=f"C{i}") for i, (k, v) in enumerate(eps.items())]
    reference = "PI nominal" if baselines else None
    rows = [r for scenario, by in results.items() for r in report.controller_rows(scenario, by, reference)]
    table = report.markdown_table(report.summary_headers(reference or "reference"), rows)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "episodes.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["scenario", "controller", "train_seed", "seed", *metric_names()])
            for scenario, label, train_seed, ep in records:
                writer.writerow([scenario, label, train_seed, ep.seed, *episode_metrics(ep).as_dict().values()])
        kind = "Tuning" if min(seeds) >= data.TUNING_SEED_OFFSET else "Evaluation"
        (folder / "summary.md").write_text(
            f"# Offline RL evaluation\n\n{kind} seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per controller and "
            f"training seed). Cost is -sum of rewards over 100 h; final offsets are means over the last 10 h."
            f"\n\n{table}\n\n![trajectories](trajectories.png)\n")
        plots.trajectory_figure(panels, folder / "trajectories.png",
                                title=f"first {kind.lower()} seed ({seeds[0]}), first training seed")
    return table


# -- the study's configs, as the command line and scripts give them ---------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """``safectrl train``: one BC or IQL policy on the PI dataset(s)."""

    algo: str = field(metadata={"choices": tuple(AGENTS)})  # the offline RL algorithm
    # dataset to train on; pooled: one policy on all three
    scenario: str = field(default="startup", metadata={"choices": (*pc.SCENARIOS, "pooled")})
    steps: int | None = field(default=None, metadata={"min": 1})  # gradient steps (default: the algorithm config's)
    seed: int = field(default=0, metadata={"min": 0})  # training seed
    out: str | None = None  # checkpoint folder (default runs/ALGO-SCENARIO-sSEED)
    episodes: int = field(default=100, metadata={"min": 1})  # episodes per PI dataset
    dataset_seed: int = field(default=0, metadata={"min": 0})  # PI dataset seed
    root: str | None = None  # datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)
    threads: int = field(default=1, metadata={"min": 1})  # torch CPU threads
    # arithmetic of the updates: float32, or bfloat16 between the hidden layers (mixed precision)
    precision: str = field(default="float32", metadata={"choices": PRECISIONS})


def run_train(config: TrainConfig) -> Path:
    """Train the policy of ``config``; its checkpoint folder (``config.json`` is the checkpoint's)."""
    torch.set_num_threads(config.threads)
    scenarios = list(pc.SCENARIOS) if config.scenario == "pooled" else [config.scenario]
    agent_config = AGENTS[config.algo][1](precision=config.precision)
    return train_policy(config.algo, scenarios, steps=config.steps, seed=config.seed, out=config.out,
                        episodes=config.episodes, dataset_seed=config.dataset_seed, root=config.root,
                        config=agent_config)


@dataclass(frozen=True)
class EvaluateConfig:
    """``safectrl evaluate``: checkpoints in closed loop, optionally against the PI baselines."""

    # checkpoint folder; repeat to compare several
    policy: tuple[str, ...] = field(metadata={"repeat": True, "metavar": "PATH"})
    # where to evaluate (default: the scenarios each policy was trained on)
    scenario: str | None = field(default=None, metadata={"choices": (*pc.SCENARIOS, "all")})
    seeds: int = field(default=10, metadata={"min": 1})  # evaluation episodes, seeds 0..N-1
    # run on the tuning seeds 500000.. instead, for choices made while developing (evaluation seeds are kept
    # for the final report)
    tuning: bool = False
    baselines: bool = False  # add the nominal PI and the dataset's median and best PI tunings
    merge_seeds: bool = False  # one row per algorithm and training set, pooling the episodes of all training seeds
    out: str | None = None  # also write config.json, episodes.csv, summary.md, trajectories.png here
    episodes: int = field(default=100, metadata={"min": 1})  # episodes per PI dataset
    dataset_seed: int = field(default=0, metadata={"min": 0})  # PI dataset seed
    root: str | None = None  # datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)
    threads: int = field(default=1, metadata={"min": 1})  # torch CPU threads


def run_evaluate(config: EvaluateConfig) -> tuple[str, list[int]]:
    """The summary table of ``config`` and the seeds it ran on; with ``out``, its folder gets ``config.json``."""
    torch.set_num_threads(config.threads)
    scenarios = (None if config.scenario is None else list(pc.SCENARIOS) if config.scenario == "all"
                 else [config.scenario])
    seeds = data.tuning_seeds(config.seeds) if config.tuning else data.evaluation_seeds(config.seeds)
    missing = [p for p in config.policy if not Path(p).is_dir()]
    if missing:
        raise FileNotFoundError(f"--policy {missing[0]}: no such checkpoint folder (`safectrl train` writes one)")

    def report_to(out: str | None) -> str:
        return evaluation_report(config.policy, scenarios, seeds, baselines=config.baselines,
                                 merge_seeds=config.merge_seeds, out=out, episodes=config.episodes,
                                 dataset_seed=config.dataset_seed, root=config.root)

    if not config.out:
        return report_to(None), seeds
    with runfolder.single_run(config.out, "offline-evaluate",
                              runfolder.record(config, seeds=seeds, safectrl=safectrl.__version__)):
        return report_to(config.out), seeds
