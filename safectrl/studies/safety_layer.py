"""The PICNN safety layer on the polymerisation CSTR, as a study: train, evaluate, draw, tune.

The cost model learns, from the PI datasets, the cost-to-go of taking action a in observation o (the targets
and the fit: :mod:`safectrl.safety.targets`)::

    C_t = Σ_{j=1..H} γ^j c(x_{t+j}),     c(x) = w_P |P_sp − P| + w_T |T_sp − T| + ρ max(0, T − T_max)

over the next H intervals of the recorded trajectory (true states, ``Transitions.state``); the reactor's
columns, T_max and T_runaway come from :mod:`safectrl.models.polycstr` (:data:`REACTOR_STAGE_COST`).
H = 20 (10 h) and λ = 0.3 were chosen by :func:`tune` (``safectrl safety tune``) on tuning seeds (grid and
numbers: ``docs/decisions.md#cost-model-target``).

:func:`make_filter` composes a trained model with any policy into a
:class:`~safectrl.safety.filter.SafetyFilter` on the reactor's input box (and, optionally, a rate limit
around the previous input the observation carries).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.pi import NOMINAL_TUNING, DatasetPI, PIController
from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.safety.correction import GDConfig
from safectrl.safety.cost_model import (
    ConvexCostModel,
    CostModelTrainConfig,
    TrainingReport,
    load_cost_model,
    load_cost_model_metadata,
    save_cost_model,
)
from safectrl.safety.filter import ActionBox, SafetyFilter
from safectrl.safety.targets import CostTargetConfig, StageCostLayout
from safectrl.safety import targets
from safectrl.studies import datasets, options, plots, report, runfolder
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics

_P, _T = pc.STATES.index("P"), pc.STATES.index("T")
_OBS_P, _OBS_T = pc.OBSERVATIONS.index("P"), pc.OBSERVATIONS.index("T")
_OBS_EP, _OBS_ET = pc.OBSERVATIONS.index("e_P"), pc.OBSERVATIONS.index("e_T")
PREV_ACTION_INDEX = (pc.OBSERVATIONS.index("f_I_prev"), pc.OBSERVATIONS.index("T_c_prev"))


#: The reactor's stage cost: track P and T (setpoints = error + value in the next observation), penalise T
#: above T_max, cap T at T_runaway (a runaway's state repeats to the window's end at that cost).
REACTOR_STAGE_COST = StageCostLayout(
    tracked=(_P, _T), setpoint_error=(_OBS_EP, _OBS_ET), setpoint_value=(_OBS_P, _OBS_T),
    limited=_T, limit=pc.T_MAX, cap=pc.T_RUNAWAY,
)


@dataclass(frozen=True)
class SafetyLayerConfig:
    """Everything that defines a trained cost model besides the data."""

    # H = 20 intervals (10 h, about two residence times; chosen by `tune`); ρ = 100: one kelvin over T_max
    # costs as much as 100 kg/m³ off grade
    target: CostTargetConfig = CostTargetConfig()
    stage: StageCostLayout = REACTOR_STAGE_COST
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


def cost_targets(tr: data.Transitions, config: SafetyLayerConfig = SafetyLayerConfig()
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The H-step cost-to-go of each transition of ``tr`` and the mask of those that have one."""
    return targets.cost_targets(tr.state, tr.next_obs, tr.episode, tr.step, tr.done, config.stage, config.target)


def train_cost_model(
    tr: data.Transitions,
    config: SafetyLayerConfig = SafetyLayerConfig(),
    progress: bool = False,
    desc: str = "cost model",
) -> tuple[ConvexCostModel, TrainingReport]:
    """Fit the cost model to the H-step targets of ``tr``, validating on held-out episodes."""
    target, _ = cost_targets(tr, config)
    bar = tqdm(total=config.train.epochs, desc=desc, disable=not progress)

    def on_epoch(epoch: int, train_rmse: float, val_rmse: float) -> None:
        bar.update()
        bar.set_postfix(train_rmse=f"{train_rmse:.3g}", val_rmse=f"{val_rmse:.3g}")

    try:
        return targets.train_cost_model(tr.obs, tr.action, target, tr.episode, config.train, config.val_fraction,
                                        config.split_seed, config.obs_index, progress=on_epoch)
    finally:
        bar.close()


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
        cfg = replace(base, target=replace(base.target, horizon=H))
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
    seeds = data.evaluation_seeds(n_seeds)
    models = {s: load_scenario_model(models_dir, s) for s in scenarios}  # a missing model fails before writing
    factories = {POLICY_LABELS[p]: POLICIES[p] for p in policies}
    config = {"models": str(models_dir), "scenarios": list(scenarios), "policies": list(policies),
              "methods": list(methods), "eval_seeds": seeds, "settings": asdict(settings),
              "cost_models": {s: load_cost_model_metadata(checkpoint_dir(models_dir, s)) for s in scenarios}}
    with runfolder.single_run(out, "safety-eval", config) as out:
        rows, runs = closed_loop_table(models, factories, seeds, methods, settings, progress)
        return _write_evaluation(rows, runs, seeds, settings, models_dir, out)


def _write_evaluation(rows: list[list], runs: dict, seeds: list[int], settings: FilterSettings,
                      models_dir: str | os.PathLike, out: Path) -> str:
    import csv

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
    return plots.cost_surface_figure(model, obs, ep.actions[step], action_box(settings.rate), path, settings.trust,
                                     settings.gd, data_actions=tr.action, title=title)


#: Policies the command line can wrap, by name, and their names in tables.
POLICIES: dict[str, Callable[[str], DecisionMaker]] = {
    "pi-nominal": BASE_POLICIES["PI nominal"],
    "pi-dataset": BASE_POLICIES["PI dataset gains"],
}
POLICY_LABELS = {"pi-nominal": "PI nominal", "pi-dataset": "PI dataset gains"}


# -- the study's configs, as the command line and scripts give them ---------------------------------------

_DEFAULT = SafetyLayerConfig()
_SCENARIOS = (*pc.SCENARIOS, "all")
MODELS_DIR = "runs/safety-models"  # where `safety train` writes and `eval`/`figure` read the cost models


@dataclass(frozen=True)
class TrainConfig:
    """``safectrl safety train``: the PICNN cost model of each scenario on its PI dataset."""

    scenario: str = field(default="all", metadata={"choices": _SCENARIOS})  # whose dataset
    episodes: int = field(default=100, metadata={"min": 1})  # dataset episodes
    seed: int = field(default=0, metadata={"min": 0})  # dataset seed
    root: str | None = None  # Minari datasets folder
    out: str = MODELS_DIR  # folder of cost models, one sub-folder per scenario
    horizon: int = field(default=_DEFAULT.target.horizon, metadata={"min": 1})  # H of the cost-to-go, intervals
    penalty: float = _DEFAULT.target.penalty  # ρ, cost per K above T_max
    epochs: int = field(default=_DEFAULT.train.epochs, metadata={"min": 1})  # training epochs
    train_seed: int = field(default=_DEFAULT.train.seed, metadata={"min": 0})  # initialisation seed
    progress: bool = True  # progress bars

    def layer_config(self) -> SafetyLayerConfig:
        return replace(_DEFAULT, target=replace(_DEFAULT.target, horizon=self.horizon, penalty=self.penalty),
                       train=replace(_DEFAULT.train, epochs=self.epochs, seed=self.train_seed))


def run_train(config: TrainConfig = TrainConfig()) -> dict[str, TrainingReport]:
    """Train and save one cost model per scenario under ``config.out`` (with ``config.json``)."""
    set_torch_threads(1)
    scenarios = list(pc.SCENARIOS) if config.scenario == "all" else [config.scenario]
    with runfolder.single_run(config.out, "safety-models", runfolder.record(config)):
        return {s: train_for_scenario(s, checkpoint_dir(config.out, s), config.episodes, config.seed, config.root,
                                      config.layer_config(), config.progress)[1] for s in scenarios}


@dataclass(frozen=True)
class EvalConfig:
    """``safectrl safety eval``: closed loop on evaluation seeds, each policy raw and filtered."""

    models: str = MODELS_DIR  # folder of cost models, one sub-folder per scenario
    scenario: str = field(default="all", metadata={"choices": _SCENARIOS})  # where to run
    policy: tuple[str, ...] = field(default=tuple(POLICIES), metadata={"choices": tuple(POLICIES)})  # to wrap
    methods: tuple[str, ...] = field(default=("gd", "exact"), metadata={"choices": ("gd", "exact")})  # corrections
    episodes: int = field(default=5, metadata={"min": 1})  # evaluation seeds 0..
    trust: float = FilterSettings().trust  # λ of the trust term
    # optional rate limit per interval, kg/h and K
    rate: tuple[float, float] | None = field(default=None, metadata={"metavar": ("DF_I", "DT_C")})
    out: str | None = None  # output folder (default runs/safety-eval-TIMESTAMP)
    progress: bool = True  # progress bars


def run_eval(config: EvalConfig = EvalConfig()) -> tuple[str, Path]:
    """The closed-loop table and the folder it was written to (:func:`evaluate`, which writes config.json)."""
    set_torch_threads(1)
    out = Path(config.out) if config.out else options.timestamped("safety-eval")
    scenarios = list(pc.SCENARIOS) if config.scenario == "all" else [config.scenario]
    settings = FilterSettings(trust=config.trust, rate=config.rate)
    return evaluate(config.models, scenarios, config.policy, config.methods, config.episodes, settings, out,
                    config.progress), out


@dataclass(frozen=True)
class FigureConfig:
    """``safectrl safety figure``: the cost surface over the input box at one state of an episode."""

    models: str = MODELS_DIR  # folder of cost models, one sub-folder per scenario
    scenario: str = field(default="grade_down", metadata={"choices": tuple(pc.SCENARIOS)})  # the episode's
    policy: str = field(default="pi-dataset", metadata={"choices": tuple(POLICIES)})  # run unfiltered
    seed: int = field(default=0, metadata={"min": 0})  # evaluation seed of the episode
    step: int = field(default=20, metadata={"min": 0})  # interval of the episode
    trust: float = FilterSettings().trust  # λ of the trust term
    root: str | None = None  # Minari datasets folder (for the dataset's actions)
    out: str = "cost_surface.png"  # output file (PNG or PDF)


def run_figure(config: FigureConfig = FigureConfig()) -> dict[str, np.ndarray]:
    """Draw the figure of ``config`` to ``config.out``; the points drawn (one file, so no config.json)."""
    set_torch_threads(1)
    return figure_for_episode(config.models, config.scenario, config.policy, config.seed, config.step,
                              config.out, FilterSettings(trust=config.trust), root=config.root)


@dataclass(frozen=True)
class TuneConfig:
    """``safectrl safety tune``: choose H and λ by closed-loop cost on tuning seeds."""

    horizons: tuple[int, ...] = field(default=(1, 3, 10, 20, 30, 40, 60), metadata={"min": 1})  # H to try
    trusts: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)  # λ to try
    episodes: int = field(default=8, metadata={"min": 1})  # tuning seeds per scenario
    root: str | None = None  # Minari datasets folder
    out: str | None = None  # also write config.json and tune.md here
    progress: bool = True  # progress bars


def run_tune(config: TuneConfig = TuneConfig()) -> list[list]:
    """The rows of :func:`tune`; with ``out``, written there with ``config.json``."""
    set_torch_threads(1)
    if not config.out:
        return tune(config.horizons, config.trusts, config.episodes, root=config.root, progress=config.progress)
    with runfolder.single_run(config.out, "safety-tune", runfolder.record(config)) as out:
        rows = tune(config.horizons, config.trusts, config.episodes, root=config.root, progress=config.progress)
        (out / "tune.md").write_text(report.markdown_table(tune_headers(), rows) + "\n")
    return rows
