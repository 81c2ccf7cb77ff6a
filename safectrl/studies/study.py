"""The comparative study: every controller on every scenario and plant variant, with tables and figures.

Pipeline (``safectrl study``): offline datasets (cached by Minari id) -> trained artifacts (cached by a hash
of their configuration, see :mod:`safectrl.studies.artifacts`) -> closed-loop episodes, each an independent
task run by the chosen executor and stored the moment it finishes (see :mod:`safectrl.studies.executor`).
Evaluation seeds are disjoint from data and tuning seeds (:mod:`safectrl.rl.data`).

Plant variants: ``nominal`` (plant = model), ``mismatch`` (UA -20 %, dH +10 % in the plant only) and
``noise`` (measurement noise of SPEC §1). Every controller is designed or trained on the nominal model and
data; only the oracle NMPC is given the variant's true plant.

Output folder: ``config.json``, ``episodes.csv`` (one row per episode), ``summary.md`` (tables per variant),
figures (trajectories per variant, cost and offset distributions, violations) and ``tasks/`` (the stored
per-episode results that make a run resumable).
"""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import safectrl
from safectrl.controllers.pi import NOMINAL_TUNING, PIController, PITuning
from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.polycstr_env import PolyCSTREnv
from safectrl.rl.rollout import Episode, Policy, run_episode
from safectrl.studies import datasets, plots, report
from safectrl.studies.executor import Executor, ResultStore, Task, make_executor, run_tasks
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics


@dataclass(frozen=True)
class Variant:
    """The plant an episode runs on, and what the sensors add."""

    name: str
    plant: pc.PolyCSTRParams
    noise: bool
    description: str


VARIANTS = {
    v.name: v
    for v in (
        Variant("nominal", pc.PolyCSTRParams(), False, "plant = nominal model"),
        Variant("mismatch", pc.mismatched(), False, "plant UA -20 %, dH +10 % (controllers keep the nominal model)"),
        Variant("noise", pc.PolyCSTRParams(), True, "measurement noise, sigma A 2, P 0.5 kg/m³, T 0.2 K"),
    )
}


@dataclass(frozen=True)
class BuildContext:
    """What a controller is built from, inside the worker that runs its episode."""

    scenario: str
    variant: Variant
    seed: int
    seed_index: int  # position of the seed among the evaluation seeds
    preset: "StudyPreset"


@dataclass(frozen=True)
class ControllerSpec:
    """A controller of the study: a name and how to build it for one episode."""

    name: str
    build: Callable[[BuildContext], Policy]
    description: str


def _pi_nominal(ctx: BuildContext) -> Policy:
    return PIController(NOMINAL_TUNING)


def _dataset_tunings(scenario: str, preset: "StudyPreset") -> list[PITuning]:
    ds = data.load_dataset(datasets.dataset_id(scenario, preset.data_episodes, preset.data_seed))
    keys = ("Kp_P", "Ki_P", "Kp_T", "Ki_T")
    return [PITuning(**{k: float(m[k]) for k in keys}) for m in data.episode_metadata(ds)]


def _pi_dataset(ctx: BuildContext) -> Policy:
    tunings = _dataset_tunings(ctx.scenario, ctx.preset)
    return PIController(tunings[ctx.seed_index % len(tunings)])


CONTROLLERS: dict[str, ControllerSpec] = {
    c.name: c
    for c in (
        ControllerSpec("PI nominal", _pi_nominal, "decentralised PI, SIMC tuning (safectrl pi-tuning)"),
        ControllerSpec("PI dataset", _pi_dataset, "PI with the dataset's random tunings, one per evaluation seed"),
    )
}


@dataclass(frozen=True)
class StudyPreset:
    """Size of a study run. ``quick`` is the README demo and the CI test; ``full`` makes the published numbers."""

    name: str
    eval_seeds: int  # evaluation episodes per controller, scenario and variant
    data_episodes: int  # PI episodes per scenario in the offline datasets
    variants: tuple[str, ...]
    controllers: tuple[str, ...]
    data_seed: int = 0
    scenarios: tuple[str, ...] = tuple(pc.SCENARIOS)
    max_steps: int = pc.EPISODE_STEPS
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


PRESETS = {
    "quick": StudyPreset(
        "quick", eval_seeds=3, data_episodes=30, variants=("nominal", "mismatch"),
        controllers=("PI nominal", "PI dataset"),
    ),
    "full": StudyPreset(
        "full", eval_seeds=10, data_episodes=100, variants=("nominal", "mismatch", "noise"),
        controllers=("PI nominal", "PI dataset"),
    ),
}


def _episode_task(controller: str, scenario: str, variant: str, seed: int, seed_index: int,
                  preset: StudyPreset) -> dict[str, Any]:
    """One closed-loop episode; returns its metrics and trajectory (a ResultStore record)."""
    var = VARIANTS[variant]
    policy = CONTROLLERS[controller].build(BuildContext(scenario, var, seed, seed_index, preset))
    env = PolyCSTREnv(scenario=scenario, plant=var.plant, noise=var.noise, max_steps=preset.max_steps)
    ep = run_episode(env, policy, seed)
    return {
        "metrics": episode_metrics(ep).as_dict(),
        "actions": ep.actions,
        "rewards": ep.rewards,
        "terminations": ep.terminations,
        "truncations": ep.truncations,
        "decision_time": ep.decision_time,
        **{f"info_{k}": np.asarray(ep.infos[k]) for k in ("state", "setpoint", "violation", "failure")},
    }


def _episode_from_record(record: dict[str, Any], seed: int) -> Episode:
    infos = {k[5:]: v for k, v in record.items() if k.startswith("info_")}
    return Episode(seed=seed, observations=np.zeros((len(record["rewards"]) + 1, 0)),
                   actions=record["actions"], rewards=record["rewards"], terminations=record["terminations"],
                   truncations=record["truncations"], infos=infos, decision_time=record["decision_time"])


@dataclass
class StudyResults:
    """Everything a study produced, indexed by (variant, scenario, controller)."""

    preset: StudyPreset
    seeds: list[int]
    metrics: dict[tuple[str, str, str], list[EpisodeMetrics]]
    episodes: dict[tuple[str, str, str], list[Episode]]


def prepare_datasets(preset: StudyPreset, progress: bool = True) -> list[str]:
    """The offline datasets the preset needs (created once, then reused from Minari's folder)."""
    return [datasets.generate_dataset(s, preset.data_episodes, preset.data_seed, progress=progress)
            for s in preset.scenarios]


def run_episodes(preset: StudyPreset, executor: Executor, store: ResultStore, progress: bool = True) -> StudyResults:
    seeds = data.evaluation_seeds(preset.eval_seeds)
    tasks, index = [], {}
    for variant in preset.variants:
        for scenario in preset.scenarios:
            for controller in preset.controllers:
                for k, seed in enumerate(seeds):
                    key = f"episode/{variant}/{scenario}/{controller}/{seed}"
                    tasks.append(Task(key, _episode_task, (controller, scenario, variant, seed, k, preset)))
                    index[key] = (variant, scenario, controller, seed)
    records = run_tasks(tasks, executor, store, desc="episodes", progress=progress)
    metrics: dict[tuple[str, str, str], list[EpisodeMetrics]] = defaultdict(list)
    episodes: dict[tuple[str, str, str], list[Episode]] = defaultdict(list)
    for key in (t.key for t in tasks):
        variant, scenario, controller, seed = index[key]
        metrics[(variant, scenario, controller)].append(EpisodeMetrics(**records[key]["metrics"]))
        episodes[(variant, scenario, controller)].append(_episode_from_record(records[key], seed))
    return StudyResults(preset, seeds, dict(metrics), dict(episodes))


def summary_headers(reference: str) -> tuple[str, ...]:
    return ("scenario", "controller", "episodes", "cost (mean ± std)", f"cost / {reference}", "final |e_P| kg/m³",
            "final |e_T| K", "IAE_P kg/m³·h", "intervals T > T_max", "worst exceedance K", "runaways",
            "ms / decision")


def summary_rows(results: StudyResults, variant: str, reference: str) -> list[list[Any]]:
    """Table rows of one variant; costs also relative to ``reference`` on the same seeds (paired ratio)."""
    rows = []
    for scenario in results.preset.scenarios:
        ref = [m.cost for m in results.metrics.get((variant, scenario, reference), [])]
        for controller in results.preset.controllers:
            ms = results.metrics[(variant, scenario, controller)]
            ratio = report.mean_std([m.cost / r for m, r in zip(ms, ref)]) if ref else "n/a"
            rows.append([
                scenario, controller, len(ms), report.mean_std([m.cost for m in ms]), ratio,
                report.mean_std([m.final_abs_eP for m in ms]), report.mean_std([m.final_abs_eT for m in ms]),
                report.mean_std([m.iae_P for m in ms]), int(sum(m.violations for m in ms)),
                float(max(m.worst_exceedance for m in ms)), int(sum(m.failure for m in ms)),
                report.mean_std([m.decision_ms for m in ms], 2),
            ])
    return rows


def write_outputs(results: StudyResults, out_dir: Path, reference: str) -> str:
    """``episodes.csv``, ``summary.md`` and the figures; returns the markdown summary."""
    with open(out_dir / "episodes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        fields = list(EpisodeMetrics.__dataclass_fields__)
        writer.writerow(["variant", "scenario", "controller", "seed", *fields])
        for (variant, scenario, controller), ms in results.metrics.items():
            for seed, m in zip(results.seeds, ms):
                writer.writerow([variant, scenario, controller, seed, *(getattr(m, f) for f in fields)])
    parts = [f"# safectrl study, preset `{results.preset.name}`\n",
             f"safectrl {safectrl.__version__}; evaluation seeds {results.seeds[0]}..{results.seeds[-1]}; "
             f"datasets of {results.preset.data_episodes} PI episodes per scenario (dataset seed "
             f"{results.preset.data_seed}). Cost = -sum of rewards over the episode (a runaway is charged every "
             "remaining interval); final offsets are means over the last 10 h; `cost / {reference}` is the "
             "per-seed ratio; mean ± std over seeds.\n"]
    for variant in results.preset.variants:
        parts.append(f"## {variant}: {VARIANTS[variant].description}\n")
        parts.append(report.markdown_table(summary_headers(reference), summary_rows(results, variant, reference)))
        parts.append(f"\n![trajectories](trajectories_{variant}.png)\n")
        plots.trajectory_figure(
            {s: [plots.Trace(results.episodes[(variant, s, c)][0], c, color=f"C{i}", width=1.6)
                 for i, c in enumerate(results.preset.controllers)] for s in results.preset.scenarios},
            out_dir / f"trajectories_{variant}.png",
            title=f"{variant}: first evaluation seed ({results.seeds[0]}) of every controller",
        )
    plots.distribution_figure(results.metrics, results.preset.variants, results.preset.scenarios,
                              results.preset.controllers, out_dir / "distributions.png")
    parts.append("## Distributions over seeds\n\n![distributions](distributions.png)\n")
    text = "\n".join(parts)
    (out_dir / "summary.md").write_text(text)
    return text


def _check_out_dir(out_dir: Path, config: dict[str, Any], force: bool) -> None:
    cfg_file = out_dir / "config.json"
    config = json.loads(json.dumps(config))  # tuples become lists, as they come back from the file
    if cfg_file.exists() and not force:
        if json.loads(cfg_file.read_text()) != config:
            raise ValueError(f"{out_dir} holds a run with a different configuration; use another --out "
                             "or --force to start it afresh")
    if force and (out_dir / "tasks").exists():
        for f in (out_dir / "tasks").iterdir():
            f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(config, indent=2))


def run_study(preset: str = "quick", out: str | Path | None = None, force: bool = False,
              scheduler: str | None = None, workers: int | None = None, serial: bool = False,
              progress: bool = True) -> Path:
    """Run the study end to end and write its folder; rerunning with the same ``out`` resumes it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    out_dir = Path(out) if out is not None else Path("runs") / f"study-{preset}"
    config = {"preset": asdict(cfg), "eval_seeds": data.evaluation_seeds(cfg.eval_seeds),
              "nominal_pi": NOMINAL_TUNING.as_dict(), "safectrl": safectrl.__version__}
    _check_out_dir(out_dir, config, force)
    t0 = time.perf_counter()
    prepare_datasets(cfg, progress)
    executor = make_executor(scheduler, workers, serial)
    if progress:
        print(f"executor: {executor.name}")
    try:
        results = run_episodes(cfg, executor, ResultStore(out_dir / "tasks"), progress)
    finally:
        executor.close()
    text = write_outputs(results, out_dir, reference="PI nominal")
    if progress:
        print(text)
        print(f"\nwritten to {out_dir} in {time.perf_counter() - t0:.0f} s")
    return out_dir
