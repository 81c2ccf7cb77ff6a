"""The PICNN safety layer on the polymerisation CSTR: cost-model targets, training, closed loop, figure.

The cost model learns, from the PI datasets, the cost-to-go of taking action a in observation o
(Durkin et al., 2025, call it a learned cost model; what it regresses is our decision,
``docs/decisions.md#cost-model-target``)::

    C_t = Σ_{j=1..H} γ^j c(x_{t+j}),     c(x) = w_P |P_sp − P| + w_T |T_sp − T| + ρ max(0, T − T_max)

over the next H intervals of the recorded trajectory (true states, ``Transitions.state``). Absolute rather
than squared errors keep the targets' range narrow enough for the model to resolve offsets of a few kg/m³
next to start-up errors of a hundred. A window that runs past a runaway (the episode terminated) repeats
the failed state's stage cost, with T capped at T_runaway; a window that runs past the time limit has no
target and its transition is left out. Train and validation sets are split by episode; the regression
uses a Huber loss (see :class:`SafetyLayerConfig`).

H = 20 (10 h) and λ = 0.3 were chosen by :func:`tune` (``safectrl safety tune``), by the closed-loop cost of
the dataset's behaviour policy wrapped by the filter on tuning seeds; short horizons barely help, because
one interval shows little of what f_I does to P (grid and numbers: ``docs/decisions.md#cost-model-target``).

:func:`make_filter` composes a trained model with any policy into a
:class:`~safectrl.safety.filter.SafetyFilter` on the reactor's input box (and, optionally, a rate limit
around the previous input the observation carries).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.pi import NOMINAL_TUNING, PIController, sample_tuning
from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.safety.correction import GDConfig, GradientCorrector, ExactCorrector
from safectrl.safety.cost_model import (
    ConvexCostModel,
    CostModelTrainConfig,
    TrainingReport,
    fit_cost_model,
    load_cost_model,
    load_cost_model_metadata,
    save_cost_model,
)
from safectrl.safety.filter import ActionBox, SafetyFilter
from safectrl.studies import datasets, report
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics

_P, _T = pc.STATES.index("P"), pc.STATES.index("T")
_OBS_P, _OBS_T = pc.OBSERVATIONS.index("P"), pc.OBSERVATIONS.index("T")
_OBS_EP, _OBS_ET = pc.OBSERVATIONS.index("e_P"), pc.OBSERVATIONS.index("e_T")
PREV_ACTION_INDEX = (pc.OBSERVATIONS.index("f_I_prev"), pc.OBSERVATIONS.index("T_c_prev"))


@dataclass(frozen=True)
class CostTargetConfig:
    """The regression target of the cost model (see the module docstring)."""

    horizon: int = 20  # H, intervals of cost-to-go (20 = 10 h, about two residence times; chosen by `tune`)
    gamma: float = 0.95  # discount per interval
    weight_P: float = 1.0  # per kg/m³ of |P_sp − P|
    weight_T: float = 1.0  # per K of |T_sp − T|
    penalty: float = 100.0  # ρ, per K above T_max: one kelvin over costs as much as 100 kg/m³ off grade
    T_max: float = pc.T_MAX  # K, where the penalty starts

    def __post_init__(self) -> None:
        if self.horizon < 1 or not 0 < self.gamma <= 1:
            raise ValueError(f"horizon must be >= 1 and gamma in (0, 1], got {self.horizon}, {self.gamma}")
        if min(self.weight_P, self.weight_T, self.penalty) < 0:
            raise ValueError("weights and penalty must be >= 0")


@dataclass(frozen=True)
class SafetyLayerConfig:
    """Everything that defines a trained cost model besides the data."""

    target: CostTargetConfig = CostTargetConfig()
    # Huber loss at 0.01 target standard deviations: a squared loss spends the model on the start-up data's
    # few runaways, whose cost-to-go is many times the typical one (docs/decisions.md#cost-model-target)
    train: CostModelTrainConfig = CostModelTrainConfig(huber_delta=0.01)
    val_fraction: float = 0.2  # share of episodes held out for validation
    split_seed: int = 0  # which episodes are held out
    # What the cost model sees: the state and the setpoint errors, *not* the previous inputs f_I_prev,
    # T_c_prev of the env's observation. The PI data are velocity-form controllers, so with them the model
    # learns "stay near the previous input" (the copycat problem of BC and IQL;
    # docs/decisions.md#cost-model-observed). The correction's rate limit (FilterSettings.rate) still reads
    # the previous input from the whole observation.
    observed: tuple[str, ...] = ("A", "P", "T", "e_P", "e_T")

    def __post_init__(self) -> None:
        unknown = [o for o in self.observed if o not in pc.OBSERVATIONS]
        if unknown or not self.observed:
            raise ValueError(f"observed must name observations of {pc.OBSERVATIONS}, got {self.observed}")

    @property
    def obs_index(self) -> tuple[int, ...]:
        return tuple(pc.OBSERVATIONS.index(o) for o in self.observed)


def stage_cost(state: np.ndarray, setpoint: np.ndarray, cfg: CostTargetConfig) -> np.ndarray:
    """c(x) for states (n, 5) and setpoints (n, 2) (P_sp, T_sp); T is capped at the runaway temperature."""
    T = np.minimum(state[:, _T], pc.T_RUNAWAY)
    return (cfg.weight_P * np.abs(setpoint[:, 0] - state[:, _P]) + cfg.weight_T * np.abs(setpoint[:, 1] - T)
            + cfg.penalty * np.maximum(0.0, T - cfg.T_max))


def cost_targets(tr: data.Transitions, cfg: CostTargetConfig) -> tuple[np.ndarray, np.ndarray]:
    """H-step cost-to-go per transition and the mask of transitions that have one.

    Args:
        tr: transitions of whole episodes, in order (:func:`safectrl.rl.data.load_transitions`).
        cfg: horizon, discount and stage-cost weights.

    Returns:
        target (n,) (NaN where undefined) and valid (n,) bool.
    """
    if not np.all(np.isfinite(tr.state)):
        raise ValueError("non-finite states in the transitions; the stage cost of such a state is undefined")
    setpoint = np.stack([tr.next_obs[:, _OBS_EP] + tr.next_obs[:, _OBS_P],
                         tr.next_obs[:, _OBS_ET] + tr.next_obs[:, _OBS_T]], axis=1)
    c = stage_cost(tr.state, setpoint, cfg)
    target = np.full(len(c), np.nan)
    for ep in np.unique(tr.episode):
        rows = np.flatnonzero(tr.episode == ep)
        if np.any(np.diff(tr.step[rows]) != 1):
            raise ValueError(f"episode {ep} is not a contiguous run of steps")
        c_ep = c[rows]
        failed = bool(tr.done[rows[-1]])
        n = len(rows)
        padded = np.concatenate([c_ep, np.full(cfg.horizon, c_ep[-1] if failed else np.nan)])
        discounts = cfg.gamma ** np.arange(1, cfg.horizon + 1)
        windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.horizon)[:n]
        target[rows] = windows @ discounts
    return target, np.isfinite(target)


def split_episodes(episode: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose episode is held out for validation (at least one episode each side)."""
    ids = np.unique(episode)
    if len(ids) < 2:
        raise ValueError("at least two episodes are needed for a train/validation split")
    n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
    val_ids = np.random.default_rng(seed).choice(ids, size=n_val, replace=False)
    return np.isin(episode, val_ids)


def train_cost_model(
    tr: data.Transitions,
    config: SafetyLayerConfig = SafetyLayerConfig(),
    progress: bool = False,
    desc: str = "cost model",
) -> tuple[ConvexCostModel, TrainingReport]:
    """Fit the cost model to the H-step targets of ``tr``, validating on held-out episodes."""
    target, valid = cost_targets(tr, config.target)
    is_val = split_episodes(tr.episode, config.val_fraction, config.split_seed)
    tr_rows, val_rows = valid & ~is_val, valid & is_val
    bar = tqdm(total=config.train.epochs, desc=desc, disable=not progress)

    def on_epoch(epoch: int, train_rmse: float, val_rmse: float) -> None:
        bar.update()
        bar.set_postfix(train_rmse=f"{train_rmse:.3g}", val_rmse=f"{val_rmse:.3g}")

    try:
        model, rep = fit_cost_model(
            (tr.obs[tr_rows], tr.action[tr_rows], target[tr_rows]),
            (tr.obs[val_rows], tr.action[val_rows], target[val_rows]),
            config.train,
            progress=on_epoch,
            obs_index=config.obs_index,
        )
    finally:
        bar.close()
    rep.extra.update(train_transitions=int(tr_rows.sum()), val_transitions=int(val_rows.sum()),
                     val_episodes=int(len(np.unique(tr.episode[is_val]))),
                     train_episodes=int(len(np.unique(tr.episode[~is_val]))))
    return model, rep


def train_for_scenario(
    scenario: str,
    out: str | os.PathLike,
    episodes: int = 100,
    data_seed: int = 0,
    root: str | os.PathLike | None = None,
    config: SafetyLayerConfig = SafetyLayerConfig(),
    progress: bool = True,
) -> tuple[ConvexCostModel, TrainingReport]:
    """Train on the PI dataset of ``scenario`` (generated if missing) and save a checkpoint in ``out``."""
    ds_id = datasets.generate_dataset(scenario, episodes, data_seed, root=root, progress=progress)
    tr = data.load_transitions(ds_id, root)
    t0 = time.perf_counter()
    model, rep = train_cost_model(tr, config, progress, desc=f"cost model {scenario}")
    meta = {
        "scenario": scenario,
        "dataset": ds_id,
        "config": asdict(config),
        "observations": list(pc.OBSERVATIONS),
        "actions": list(pc.INPUTS),
        "training_seconds": time.perf_counter() - t0,
        "report": {k: v for k, v in asdict(rep).items() if k not in ("train_rmse", "val_rmse")},
        "val_rmse_per_epoch": rep.val_rmse,
    }
    save_cost_model(model, out, meta)
    return model, rep


# -- the filter on the reactor ----------------------------------------------------------------------------


def action_box(rate: Sequence[float] | None = None) -> ActionBox:
    """The reactor's input box, optionally with a rate limit (kg/h, K per interval) around the last input."""
    return ActionBox(low=tuple(pc.U_LOW), high=tuple(pc.U_HIGH), rate=None if rate is None else tuple(rate),
                     prev_action_index=PREV_ACTION_INDEX)


@dataclass(frozen=True)
class FilterSettings:
    """How the filter corrects; ``trust`` is the trust weight λ in standardised units (see SafetyFilter)."""

    trust: float = 0.3  # λ: network cost units per squared standard deviation of the dataset's actions
    gd: GDConfig = GDConfig()
    rate: tuple[float, float] | None = None  # optional rate limit (kg/h, K) per interval


def make_filter(policy: DecisionMaker, model: ConvexCostModel, method: str,
                settings: FilterSettings = FilterSettings()) -> SafetyFilter:
    return SafetyFilter(policy, model, action_box(settings.rate), method=method, trust=settings.trust,
                        gd=settings.gd)


def checkpoint_dir(root: str | os.PathLike, scenario: str) -> Path:
    return Path(root) / scenario


def load_scenario_model(root: str | os.PathLike, scenario: str) -> ConvexCostModel:
    """The cost model trained for ``scenario`` under ``root`` (see :func:`train_for_scenario`)."""
    folder = checkpoint_dir(root, scenario)
    meta = load_cost_model_metadata(folder)
    if meta.get("scenario") != scenario or meta.get("observations") != list(pc.OBSERVATIONS):
        raise ValueError(f"checkpoint in {folder} is for scenario {meta.get('scenario')!r} with observations "
                         f"{meta.get('observations')}, not {scenario!r} with {list(pc.OBSERVATIONS)}")
    return load_cost_model(folder)


class DatasetPI:
    """PI with gains drawn from the dataset ranges per episode seed: the behaviour policy of the data."""

    def __init__(self) -> None:
        self._pi = PIController()

    def reset(self, seed: int | None = None) -> None:
        tuning = sample_tuning(datasets.tuning_rng(0 if seed is None else seed))
        self._pi = PIController(tuning)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._pi.act(obs)


#: Policy factories the closed-loop table can wrap without the offline-RL agents.
BASE_POLICIES: dict[str, Callable[[str], DecisionMaker]] = {
    "PI nominal": lambda scenario: PIController(NOMINAL_TUNING),
    "PI dataset gains": lambda scenario: DatasetPI(),
}


@dataclass
class FilteredRun:
    """Closed-loop episodes of one controller on one scenario, with the filter's records if any."""

    episodes: list[Episode]
    metrics: list[EpisodeMetrics]
    records: list[dict[str, np.ndarray]] = field(default_factory=list)


def run_controller(scenario: str, policy: DecisionMaker, seeds: Sequence[int]) -> FilteredRun:
    env = TaskEnv(pc.TASK, scenario=scenario)
    run = FilteredRun([], [])
    for s in seeds:
        ep = run_episode(env, policy, s)
        run.episodes.append(ep)
        run.metrics.append(episode_metrics(ep))
        if isinstance(policy, SafetyFilter):
            run.records.append(policy.record.arrays())
    return run


TABLE_HEADERS = ("scenario", "controller", "episodes", "cost (mean ± std)", "final |e_P| kg/m³",
                 "final |e_T| K", "episodes with T > T_max", "worst exceedance K", "runaways",
                 "mean |correction| f_I kg/h", "mean |correction| T_c K", "decision ms (median)")


def table_row(scenario: str, name: str, run: FilteredRun) -> list:
    ms = run.metrics
    if run.records:
        delta = np.concatenate([np.abs(r["action"] - np.clip(r["raw_action"], pc.U_LOW, pc.U_HIGH))
                                for r in run.records])
        corr = [float(delta[:, 0].mean()), float(delta[:, 1].mean())]
    else:
        corr = ["-", "-"]
    return [scenario, name, len(ms), report.mean_std([m.cost for m in ms]),
            report.mean_std([m.final_abs_eP for m in ms]), report.mean_std([m.final_abs_eT for m in ms]),
            sum(m.violations > 0 for m in ms), float(max(m.worst_exceedance for m in ms)),
            sum(m.failure for m in ms), *corr, float(np.median([m.decision_ms for m in ms]))]


def closed_loop_table(
    models: dict[str, ConvexCostModel],
    policies: dict[str, Callable[[str], DecisionMaker]],
    seeds: Sequence[int],
    methods: Sequence[str] = ("gd", "exact"),
    settings: FilterSettings = FilterSettings(),
    progress: bool = True,
) -> tuple[list[list], dict[tuple[str, str], FilteredRun]]:
    """Each policy, raw and wrapped by the filter with each method, on each scenario of ``models``."""
    rows, runs = [], {}
    jobs = [(s, p, m) for s in models for p in policies for m in (None, *methods)]
    for scenario, pname, method in tqdm(jobs, desc="closed loop", disable=not progress):
        policy = policies[pname](scenario)
        name = pname
        if method is not None:
            policy = make_filter(policy, models[scenario], method, settings)
            name = f"{pname} + PICNN ({method})"
        run = run_controller(scenario, policy, seeds)
        runs[(scenario, name)] = run
        rows.append(table_row(scenario, name, run))
    return rows, runs


def write_table(rows: list[list], out: str | os.PathLike, header: str) -> str:
    table = report.markdown_table(TABLE_HEADERS, rows)
    Path(out).write_text(f"{header}\n\n{table}\n")
    return table


# -- the figure ------------------------------------------------------------------------------------------


def cost_surface_figure(
    model: ConvexCostModel,
    obs: np.ndarray,
    policy_action: np.ndarray,
    path: str | os.PathLike,
    settings: FilterSettings = FilterSettings(),
    data_actions: np.ndarray | None = None,
    title: str = "",
    grid: int = 161,
) -> dict[str, np.ndarray]:
    """The learned cost over the input box at one state, with the policy action, GD path and exact optimum.

    Left: f(obs, ·) over the whole input box with its exact minimiser (the LP, λ = 0) and, if given, the
    dataset's actions. Right: the correction objective f + λ/2‖·‖² near the policy action, the projected
    gradient path from the policy action and the exact QP optimum. Returns the points drawn (physical units).
    """
    from safectrl.studies import plots  # noqa: F401  (selects the non-interactive backend)
    import matplotlib.pyplot as plt

    box = action_box(settings.rate)
    obs = np.asarray(obs, dtype=float)[None]
    lo, hi = box.bounds(obs)
    x = model.state_features(obs)
    y_lo, y_hi = model.scale_action(lo), model.scale_action(hi)
    y_ref = model.scale_action(np.clip(np.asarray(policy_action, dtype=float)[None], lo, hi))
    lp = ExactCorrector(model.picnn, 0.0).correct(x, y_ref, y_lo, y_hi)
    qp = ExactCorrector(model.picnn, settings.trust).correct(x, y_ref, y_lo, y_hi)
    gd = GradientCorrector(model.picnn, settings.trust, settings.gd).correct(x, y_ref, y_lo, y_hi, record_path=True)
    points = {
        "policy": model.unscale_action(y_ref)[0],
        "lp_optimum": model.unscale_action(lp.action)[0],
        "qp_optimum": model.unscale_action(qp.action)[0],
        "gd_path": model.unscale_action(gd.path[:, 0]),
    }
    std = model.action_std.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2))
    half = np.maximum(4 * std, np.abs(points["qp_optimum"] - points["policy"]) * 1.5)
    windows = [(lo[0], hi[0]), (np.maximum(lo[0], points["policy"] - half), np.minimum(hi[0], points["policy"] + half))]
    for k, (ax, (w_lo, w_hi)) in enumerate(zip(axes, windows)):
        f_I, T_c = np.meshgrid(np.linspace(w_lo[0], w_hi[0], grid), np.linspace(w_lo[1], w_hi[1], grid))
        acts = np.stack([f_I.ravel(), T_c.ravel()], axis=1)
        cost = model.predict(np.repeat(obs, len(acts), axis=0), acts)
        if k == 1:
            trust = 0.5 * settings.trust * np.sum((model.scale_action(acts) - y_ref) ** 2, axis=1)
            cost = cost + trust * float(model.cost_std)
        cs = ax.contourf(f_I, T_c, cost.reshape(f_I.shape), levels=30, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="predicted cost-to-go" + (" + trust term" if k else ""))
        if k == 0 and data_actions is not None:
            ax.scatter(data_actions[:, 0], data_actions[:, 1], s=2, c="silver", alpha=0.3, lw=0,
                       label="dataset actions (all states)")
        if k == 1:
            path_pts = points["gd_path"]
            ax.plot(path_pts[:, 0], path_pts[:, 1], "-o", color="tab:orange", ms=3, lw=1.2,
                    label=f"gradient path ({len(path_pts) - 1} steps)")
            ax.plot(*points["qp_optimum"], "*", color="tab:red", ms=16, mec="k",
                    label=f"exact optimum (QP, λ = {settings.trust:g})")
        else:
            ax.plot(*points["lp_optimum"], "*", color="tab:red", ms=16, mec="k", label="exact optimum (LP, λ = 0)")
        ax.plot(*points["policy"], "s", color="w", ms=8, mec="k", label="policy action")
        ax.set_xlim(w_lo[0], w_hi[0])
        ax.set_ylim(w_lo[1], w_hi[1])
        ax.set_xlabel("f_I [kg/h]")
        ax.set_ylabel("T_c [K]")
        ax.set_title("whole input box" if k == 0 else "near the policy action")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points


def write_json(obj, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=float))


def set_torch_threads(n: int = 1) -> None:
    """Long runs share a small machine: one torch thread."""
    torch.set_num_threads(n)


# -- choosing H and λ on tuning seeds --------------------------------------------------------------------


def tune(
    horizons: Sequence[int],
    trusts: Sequence[float],
    episodes: int = 8,
    policy: str = "PI dataset gains",
    method: str = "gd",
    data_episodes: int = 100,
    data_seed: int = 0,
    root: str | os.PathLike | None = None,
    base: SafetyLayerConfig = SafetyLayerConfig(),
    progress: bool = True,
) -> list[list]:
    """Closed-loop cost of ``policy`` + filter for each (H, λ) on tuning seeds (never evaluation seeds).

    Returns rows (H, λ, then per scenario mean cost relative to the unfiltered policy, episodes with
    violations, runaways; and the mean relative cost over scenarios).
    """
    seeds = list(range(data.TUNING_SEED_OFFSET, data.TUNING_SEED_OFFSET + episodes))
    scenarios = list(pc.SCENARIOS)
    trs = {s: data.load_transitions(datasets.generate_dataset(s, data_episodes, data_seed, root=root), root)
           for s in scenarios}
    baseline = {s: run_controller(s, BASE_POLICIES[policy](s), seeds).metrics for s in scenarios}
    rows = []
    for H in horizons:
        cfg = SafetyLayerConfig(target=CostTargetConfig(**{**asdict(base.target), "horizon": H}), train=base.train,
                                val_fraction=base.val_fraction, split_seed=base.split_seed, observed=base.observed)
        models = {s: train_cost_model(trs[s], cfg, progress, desc=f"H={H} {s}")[0] for s in scenarios}
        for trust in tqdm(trusts, desc=f"H={H} trust", disable=not progress):
            row: list = [H, trust]
            rel = []
            for s in scenarios:
                filt = make_filter(BASE_POLICIES[policy](s), models[s], method, FilterSettings(trust=trust))
                ms = run_controller(s, filt, seeds).metrics
                r = np.mean([m.cost for m in ms]) / np.mean([m.cost for m in baseline[s]])
                rel.append(r)
                row += [float(r), sum(m.violations > 0 for m in ms), sum(m.failure for m in ms)]
            rows.append(row + [float(np.mean(rel))])
    base_row: list = ["-", "none"]
    for s in scenarios:
        base_row += [1.0, sum(m.violations > 0 for m in baseline[s]), sum(m.failure for m in baseline[s])]
    return [base_row + [1.0]] + rows


def tune_headers() -> list[str]:
    cols = ["H", "λ"]
    for s in pc.SCENARIOS:
        cols += [f"{s} cost / unfiltered", f"{s} viol. eps", f"{s} runaways"]
    return cols + ["mean cost / unfiltered"]


# -- what the command line runs --------------------------------------------------------------------------


def evaluate(
    models_dir: str | os.PathLike,
    scenarios: Sequence[str],
    policies: Sequence[str],
    methods: Sequence[str],
    n_seeds: int,
    settings: FilterSettings,
    out: str | os.PathLike,
    progress: bool = True,
) -> str:
    """The closed-loop table on evaluation seeds; writes ``summary.md``, ``episodes.csv`` and ``config.json``."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = data.evaluation_seeds(n_seeds)
    models = {s: load_scenario_model(models_dir, s) for s in scenarios}
    factories = {POLICY_LABELS[p]: POLICIES[p] for p in policies}
    rows, runs = closed_loop_table(models, factories, seeds, methods, settings, progress)
    write_json({"models": str(models_dir), "scenarios": list(scenarios), "policies": list(policies),
                "methods": list(methods), "eval_seeds": seeds, "settings": asdict(settings),
                "cost_models": {s: load_cost_model_metadata(checkpoint_dir(models_dir, s)) for s in scenarios}},
               out / "config.json")
    with open(out / "episodes.csv", "w", newline="") as fh:
        writer = None
        for (scenario, name), run in runs.items():
            for ep, m in zip(run.episodes, run.metrics):
                rec = {"scenario": scenario, "controller": name, "seed": ep.seed, **m.as_dict()}
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(rec))
                    writer.writeheader()
                writer.writerow(rec)
    header = (f"# PICNN safety layer, closed loop\n\nEvaluation seeds {seeds[0]}..{seeds[-1]}; λ = "
              f"{settings.trust:g}; rate limit {settings.rate}; cost models from {models_dir}. Cost is -sum "
              f"of rewards over 100 h; final offsets are means over the last 10 h; ± is the std over seeds.")
    return write_table(rows, out / "summary.md", header)


def figure_for_episode(
    models_dir: str | os.PathLike,
    scenario: str,
    policy: str,
    seed: int,
    step: int,
    path: str | os.PathLike,
    settings: FilterSettings = FilterSettings(),
    data_episodes: int = 100,
    data_seed: int = 0,
    root: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Run ``policy`` (unfiltered) for ``step`` intervals from ``seed`` and draw the cost surface there."""
    model = load_scenario_model(models_dir, scenario)
    ep = run_controller(scenario, POLICIES[policy](scenario), [seed]).episodes[0]
    if not 0 <= step < ep.length:
        raise ValueError(f"step must lie in [0, {ep.length}) for this episode, got {step}")
    tr = data.load_transitions(datasets.generate_dataset(scenario, data_episodes, data_seed, root=root), root)
    obs = ep.observations[step]
    title = (f"{scenario}, {POLICY_LABELS[policy]}, seed {seed}, t = {step * pc.DT / 3600:g} h: P = {obs[_OBS_P]:.1f} kg/m³, "
             f"T = {obs[_OBS_T]:.1f} K (setpoint {pc.get_scenario(scenario).setpoint})")
    return cost_surface_figure(model, obs, ep.actions[step], path, settings, data_actions=tr.action, title=title)


#: Policies the command line can wrap, by name, and their names in tables.
POLICIES: dict[str, Callable[[str], DecisionMaker]] = {
    "pi-nominal": BASE_POLICIES["PI nominal"],
    "pi-dataset": BASE_POLICIES["PI dataset gains"],
}
POLICY_LABELS = {"pi-nominal": "PI nominal", "pi-dataset": "PI dataset gains"}
