"""The RL-ACR study (``safectrl study acr``): RL-ACR, SAC, SAC-pt and the MPC regulariser trained and run
on the *actual* plants of the four tasks of Tian et al. (NeurIPS 2024) and on the polymerisation CSTR.

For every environment and seed (each a task for the executor, stored as soon as it finishes):

* **RL-ACR** trains on the actual plant for ``episodes`` episodes, regularised by the NMPC on the estimated
  model (:mod:`safectrl.controllers.acr_mpc`; the reactor's: the mismatched NMPC of
  :mod:`safectrl.controllers.polycstr_nmpc`);
* **SAC** trains from scratch on the actual plant for ``episodes`` episodes;
* **SAC-pt** first trains ``pretrain_episodes`` episodes on the estimated model as a simulator (failures there
  are free), then ``episodes`` episodes on the actual plant with the same networks and a fresh buffer;
* **MPC** runs one episode on the actual plant (the regulariser alone);
* **SAC+PSF** and **RL-ACR+PSF** train like SAC and RL-ACR, but every exploring action (RL-ACR's: the combined
  action) passes the predictive safety filter of :mod:`safectrl.safety.psf` on the estimated model before it
  reaches the actual plant; the replay buffer and the critics learn on the filtered action. The filter's
  statistics (interventions, fallbacks, rejected plans, ...) are logged per training episode.

After training, RL-ACR, SAC and SAC-pt run one evaluation episode on the actual plant without exploration
(the actor's mean); SAC+PSF and RL-ACR+PSF run it behind their filter (the method as deployed) and once more
without it (``eval_unfiltered_*``). Outputs: failures in the first training episodes (mean ± std over seeds)
beside the paper's Table 1, the filter's interventions, per-step-normalised return curves, final returns
beside the authors' validation runs, and the wall time per training step (acting incl. the MPC solve, env
step, updates).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import safectrl
from safectrl.common import validation
from safectrl.common.protocol import DecisionMaker
from safectrl.models.registry import get_task
from safectrl.rl.acr import RLACR, RLACRConfig
from safectrl.rl.env import TaskEnv
from safectrl.rl.resume import TrainingCheckpoint
from safectrl.rl.rollout import run_episode
from safectrl.rl.sac import SAC, EpisodeLog, ReplayBuffer, Shield, normalised_return, train
from safectrl.studies import report, runfolder
from safectrl.studies.executor import (
    CONNECT_TIMEOUT,
    ResultStore,
    Task,
    make_executor,
    run_tasks,
    task_state_dir,
)

POLYCSTR = "safectrl/PolyCSTR-v0"
ENV_LABELS = {
    "safectrl/Glucose-v0": "Glucose",
    "safectrl/BiGlucose-v0": "BiGlucose",
    "safectrl/KlattEngellCSTR-v0": "CSTR",
    "safectrl/CartPoleContinuous-v0": "CartPole",
    POLYCSTR: "PolyCSTR",
}
METHODS = ("RL-ACR", "SAC", "SAC-pt", "MPC", "SAC+PSF", "RL-ACR+PSF")
#: The methods that train behind the predictive safety filter, and the method each one filters.
FILTERED = {"SAC+PSF": "SAC", "RL-ACR+PSF": "RL-ACR"}
#: The methods that train (the others run one episode).
TRAINED = ("RL-ACR", "SAC", "SAC-pt", "SAC+PSF", "RL-ACR+PSF")
#: The filter's per-episode statistics in the results (:meth:`PredictiveSafetyFilter.episode_report`).
SHIELD_PREFIX = "shield_"
#: The kind recorded in this study's run folders (:mod:`safectrl.studies.runfolder`).
KIND = "acr"

#: Tian et al., Table 1: failures in the first 100 training episodes, mean (std) over 5 seeds.
PAPER_FAILURES = {
    "RL-ACR": {"Glucose": (0.0, 0.0), "BiGlucose": (0.0, 0.0), "CSTR": (0.0, 0.0), "CartPole": (0.0, 0.0)},
    "MPC": {"Glucose": (0.0, 0.0), "BiGlucose": (0.0, 0.0), "CSTR": (0.0, 0.0), "CartPole": (0.0, 0.0)},
    "SAC": {"Glucose": (19.0, 15.2), "BiGlucose": (59.4, 31.1), "CSTR": (99.2, 0.7), "CartPole": (93.6, 7.3)},
    "SAC-pt": {"Glucose": (10.2, 3.5), "BiGlucose": (14.4, 3.4), "CSTR": (7.4, 1.6), "CartPole": (9.8, 2.2)},
}
#: Tian et al.'s validation runs (their code's notebooks): per-step return on the actual plant.
PAPER_RETURNS = {
    "RL-ACR": {"Glucose": -1.37, "BiGlucose": -3.59, "CSTR": -0.098, "CartPole": -0.27},
    "SAC": {"Glucose": -1.51, "BiGlucose": -7.43, "CSTR": -1.74, "CartPole": -0.24},
    "MPC": {"Glucose": -4.55, "BiGlucose": -7.61, "CSTR": -8.78, "CartPole": -1.54},
}


@dataclass(frozen=True)
class ACRPreset:
    """Size of an RL-ACR study run."""

    name: str
    seeds: int  # independent runs per environment and method
    episodes: int  # training episodes on the actual plant
    pretrain_episodes: int  # SAC-pt's episodes on the estimated model
    envs: tuple[str, ...]  # environment ids
    failure_window: int = 100  # failures are counted in the first this-many training episodes
    # the methods run (a subset of METHODS); not part of the run folder's fingerprint: it chooses tasks,
    # each task's key names its method, so a finished run resumes with methods added
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        validation.positive_int("seeds", self.seeds)
        validation.positive_int("episodes", self.episodes)
        validation.integer("pretrain_episodes", self.pretrain_episodes, low=0)
        validation.names("envs", self.envs)
        validation.positive_int("failure_window", self.failure_window)
        object.__setattr__(self, "methods", validation.names("methods", self.methods))
        if not self.methods:
            raise ValueError("methods must name at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; valid methods: {', '.join(METHODS)}")
        # the table rows follow METHODS, whatever order the preset lists them in
        object.__setattr__(self, "methods", tuple(m for m in METHODS if m in self.methods))


PRESETS = {
    "quick": ACRPreset("quick", seeds=3, episodes=3, pretrain_episodes=3,
                       envs=("safectrl/CartPoleContinuous-v0", "safectrl/KlattEngellCSTR-v0"),
                       methods=("RL-ACR", "SAC", "SAC-pt", "MPC")),
    "full": ACRPreset("full", seeds=5, episodes=100, pretrain_episodes=100, envs=tuple(ENV_LABELS)),
}


# -- building blocks (run inside the workers) ---------------------------------------------------------


#: Which of a task's plants RL-ACR trains on ("actual") and which is the regulariser's model ("estimated"):
#: Tian et al.'s tasks as they define them; the reactor's study runs on the nominal reactor, estimated by the
#: mismatched model (UA -20 %, dH +10 %).
ACR_PLANTS = {POLYCSTR: {"actual": "nominal", "estimated": "mismatch"}}
_TASK_PLANTS = {"actual": "actual", "estimated": "nominal"}


def plant_params(env_id: str, plant: str) -> Any:
    """The parameters of ``env_id``'s ``"actual"`` plant or its ``"estimated"`` model in this study."""
    return get_task(env_id).plant(ACR_PLANTS.get(env_id, _TASK_PLANTS)[plant])


def make_env(env_id: str, plant: str) -> gym.Env:
    """The env of ``env_id`` on its ``"actual"`` plant or its ``"estimated"`` model."""
    return TaskEnv(env_id, plant=plant_params(env_id, plant))


def make_prior(env_id: str) -> Any:
    """The MPC regulariser of ``env_id`` on the estimated model: an NMPC that reads the observation through
    its observer and keeps its solve statistics over all episodes in ``stats``."""
    from safectrl.controllers.task_nmpc import nmpc_for

    return nmpc_for(env_id, plant_params(env_id, "estimated"))


def make_shield(env_id: str) -> Shield:
    """The predictive safety filter of ``env_id`` (its entry in :data:`safectrl.safety.psf.DEFAULTS`) around a
    decision-maker, predicting with the estimated model (the regulariser's: it knows nothing of the actual
    plant)."""
    from safectrl.safety.psf import DEFAULTS, PSFConfig, predictive_safety_filter

    estimated = plant_params(env_id, "estimated")
    config = DEFAULTS.get(env_id, PSFConfig())
    return lambda policy: predictive_safety_filter(policy, env_id, params=estimated, config=config)


def _evaluate(env: gym.Env, decider: DecisionMaker, seed: int) -> tuple[float, bool, int]:
    """One episode of ``decider`` from ``seed``; (normalised return, failed, length)."""
    ep = run_episode(env, decider, seed)
    failed = bool(ep.terminations[-1])  # a truncated episode did not fail
    return normalised_return(ep.rewards, failed), failed, ep.length


def _logs_to_result(logs: list[EpisodeLog]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "failed": np.array([lg.failed for lg in logs]),
        "length": np.array([lg.length for lg in logs]),
        "return": np.array([lg.return_ for lg in logs]),
        "normalised_return": np.array([lg.normalised_return for lg in logs]),
        "step_time": np.array([lg.step_time for lg in logs]),
    }
    for key in sorted({k for lg in logs for k in lg.extras}):
        out[key] = np.array([lg.extras.get(key, np.nan) for lg in logs])
    return out


#: Seconds between two saves of a training task's state (at most a minute of training lost when stopped).
STATE_INTERVAL = 60.0


def _training_state(folder: str | Path, env_id: str, method: str, seed: int, episodes: int,
                    pretrain_episodes: int, phase: str = "training") -> TrainingCheckpoint:
    """Where a task of :func:`run_method` keeps the state of its training (``phase``: "training", or SAC-pt's
    "pretraining"), named by all that decides it."""
    identity = f"{env_id}|{method}|seed={seed}|episodes={episodes}|pt={pretrain_episodes}|{phase}"
    return TrainingCheckpoint(Path(folder) / phase, identity, interval=STATE_INTERVAL)


def run_method(env_id: str, method: str, seed: int, episodes: int, pretrain_episodes: int,
               progress: bool = False, checkpoint: str | None = None) -> dict[str, Any]:
    """Train (or run) one method on one env with one seed; a flat dict of arrays and numbers.

    ``checkpoint``: a folder where the training keeps its state between episodes (at most a minute apart) and
    resumes from (:mod:`safectrl.rl.resume`); a task stopped midway then restarts where it was and ends with
    the result of a run that never stopped. ``resumed_at_episode`` in the result says where it restarted
    (0: from the start), ``wall_time`` counts this process only.
    """
    env = make_env(env_id, "actual")
    t0 = time.perf_counter()
    if method == "MPC":
        prior = make_prior(env_id)
        ret, failed, length = _evaluate(env, prior, seed)
        return {"eval_return": ret, "eval_failed": failed, "eval_length": length,
                "prior_failures": prior.stats.failures, "wall_time": time.perf_counter() - t0}
    label = f"{ENV_LABELS[env_id]} {method} seed {seed}"

    def state(phase: str) -> TrainingCheckpoint | None:
        if checkpoint is None:
            return None
        return _training_state(checkpoint, env_id, method, seed, episodes, pretrain_episodes, phase)

    result: dict[str, Any] = {}
    shield = make_shield(env_id) if method in FILTERED else None
    base = FILTERED.get(method, method)
    training = state("training")
    if base == "RL-ACR":
        prior = make_prior(env_id)
        agent = RLACR(env.observation_space, env.action_space, prior, RLACRConfig(), seed=seed)
        result["focus_pretrain_steps"] = agent.pretrain_steps
        logs = train(env, agent, episodes, seed, progress, label, shield=shield, checkpoint=training)
        # during training (the evaluation follows); from the episodes' logs, which a resumed run keeps
        result["prior_failures"] = int(sum(lg.extras["prior_failed_solves"] for lg in logs))
    elif base == "SAC":
        agent = SAC(env.observation_space, env.action_space, seed=seed)
        logs = train(env, agent, episodes, seed, progress, label, shield=shield, checkpoint=training)
    elif method == "SAC-pt":
        agent = SAC(env.observation_space, env.action_space, seed=seed)
        sim = make_env(env_id, "estimated")
        pre = train(sim, agent, pretrain_episodes, seed, progress, label + " (pretraining)",
                    checkpoint=state("pretraining"))
        result["pretrain_failures"] = int(sum(lg.failed for lg in pre))
        agent.buffer = ReplayBuffer(env.observation_space.shape[0], env.action_space.shape[0],
                                    agent.config.buffer_size)  # the actual plant's data only
        agent.steps, agent.pretrained = 0, True
        logs = train(env, agent, episodes, seed, progress, label, checkpoint=training)
    else:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if training is not None:  # where a stopped task restarted; unreadable states it could not use (warned)
        result.update(resumed_at_episode=training.resumed_at,
                      discarded_training_states=len(training.discarded))
    result.update(_logs_to_result(logs))
    if shield is not None:  # the method as deployed: the trained policy behind a fresh filter
        filtered = shield(agent)
        ret, failed, length = _evaluate(env, filtered, seed)
        result.update({f"eval_{SHIELD_PREFIX}{k}": float(v) for k, v in filtered.episode_report().items()})
        u_ret, u_failed, u_length = _evaluate(env, agent, seed)
        result.update(eval_unfiltered_return=u_ret, eval_unfiltered_failed=u_failed,
                      eval_unfiltered_length=u_length)
    else:
        ret, failed, length = _evaluate(env, agent, seed)
    result.update(eval_return=ret, eval_failed=failed, eval_length=length, wall_time=time.perf_counter() - t0)
    return result


# -- the study -------------------------------------------------------------------------------------------


def _key(env_id: str, method: str, seed: int, cfg: ACRPreset) -> str:
    """The task's key; a filtered method's names its filter's configuration, so that results of another
    filter (a changed :data:`safectrl.safety.psf.DEFAULTS` entry) are never read back as this one's."""
    key = f"acr|{env_id}|{method}|seed={seed}|episodes={cfg.episodes}|pt={cfg.pretrain_episodes}"
    return key + f"|psf={runfolder.psf_fingerprint(env_id)}" if method in FILTERED else key


def _cell(values: list[float], n_seeds: int) -> str:
    """mean ± std of the finished seeds; ``(n=k)`` when only k of the preset's seeds have finished."""
    if not values:
        return "-"
    return report.mean_std(values) + (f" (n={len(values)})" if len(values) < n_seeds else "")


def _finished(results: dict[str, dict[str, Any]], cfg: ACRPreset, env_id: str, method: str,
              seeds: list[int]) -> list[dict[str, Any]]:
    return [results[k] for k in (_key(env_id, method, s, cfg) for s in seeds) if k in results]


def _failures(r: dict[str, Any], method: str, window: int) -> float:
    return float(r["eval_failed"]) if method == "MPC" else float(np.sum(r["failed"][:window]))


def _summaries(cfg: ACRPreset, results: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, str]:
    """The summary's tables from the finished tasks in ``results`` (a missing task leaves its seed out of
    the cell, which then says how many seeds it has)."""
    window = min(cfg.episodes, cfg.failure_window)
    labels = [ENV_LABELS[e] for e in cfg.envs]
    n = len(seeds)
    fail_rows, seed_rows, ret_rows, time_rows = [], [], [], []
    for method in cfg.methods:
        fails, per_seed, rets = [], [], []
        for env_id in cfg.envs:
            res = _finished(results, cfg, env_id, method, seeds)
            fails.append(_cell([_failures(r, method, window) for r in res], n))
            per_seed.append(", ".join(
                f"{_failures(results[k], method, window):g}" if k in results else "-"
                for k in (_key(env_id, method, s, cfg) for s in seeds)))
            rets.append(_cell([float(r["eval_return"]) for r in res], n))
            if method == "RL-ACR" and res:
                step = np.concatenate([r["step_time"] for r in res])
                length = np.concatenate([r["length"] for r in res])
                prior = np.concatenate([r["prior_time"] for r in res])
                mean_step = float(np.sum(step * length) / np.sum(length))
                time_rows.append([ENV_LABELS[env_id], mean_step, float(np.sum(prior * length) / np.sum(length)),
                                  int(sum(r["prior_failures"] for r in res)), int(np.sum(length)), len(res)])
        paper_f = PAPER_FAILURES.get(method, {})
        paper_r = PAPER_RETURNS.get(method, {})
        fail_rows.append([method, *fails, *(f"{paper_f[lb][0]:g} ({paper_f[lb][1]:g})" if lb in paper_f else "-"
                                            for lb in labels)])
        seed_rows.append([method, *per_seed])
        ret_rows.append([method, *rets, *(f"{paper_r[lb]:g}" if lb in paper_r else "-" for lb in labels)])
    heads = [f"{lb} (ours)" for lb in labels] + [f"{lb} (paper)" for lb in labels]
    what = f"failures in the first {window} training episodes"
    # envs with a constraint below their failure set (the reactor's T > T_max): episodes that crossed it
    flagged = [e for e in cfg.envs
               if (acr := _finished(results, cfg, e, "RL-ACR", seeds)) and all("violations" in r for r in acr)]
    viol_rows = [[m, *(_cell([float(np.sum(r["violations"][:window] > 0))
                              for r in _finished(results, cfg, e, m, seeds) if "violations" in r], n)
                       for e in flagged)]
                 for m in cfg.methods if m in TRAINED]
    return {
        "filter": _filter_table(cfg, results, seeds, window),
        "violations": report.markdown_table(["method", *(ENV_LABELS[e] for e in flagged)], viol_rows)
        if flagged else "",
        "failures": report.markdown_table(["method", *heads], fail_rows),
        "failures_per_seed": report.markdown_table(
            ["method", *(f"{lb}, seeds {seeds[0]}-{seeds[-1]}" for lb in labels)], seed_rows),
        "failures_what": what,
        "returns": report.markdown_table(["method", *heads], ret_rows),
        "times": report.markdown_table(
            ["env", "s per training step (RL-ACR)", "s per MPC solve", "failed MPC solves", "steps", "seeds"],
            time_rows) if time_rows else "",
    }


def _filter_table(cfg: ACRPreset, results: dict[str, dict[str, Any]], seeds: list[int], window: int) -> str:
    """Per env and filtered method: the filter's work over the first ``window`` training episodes, summed over
    the finished seeds (steps, intervened and certified steps as shares of all steps, the mean change of each
    input in its physical units, fallbacks, rejected plans, soft plans), and the time per filtered decision
    and per training step."""
    rows = []
    for env_id in cfg.envs:
        for method in (m for m in cfg.methods if m in FILTERED):
            res = _finished(results, cfg, env_id, method, seeds)
            if not res:
                continue
            length = np.concatenate([r["length"][:window] for r in res]).astype(float)
            steps = float(np.sum(length))

            def share(key: str) -> float:  # a per-episode share, weighted by the episodes' steps
                return float(np.sum(np.concatenate([r[key][:window] for r in res]) * length) / steps)

            def total(key: str) -> int:
                return int(sum(np.sum(r[key][:window]) for r in res))

            p = SHIELD_PREFIX
            du = ", ".join(f"{name} {share(f'{p}mean_abs_du_{name}'):.3g}"
                           for name in get_task(env_id).model.inputs if f"{p}mean_abs_du_{name}" in res[0])
            rows.append([ENV_LABELS[env_id], method, len(res), int(steps), share(p + "interventions"),
                         share(p + "certified"), du, total(p + "fallbacks"), total(p + "rejected_plans"),
                         total(p + "soft"), 1e3 * share(p + "decision_time"), 1e3 * share("step_time")])
    if not rows:
        return ""
    return report.markdown_table(["env", "method", "seeds", "steps", "interventions (share of steps)",
                                  "certified (share)", "mean abs(u - a) per input (its units)", "fallbacks",
                                  "rejected plans", "soft plans", "ms per filtered decision",
                                  "ms per training step"], rows)


def _write_curves(cfg: ACRPreset, results: dict[str, dict[str, Any]], seeds: list[int], path: Path) -> None:
    """Per env: per-step return per training episode (mean and range over seeds) of RL-ACR, SAC and SAC-pt with
    the MPC's as a line; below, RL-ACR's mean focus weight per action (1: the MPC's action, 0: the actor's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(cfg.envs), figsize=(4.2 * len(cfg.envs), 6.2), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [1.6, 1]})
    for col, env_id in enumerate(cfg.envs):
        ax, ax_beta = axes[0, col], axes[1, col]
        top = -np.inf  # the highest value drawn (returns are costs here: all negative)
        for j, method in enumerate(TRAINED):
            if method not in cfg.methods:
                continue
            res = _finished(results, cfg, env_id, method, seeds)
            if not res:
                continue
            curves = np.array([r["normalised_return"] for r in res])
            mean = np.nanmean(curves, axis=0)
            x = np.arange(1, len(mean) + 1)
            label = method if len(res) == len(seeds) else f"{method} (n={len(res)})"
            ax.plot(x, mean, color=f"C{j}", label=label, zorder=3 - j)
            ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=f"C{j}", alpha=0.2)
            top = max(top, float(np.nanmax(curves)))
            if method == "RL-ACR":
                dims = sorted((k for k in res[0] if k.startswith("beta_")), key=lambda k: int(k.split("_")[1]))
                for d, k in enumerate(dims):
                    b = np.array([r[k] for r in res])
                    ax_beta.plot(x, b.mean(axis=0), color="C0", ls=("-", "--", ":", "-.")[d % 4],
                                 label=f"action {k.split('_')[1]}")
                    ax_beta.fill_between(x, b.min(axis=0), b.max(axis=0), color="C0", alpha=0.12)
        mpc = _finished(results, cfg, env_id, "MPC", seeds)
        if mpc:
            mpc_return = float(np.mean([r["eval_return"] for r in mpc]))
            ax.axhline(mpc_return, color="k", ls=":", lw=1.5, label="MPC", zorder=4)  # RL-ACR starts on it
            top = max(top, mpc_return)
        ax.set_title(ENV_LABELS[env_id])
        ax.set_yscale("symlog", linthresh=1.0)
        if np.isfinite(top) and top < 0:  # keep the autoscaled margin from reaching into positive returns
            ax.set_ylim(top=top / 2)
        ax.grid(alpha=0.3)
        if ax.lines:  # an env none of whose tasks has finished yet stays empty
            ax.legend(fontsize=8)
        ax_beta.set_ylim(-0.02, 1.02)
        ax_beta.set_xlabel("training episode")
        ax_beta.grid(alpha=0.3)
        if ax_beta.lines:
            ax_beta.legend(fontsize=8, title="RL-ACR focus (range over seeds)", title_fontsize=8)
    axes[0, 0].set_ylabel("per-step return (mean, range over seeds)")
    axes[1, 0].set_ylabel("focus weight beta (1 = MPC)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _in_progress(cfg: ACRPreset, results: dict[str, dict[str, Any]], seeds: list[int], out_dir: Path) -> str:
    """A table of the unfinished training tasks that have a saved state in ``out_dir`` (episodes done,
    failures so far), or "" if there are none. The states are read and verified, not changed."""
    rows = []
    for e in cfg.envs:
        for m in cfg.methods:
            for s in seeds:
                key = _key(e, m, s, cfg)
                folder = task_state_dir(out_dir / runfolder.TASKS, key)
                if key in results or m not in TRAINED or not (folder / "training").is_dir():
                    continue
                loaded = _training_state(folder, e, m, s, cfg.episodes, cfg.pretrain_episodes).load()
                if loaded is None:
                    continue
                logs = loaded[1]["logs"]
                failures = sum(lg["failed"] for lg in logs[: cfg.failure_window])
                rows.append([ENV_LABELS[e], m, str(s), f"{len(logs)} of {cfg.episodes}", str(failures)])
    if not rows:
        return ""
    return report.markdown_table(["env", "method", "seed", "training episodes saved",
                                  f"failures so far (first {min(cfg.episodes, cfg.failure_window)})"], rows)


def _write_report(cfg: ACRPreset, results: dict[str, dict[str, Any]], seeds: list[int], out_dir: Path,
                  missing: int) -> str:
    """``episodes.csv``, ``summary.md`` and ``returns.png`` from the finished tasks; the summary's text."""
    keys = [(e, m, s) for e in cfg.envs for m in cfg.methods if m in TRAINED for s in seeds
            if _key(e, m, s, cfg) in results]
    extras = sorted({k for e, m, s in keys for k, v in results[_key(e, m, s, cfg)].items()
                     if np.ndim(v) == 1 and k not in _LOG_COLUMNS})
    with open(out_dir / "episodes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["env", "method", "seed", "episode", *(_LOG_COLUMNS[c] for c in _LOG_COLUMNS), *extras])
        for e, m, s in keys:
            r = results[_key(e, m, s, cfg)]
            for k in range(len(r["failed"])):
                writer.writerow([ENV_LABELS[e], m, s, k, *(_csv_value(r[c][k]) for c in _LOG_COLUMNS),
                                 *(_csv_value(r[c][k]) if c in r else "" for c in extras)])
    tables = _summaries(cfg, results, seeds)
    _write_curves(cfg, results, seeds, out_dir / "returns.png")
    window = min(cfg.episodes, cfg.failure_window)
    n_tasks = len(cfg.envs) * len(cfg.methods) * len(seeds)
    running = _in_progress(cfg, results, seeds, out_dir) if missing else ""
    status = ("" if not missing else
              f"**Partial: {n_tasks - missing} of {n_tasks} tasks finished.** A cell over fewer seeds than "
              f"the preset's says so (n=k); the per-seed table marks unfinished tasks '-'.\n\n"
              + (f"Unfinished tasks with a saved training state (a rerun resumes them there; not counted in "
                 f"the tables below):\n\n{running}\n\n" if running else ""))
    text = (f"# RL-ACR study ({cfg.name})\n\nSeeds {seeds}; {cfg.episodes} training episodes per env and method "
            f"on the actual plant (SAC-pt: {cfg.pretrain_episodes} episodes on the estimated model first).\n\n"
            + status
            + f"## {tables['failures_what'].capitalize()} (mean ± std over seeds; MPC: its evaluation episode)\n\n"
            f"{tables['failures']}\n\nPer seed:\n\n{tables['failures_per_seed']}\n\n"
            + (f"## The predictive safety filter during training, first {window} episodes (summed over seeds)"
               f"\n\n{tables['filter']}\n\n" if tables["filter"] else "")
            + (f"## Training episodes with an interval above the constraint, first {window}"
               f" (the reactor: T > T_max; failures count too)\n\n{tables['violations']}\n\n"
               if tables["violations"] else "")
            + f"## Final per-step return on the actual plant (no exploration; +PSF: behind the filter)\n\n"
            f"{tables['returns']}\n\n"
            + (f"## Time per RL-ACR training step (acting incl. MPC, env step, updates)\n\n{tables['times']}\n\n"
               if tables["times"] else "")
            + "![returns](returns.png)\n")
    (out_dir / "summary.md").write_text(text)
    return text


#: the training log's columns in ``episodes.csv`` (result key: column name); learner extras follow
_LOG_COLUMNS = {"failed": "failed", "length": "length", "return": "return",
                "normalised_return": "normalised_return", "step_time": "step_time_s"}


def _csv_value(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_, np.integer)):
        return int(v)
    v = float(v)
    return "" if np.isnan(v) else v


def _preset(preset: str | ACRPreset) -> ACRPreset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        return PRESETS[preset]
    return preset


def report_acr_study(preset: str | ACRPreset = "quick", out: str | Path | None = None,
                     progress: bool = True, methods: tuple[str, ...] | None = None) -> Path:
    """Write ``episodes.csv``, ``summary.md`` and ``returns.png`` from the tasks finished so far in ``out``
    (runs nothing; for a long run still going or interrupted). The summary says how many tasks are missing,
    and its per-seed table which. ``methods``: the rows, if not the preset's (as given to the run)."""
    cfg, _ = _select(_preset(preset), methods, None)
    out_dir = Path(out) if out is not None else Path("runs") / f"acr-{cfg.name}"
    if not (out_dir / "tasks").is_dir():
        raise FileNotFoundError(f"no RL-ACR run in {out_dir} (its tasks/ folder is missing); "
                                f"start one with `safectrl study acr --preset {cfg.name} --out {out_dir}`")
    kind = runfolder.read_kind(out_dir)
    if kind not in (None, KIND):  # another study's task files would be read as missing, not as its own
        raise runfolder.RunFolderError(f"{out_dir} holds a {kind!r} run, not an {KIND!r} run")
    store = ResultStore(out_dir / "tasks")
    seeds = list(range(cfg.seeds))
    keys = [_key(e, m, s, cfg) for e in cfg.envs for m in cfg.methods for s in seeds]
    results = store.stored(keys)  # a corrupt file is set aside (and counted missing)
    if not results:
        raise FileNotFoundError(f"no finished task of the {cfg.name!r} preset in {out_dir / 'tasks'}")
    text = _write_report(cfg, results, seeds, out_dir, sum(k not in results for k in keys))
    if progress:
        print(text)
        print(f"written to {out_dir}")
    return out_dir


def _select_seeds(cfg: ACRPreset, seeds: tuple[int, ...] | None) -> list[int]:
    """The seeds to run: ``seeds``, which must be among the preset's (0 to ``cfg.seeds - 1``), in increasing
    order; all of the preset's if None or empty."""
    if not seeds:
        return list(range(cfg.seeds))
    given = [validation.integer(f"seeds[{i}]", s, low=0) for i, s in enumerate(seeds)]
    outside = sorted({s for s in given if s >= cfg.seeds})
    if outside:
        raise ValueError(f"seeds {outside} are not in the {cfg.name!r} preset; "
                         f"valid seeds: 0 to {cfg.seeds - 1}")
    return sorted(set(given))


def _select(cfg: ACRPreset, methods: tuple[str, ...] | None, envs: tuple[str, ...] | None
            ) -> tuple[ACRPreset, tuple[str, ...]]:
    """The preset with ``methods`` instead of its own (any of :data:`METHODS`), and the env ids to run:
    ``envs`` (ids or labels such as ``Glucose``), which must be among the preset's; all of them if None."""
    if methods:
        cfg = replace(cfg, methods=tuple(methods))  # validated (unknown names refused) by ACRPreset
    if not envs:
        return cfg, cfg.envs
    by_label = {label: env_id for env_id, label in ENV_LABELS.items()}
    given = validation.names("envs", tuple(envs))
    ids = {by_label.get(e, e) for e in given}
    unknown = [e for e in given if by_label.get(e, e) not in cfg.envs]
    if unknown:
        valid = ", ".join(ENV_LABELS[e] for e in cfg.envs)
        raise ValueError(f"envs {unknown} are not in the {cfg.name!r} preset; valid envs: {valid}")
    return cfg, tuple(e for e in cfg.envs if e in ids)  # the preset's order


def run_acr_study(preset: str | ACRPreset = "quick", out: str | Path | None = None,
                  scheduler: str | None = None, workers: int | None = None, serial: bool = False,
                  progress: bool = True, force: bool = False, connect_timeout: float = CONNECT_TIMEOUT,
                  methods: tuple[str, ...] | None = None, envs: tuple[str, ...] | None = None,
                  seeds: tuple[int, ...] | None = None) -> Path:
    """Run the RL-ACR study and write ``config.json``, ``episodes.csv``, ``summary.md``, ``returns.png``.

    Rerunning with the same ``out`` resumes: finished (env, method, seed) tasks are read back; ``force``
    discards them and runs everything again. A folder of another study is refused, even with ``force``.
    ``methods`` runs these methods instead of the preset's, ``envs`` only these of its envs and ``seeds``
    only these of its seeds (a long preset a part at a time, into one folder); the summary covers the preset's envs and seeds and the methods run, with every
    task not finished yet counted as missing.
    """
    cfg, run_envs = _select(_preset(preset), methods, envs)
    run_seeds = _select_seeds(cfg, seeds)
    out_dir = Path(out) if out is not None else Path("runs") / f"acr-{cfg.name}"
    seeds = list(range(cfg.seeds))
    recorded = {k: v for k, v in asdict(cfg).items() if k != "methods"}  # see ACRPreset.methods
    folder = runfolder.check(out_dir, KIND, {"preset": recorded, "seeds": seeds,
                                             "rl_acr": asdict(RLACRConfig()), "safectrl": safectrl.__version__},
                             force, resumable=True)
    # Env by env in the preset's order (an interrupted run has whole envs done); within an env the longest
    # tasks first (the filtered methods solve one or two NLPs every step, RL-ACR one), so that the workers
    # finish together.
    order = ("RL-ACR+PSF", "SAC+PSF", "RL-ACR", "SAC-pt", "SAC", "MPC")
    # a training task keeps its state between episodes under tasks/partial: a stopped run loses minutes
    def state_dir(key: str) -> str:
        return str(task_state_dir(out_dir / runfolder.TASKS, key))

    # in-process (--serial) a task shows its training episodes too; worker processes would garble the bars
    episode_bars = progress and serial and scheduler is None and workers is None
    tasks = [Task(key, run_method,
                  (e, m, s, cfg.episodes, cfg.pretrain_episodes, episode_bars, state_dir(key)))
             for e in run_envs for m in order if m in cfg.methods for s in run_seeds
             for key in (_key(e, m, s, cfg),)]
    executor = make_executor(scheduler, workers, serial, connect_timeout)  # connects: nothing written yet
    t0 = time.perf_counter()
    try:
        with runfolder.cleanup_on_failure(folder):
            runfolder.commit(folder)
            store = ResultStore(out_dir / runfolder.TASKS)
            saved = [t.key for t in tasks if t.key not in store and Path(state_dir(t.key)).is_dir()]
            if progress and saved:
                print(f"RL-ACR study: {len(saved)} unfinished task(s) continue from their saved training "
                      "state")
            results = run_tasks(tasks, executor, store, desc="RL-ACR study", progress=progress)
    finally:
        executor.close()
    keys = [_key(e, m, s, cfg) for e in cfg.envs for m in cfg.methods for s in seeds]
    if len(keys) > len(tasks):  # a part of the preset: the summary has the other envs' finished tasks too
        results = {**store.stored([k for k in keys if k not in results]), **results}
    text = _write_report(cfg, results, seeds, out_dir, sum(k not in results for k in keys))
    if progress:
        print(text)
        print(f"written to {out_dir} in {time.perf_counter() - t0:.0f} s")
        if store.set_aside:
            print(f"{len(store.set_aside)} corrupt task file(s) moved to {store.root / 'corrupt'} and recomputed")
    return out_dir



# -- the study's configs, as the command line and scripts give them ---------------------------------------


@dataclass(frozen=True)
class ACRStudyConfig:
    """What ``safectrl study acr`` runs: a preset, the run folder and the executor."""

    # quick: two small tasks, a few minutes; full: the published numbers (hours on 2 cores)
    preset: str = field(default="quick", metadata={"choices": tuple(PRESETS)})
    out: str | None = None  # output folder (default: runs/acr-PRESET); an existing run there is resumed
    force: bool = False  # discard the finished tasks in the folder and run everything again
    # send tasks to this running Dask scheduler
    scheduler: str | None = field(default=None, metadata={"group": "executor", "metavar": "tcp://HOST:PORT"})
    # start a local Dask cluster with this many worker processes
    workers: int | None = field(default=None, metadata={"group": "executor", "min": 1})
    serial: bool = field(default=False, metadata={"group": "executor"})  # run every task in this process
    connect_timeout: float = CONNECT_TIMEOUT  # seconds to wait for the --scheduler to answer
    progress: bool = True  # print progress and the summary
    # run these methods instead of the preset's (the summary has their rows)
    methods: tuple[str, ...] = field(default=(), metadata={"choices": METHODS, "metavar": "METHOD"})
    # run only these of the preset's envs (default: all; the summary has all, unfinished ones marked)
    envs: tuple[str, ...] = field(default=(), metadata={"choices": tuple(ENV_LABELS.values()), "metavar": "ENV"})
    # run only these of the preset's seeds (default: all; the summary has all, unfinished ones marked)
    seeds: tuple[int, ...] = field(default=(), metadata={"min": 0, "metavar": "SEED"})

    def __post_init__(self) -> None:
        validation.positive("connect_timeout", self.connect_timeout)
        # a bad name or seed is refused before anything runs
        _select_seeds(_select(_preset(self.preset), self.methods, self.envs)[0], self.seeds)


def run(config: ACRStudyConfig = ACRStudyConfig()) -> Path:
    """Run the RL-ACR study of ``config`` (:func:`run_acr_study`); returns its folder."""
    return run_acr_study(config.preset, config.out, scheduler=config.scheduler, workers=config.workers,
                         serial=config.serial, progress=config.progress, force=config.force,
                         connect_timeout=config.connect_timeout, methods=config.methods or None,
                         envs=config.envs or None, seeds=config.seeds or None)


@dataclass(frozen=True)
class ACRReportConfig:
    """What ``safectrl study acr report`` reads: the run folder of a preset (nothing is run)."""

    # the preset the run was started with
    preset: str = field(default="quick", metadata={"choices": tuple(PRESETS)})
    out: str | None = None  # the run folder (default: runs/acr-PRESET)
    progress: bool = True  # print the summary
    # the methods the run was started with, if not the preset's
    methods: tuple[str, ...] = field(default=(), metadata={"choices": METHODS, "metavar": "METHOD"})

    def __post_init__(self) -> None:
        _select(_preset(self.preset), self.methods, None)


def run_report(config: ACRReportConfig = ACRReportConfig()) -> Path:
    """The summary of the tasks finished so far in ``config.out`` (:func:`report_acr_study`)."""
    return report_acr_study(config.preset, config.out, progress=config.progress, methods=config.methods or None)
