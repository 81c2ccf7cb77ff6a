"""The comparative study: every controller on every scenario and plant variant, with tables and figures.

Pipeline (``safectrl study``): offline datasets (cached by Minari id) -> trained artifacts (cached by a hash
of their configuration, see :mod:`safectrl.studies.artifacts`) -> closed-loop episodes, each an independent
task run by the chosen executor and stored the moment it finishes (see :mod:`safectrl.studies.executor`).
Evaluation seeds are disjoint from data and tuning seeds (:mod:`safectrl.rl.data`).

Controllers (:data:`CONTROLLERS`): nominal and dataset PI, oracle and mismatched NMPC, BC and IQL trained on
the scenario's PI dataset, the PICNN safety layer around them, and the predictive safety filter
(:mod:`safectrl.safety.psf`, predicting with the task's nominal model) around BC, IQL and the exact PICNN
layer (the ``+PSF`` rows). Training runs (one task per artifact and scenario) go through the same executor
before the episodes; their results are cached artifacts.

Your own controllers (``StudyPreset.custom_controllers``, ``safectrl study --controller NAME=pkg.mod:factory``)
are rows beside the built-in ones. Episodes run in spawned worker processes, so a controller travels as an
import string and the worker imports it: ``factory(ctx)`` is called once per episode with the episode's
:class:`BuildContext` (scenario, variant with its plant and noise flag, seed) and returns any object with
``reset(seed=None)`` and ``act(obs)`` (:class:`safectrl.common.protocol.DecisionMaker`).

Plant variants: ``nominal`` (plant = model), ``mismatch`` (UA -20 %, dH +10 % in the plant only),
``noise`` (measurement noise on A, P, T), ``mismatch+noise`` (both) and ``faults`` (lost readings). Every
controller is designed or trained on the nominal model and data; only the oracle NMPC is given the variant's
true plant.

A decision-maker with a callable ``episode_report()`` has its report's entries added to the episode's
metrics after the episode (extra ``episodes.csv`` columns): every built-in one reports ``fallbacks``, the
intervals it answered with its fallback instead of its decision (a held action or PI output, a safe input,
a shifted plan after a failed solve; a reading an estimator leaves out is not one, the NMPC and the
predictive safety filter decide on the prediction), shown per controller in the faults table; the
predictive safety filters' intervention statistics make a filter table per variant. One whose ``record``
has ``proposal``, ``applied`` and ``predicted`` (the predictive safety filter) has these stored with the
episode, the plans reduced to the first operating limit's output (the reactor: T).

A decision-maker warns once (:class:`~safectrl.common.faults.FallbackWarning`) when it first falls back or
leaves a reading out. Each episode records its warnings instead of printing them in its worker, and the
study gives one FallbackWarning after the episodes that lists, per variant and row, in how many episodes
each kind was raised and the first message (:func:`fallback_summary`); any other warning passes through.

Output folder: ``config.json``, ``episodes.csv`` (one row per episode), ``summary.md`` (tables per variant),
figures (trajectories per variant, cost and offset distributions, violations, ``psf_mismatch.png``: a +PSF row
on the mismatched plant) and ``tasks/`` (the stored per-episode results that make a run resumable).
"""

from __future__ import annotations

import csv
import functools
import importlib
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import safectrl
from safectrl.common import validation
from safectrl.common.faults import FallbackWarning
from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.pi import NOMINAL_TUNING, PIController, PITuning
from safectrl.models import registry
from safectrl.models.registry import get_task
from safectrl.models.task import Task as PlantTask
from safectrl.rl import data
from safectrl.rl.env import SensorFaults, TaskEnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.studies import artifacts, datasets, plots, report, runfolder
from safectrl.studies.executor import CONNECT_TIMEOUT, Executor, ResultStore, Task, make_executor, run_tasks
from safectrl.studies.metrics import FINAL_FRACTION, PER_HOUR, EpisodeMetrics, episode_metrics, metric_names


@dataclass(frozen=True)
class Variant:
    """The plant an episode runs on, and what the sensors add."""

    name: str
    plant: Any  # the parameter dataclass of the task's model
    noise: bool
    description: str
    faults: SensorFaults | None = None  # sensor faults the env injects


#: Share of measured values the ``faults`` variant loses (NaN readings).
FAULT_RATE = 0.02


def variants(task: PlantTask) -> dict[str, Variant]:
    """The plant variants of ``task``: ``nominal`` (plant = model), ``mismatch`` (the task's actual plant;
    controllers keep the nominal model), ``noise`` and ``mismatch+noise`` (the actual plant behind the noisy
    sensors) if the task defines sensor noise, and ``faults`` (the nominal plant with 2 % of the measured
    values lost)."""
    described = {"PolyCSTR": ("plant UA -20 %, dH +10 % (controllers keep the nominal model)",
                              "measurement noise, sigma A 2, P 0.5 kg/m³, T 0.2 K")}
    mismatch, noise = described.get(task.name, ("the task's actual plant (controllers keep the nominal model)",
                                                f"measurement noise, sigma {task.measurement_std}"))
    out = [Variant("nominal", task.nominal, False, "plant = nominal model"),
           Variant("mismatch", task.actual, False, mismatch)]
    if task.measurement_std is not None:
        out.append(Variant("noise", task.nominal, True, noise))
        out.append(Variant("mismatch+noise", task.actual, True, f"{mismatch}; {noise}"))
    out.append(Variant("faults", task.nominal, False, f"{FAULT_RATE:.0%} of the measured values lost (NaN), "
                       "independently per value and interval", SensorFaults(nan_rate=FAULT_RATE)))
    return {v.name: v for v in out}


@dataclass(frozen=True)
class BuildContext:
    """What a controller is built from, inside the worker that runs its episode."""

    scenario: str
    variant: Variant
    seed: int
    seed_index: int  # position of the seed among the evaluation seeds
    preset: "StudyPreset"

    @property
    def env(self) -> str:
        """The registered id of the task the episode runs on."""
        return self.preset.env

    @property
    def task(self) -> PlantTask:
        return self.preset.task


@dataclass(frozen=True)
class ControllerSpec:
    """A controller of the study: a name and how to build it for one episode."""

    name: str
    build: Callable[[BuildContext], DecisionMaker]
    description: str
    envs: tuple[str, ...] | None = None  # the task ids it can run on; None: any task

def _pi_nominal(ctx: BuildContext) -> DecisionMaker:
    return PIController(NOMINAL_TUNING)


def _dataset_tunings(scenario: str, preset: "StudyPreset") -> list[PITuning]:
    ds = data.load_dataset(datasets.dataset_id(scenario, preset.data_episodes, preset.data_seed))
    keys = ("Kp_P", "Ki_P", "Kp_T", "Ki_T")
    return [PITuning(**{k: float(m[k]) for k in keys}) for m in data.episode_metadata(ds)]


def _pi_dataset(ctx: BuildContext) -> DecisionMaker:
    tunings = _dataset_tunings(ctx.scenario, ctx.preset)
    return PIController(tunings[ctx.seed_index % len(tunings)])


def _nmpc_oracle(ctx: BuildContext) -> DecisionMaker:
    from safectrl.controllers.task_nmpc import nmpc_for

    return nmpc_for(ctx.env, ctx.variant.plant)


def _nmpc_mismatched(ctx: BuildContext) -> DecisionMaker:
    """The NMPC whose model is off from the plant it runs on: the nominal model on the actual plant, the
    actual plant's parameters on the nominal one (for the reactor: UA -20 %, dH +10 %)."""
    from safectrl.controllers.task_nmpc import nmpc_for

    task = ctx.task
    return nmpc_for(ctx.env, task.actual if ctx.variant.plant == task.nominal else task.nominal)


def _offline(algo: str) -> Callable[[BuildContext], DecisionMaker]:
    def build(ctx: BuildContext) -> DecisionMaker:
        from safectrl.rl.checkpoint import load_policy

        _torch_threads()
        return load_policy(policy_artifact(algo, ctx.scenario, ctx.preset))

    return build


def _filtered(algo: str, method: str) -> Callable[[BuildContext], DecisionMaker]:
    def build(ctx: BuildContext) -> DecisionMaker:
        from safectrl.safety.cost_model import load_cost_model
        from safectrl.studies import safety_layer

        model = load_cost_model(cost_model_artifact(ctx.scenario, ctx.preset))
        return safety_layer.make_filter(_offline(algo)(ctx), model, method)

    return build


def _psf(inner: Callable[[BuildContext], DecisionMaker]) -> Callable[[BuildContext], DecisionMaker]:
    """The predictive safety filter around the row ``inner``; it predicts with the task's nominal model (the
    one a controller can know), never with the variant's plant."""
    def build(ctx: BuildContext) -> DecisionMaker:
        from safectrl.safety.psf import predictive_safety_filter

        return predictive_safety_filter(inner(ctx), ctx.env)

    return build


def _torch_threads() -> None:
    import torch

    if torch.get_num_threads() != 1:  # one process per core: the executor parallelises, not torch
        torch.set_num_threads(1)


#: The rows that need the reactor's PI data (datasets, trained policies and cost models).
_REACTOR = ("safectrl/PolyCSTR-v0",)

CONTROLLERS: dict[str, ControllerSpec] = {
    c.name: c
    for c in (
        ControllerSpec("PI nominal", _pi_nominal, "decentralised PI, SIMC tuning (safectrl pi-tuning)", _REACTOR),
        ControllerSpec("PI dataset", _pi_dataset, "PI with the dataset's random tunings, one per evaluation seed",
                       _REACTOR),
        ControllerSpec("NMPC oracle", _nmpc_oracle, "NMPC (+ EKF on the reactor) whose model is the variant's plant"),
        ControllerSpec("NMPC mismatched", _nmpc_mismatched,
                       "NMPC whose model is off from the plant (the reactor: UA -20 %, dH +10 %)"),
        ControllerSpec("BC", _offline("bc"), "behaviour cloning on the scenario's PI dataset", _REACTOR),
        ControllerSpec("IQL", _offline("iql"), "implicit Q-learning on the scenario's PI dataset", _REACTOR),
        ControllerSpec("BC+PICNN (GD)", _filtered("bc", "gd"),
                       "BC corrected by the PICNN cost model, projected gradient descent", _REACTOR),
        ControllerSpec("IQL+PICNN (GD)", _filtered("iql", "gd"),
                       "IQL corrected by the PICNN cost model, projected gradient descent", _REACTOR),
        ControllerSpec("IQL+PICNN (exact)", _filtered("iql", "exact"),
                       "IQL corrected by the PICNN cost model, exact convex program (cvxpy)", _REACTOR),
        ControllerSpec("BC+PSF", _psf(_offline("bc")), "BC behind the predictive safety filter (nominal model)",
                       _REACTOR),
        ControllerSpec("IQL+PSF", _psf(_offline("iql")), "IQL behind the predictive safety filter (nominal model)",
                       _REACTOR),
        ControllerSpec("IQL+PICNN (exact)+PSF", _psf(_filtered("iql", "exact")),
                       "IQL+PICNN (exact) behind the predictive safety filter (nominal model)", _REACTOR),
    )
}

#: Controllers that need trained artifacts: name -> (policy algorithm or None, needs the cost model).
_NEEDS = {"BC": ("bc", False), "IQL": ("iql", False), "BC+PICNN (GD)": ("bc", True),
          "IQL+PICNN (GD)": ("iql", True), "IQL+PICNN (exact)": ("iql", True), "BC+PSF": ("bc", False),
          "IQL+PSF": ("iql", False), "IQL+PICNN (exact)+PSF": ("iql", True)}

ALL_CONTROLLERS = tuple(CONTROLLERS)


class StudyError(ValueError):
    """A study that cannot run as asked (the message says why, in one line)."""


class ControllerSpecError(StudyError):
    """A ``--controller NAME=package.module:factory`` that cannot be used (the message says why)."""


def parse_controller_option(text: str) -> tuple[str, str]:
    """``"NAME=package.module:factory"`` -> ``(NAME, "package.module:factory")``."""
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise ControllerSpecError(f"--controller {text!r}: expected NAME=package.module:factory")
    return name.strip(), target.strip()


def resolve_factory(target: str) -> Callable[[BuildContext], DecisionMaker]:
    """The callable named by ``"package.module:factory"`` (imported here, so in the worker that runs it)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ControllerSpecError(f"controller {target!r}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ControllerSpecError(f"controller {target!r}: cannot import {module_name!r} ({exc}); is it on "
                                  "PYTHONPATH (the workers import it too)?") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ControllerSpecError(f"controller {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ControllerSpecError(f"controller {target!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def _build_custom(name: str, target: str, ctx: BuildContext) -> DecisionMaker:
    controller = resolve_factory(target)(ctx)
    if not isinstance(controller, DecisionMaker):
        raise ControllerSpecError(f"controller {name!r} ({target}): the factory returned a "
                                  f"{type(controller).__name__}, which lacks reset(seed=None) or act(obs)")
    return controller


def controller_spec(name: str, preset: StudyPreset) -> ControllerSpec:
    """The built-in controller ``name``, or the preset's own controller of that name."""
    if name in CONTROLLERS:
        return CONTROLLERS[name]
    target = dict(preset.custom_controllers)[name]
    return ControllerSpec(name, functools.partial(_build_custom, name, target), f"your controller {target}")


def check_custom_controllers(preset: StudyPreset) -> None:
    """Raise :class:`ControllerSpecError` (one line) unless every custom controller can be built.

    Each factory is imported and called once here, for the preset's first scenario, variant and seed, so that
    a bad specification fails before any folder is written or worker started.
    """
    names = [name for name, _ in preset.custom_controllers]
    for name in names:
        if name in CONTROLLERS:
            raise ControllerSpecError(f"controller {name!r}: the name of a built-in row; choose another")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ControllerSpecError(f"controllers {duplicates} given more than once")
    if not preset.custom_controllers:
        return
    ctx = BuildContext(preset.scenarios[0], preset.variant_table[preset.variants[0]], data.evaluation_seeds(1)[0],
                       0, preset)
    for name, target in preset.custom_controllers:
        _build_custom(name, target, ctx)


@dataclass(frozen=True)
class StudyPreset:
    """Size of a study run. ``quick`` is the README demo and the CI test; ``full`` makes the published numbers.

    ``env`` is the registered task the study runs on (default: the polymerisation CSTR); ``scenarios``,
    ``controllers`` and ``max_steps`` left at None become all of the task's scenarios, every built-in row
    that can run on it, and its episode length.
    """

    name: str
    eval_seeds: int  # evaluation episodes per controller, scenario and variant
    data_episodes: int  # PI episodes per scenario in the offline datasets (the reactor's PI, BC, IQL rows)
    variants: tuple[str, ...]
    controllers: tuple[str, ...] | None = None  # built-in rows; None: every one that runs on the task
    data_seed: int = 0
    scenarios: tuple[str, ...] | None = None  # None: every scenario of the task
    max_steps: int | None = None  # intervals per episode; None: the task's episode length
    bc_steps: int | None = None  # gradient steps (None: BCConfig's default)
    iql_steps: int | None = None  # gradient steps (None: IQLConfig's default)
    cost_model_epochs: int | None = None  # None: the safety layer's default
    train_seed: int = 0  # initial weights and minibatches of every trained artifact
    reference: str = "NMPC oracle"  # the controller costs are divided by
    # your own rows: (name, "package.module:factory") pairs; a {name: target} mapping is accepted and stored
    # as pairs (hashable, and kept in config.json in the given order)
    custom_controllers: tuple[tuple[str, str], ...] = ()
    env: str = "safectrl/PolyCSTR-v0"  # the registered task
    # where worker processes find the task ("module:attribute", from the registry; filled in)
    env_target: str = ""

    def __post_init__(self) -> None:
        validation.positive_int("eval_seeds", self.eval_seeds)
        validation.positive_int("data_episodes", self.data_episodes)
        validation.integer("data_seed", self.data_seed, low=0)
        validation.integer("train_seed", self.train_seed, low=0)
        for name in ("max_steps", "bc_steps", "iql_steps", "cost_model_epochs"):
            if getattr(self, name) is not None:
                validation.positive_int(name, getattr(self, name))
        pairs = self.custom_controllers
        pairs = tuple(pairs.items()) if isinstance(pairs, Mapping) else tuple(tuple(p) for p in pairs)
        object.__setattr__(self, "custom_controllers", pairs)
        if self.env_target and self.env not in registry.TASKS:  # a worker process: the plant of the parent
            registry.register_task(self.env, self.env_target)
        task = get_task(self.env)
        object.__setattr__(self, "env_target", registry.TASKS[self.env])
        supported = [c for c, spec in CONTROLLERS.items() if spec.envs is None or self.env in spec.envs]
        if self.controllers is None:
            object.__setattr__(self, "controllers", tuple(supported))
        else:
            object.__setattr__(self, "controllers", tuple(self.controllers))
            unknown = [c for c in self.controllers if c not in CONTROLLERS]
            if unknown:
                raise ValueError(f"unknown controllers {unknown}; valid: {', '.join(CONTROLLERS)}")
            wrong = [c for c in self.controllers if c not in supported]
            if wrong:
                raise ValueError(f"controllers {wrong} cannot run on {self.env}; those that can: "
                                 f"{', '.join(supported)}")
        scenarios = tuple(task.scenarios) if self.scenarios is None else tuple(self.scenarios)
        for sc in scenarios:
            task.scenario(sc)  # a ValueError names the valid ones
        object.__setattr__(self, "scenarios", scenarios)
        if self.max_steps is None:
            object.__setattr__(self, "max_steps", task.episode_steps)
        valid = variants(task)
        bad = [v for v in self.variants if v not in valid]
        if bad:
            raise ValueError(f"variants {bad} are not defined for {task.name}; valid: {', '.join(valid)}")

    @property
    def task(self) -> PlantTask:
        """The task; in a worker process (which unpickles the preset) registered first from ``env_target``."""
        if self.env not in registry.TASKS:
            registry.register_task(self.env, self.env_target)
        return get_task(self.env)

    @property
    def variant_table(self) -> dict[str, Variant]:
        return variants(self.task)

    @property
    def rows(self) -> tuple[str, ...]:
        """Every controller of the study, built-in first, then your own, in table and figure order."""
        return (*self.controllers, *(name for name, _ in self.custom_controllers))

    @property
    def needs_data(self) -> bool:
        """Whether a row needs the PI datasets (the reactor's PI, BC, IQL and PICNN rows)."""
        return any(c in _NEEDS or c == "PI dataset" for c in self.controllers)


#: The +PSF rows the quick preset leaves out: at 40-250 ms per decision, all three made it take over 20 min.
QUICK_WITHOUT = ("BC+PSF", "IQL+PICNN (exact)+PSF")

PRESETS = {
    "quick": StudyPreset(
        "quick", eval_seeds=3, data_episodes=30, variants=("nominal", "mismatch", "faults"),
        controllers=tuple(c for c in CONTROLLERS if c not in QUICK_WITHOUT),
        bc_steps=3000, iql_steps=4000, cost_model_epochs=60,
    ),
    "full": StudyPreset("full", eval_seeds=10, data_episodes=100,
                        variants=("nominal", "mismatch", "noise", "mismatch+noise", "faults")),
}


# -- trained artifacts -------------------------------------------------------------------------------------


def policy_artifact_config(algo: str, scenario: str, preset: StudyPreset) -> dict[str, Any]:
    from safectrl.rl.bc import BCConfig
    from safectrl.rl.iql import IQLConfig

    cfg = {"bc": BCConfig, "iql": IQLConfig}[algo]()
    steps = preset.bc_steps if algo == "bc" else preset.iql_steps
    config = asdict(cfg)
    if config["precision"] == "float32":  # added later: artifacts trained before it keep their keys
        del config["precision"]
    return {"algo": algo, "scenario": scenario, "config": config, "steps": steps or cfg.steps,
            "seed": preset.train_seed, "dataset": datasets.dataset_id(scenario, preset.data_episodes, preset.data_seed),
            "safectrl": safectrl.__version__}


def cost_model_config(scenario: str, preset: StudyPreset):
    from safectrl.studies.safety_layer import SafetyLayerConfig

    cfg = SafetyLayerConfig()
    return replace(cfg, train=replace(cfg.train, epochs=preset.cost_model_epochs or cfg.train.epochs,
                                      seed=preset.train_seed))


def cost_model_artifact_config(scenario: str, preset: StudyPreset) -> dict[str, Any]:
    return {"scenario": scenario, "config": asdict(cost_model_config(scenario, preset)),
            "dataset": datasets.dataset_id(scenario, preset.data_episodes, preset.data_seed),
            "safectrl": safectrl.__version__}


def policy_artifact(algo: str, scenario: str, preset: StudyPreset) -> Path:
    return _built(artifacts.artifact_path(f"{algo}-policy", policy_artifact_config(algo, scenario, preset)))


def cost_model_artifact(scenario: str, preset: StudyPreset) -> Path:
    return _built(artifacts.artifact_path("cost-model", cost_model_artifact_config(scenario, preset)))


def ensure_artifact(kind: str, scenario: str, preset: StudyPreset) -> Path:
    """The folder of the preset's artifact ``kind`` ("bc-policy", "iql-policy", "cost-model") of ``scenario``,
    trained here if it is not in the cache yet (the same artifact the study's rows load)."""
    return Path(str(_train_task(kind, scenario, preset, False)["path"]))


def _built(path: Path) -> Path:
    if not (path / artifacts.MARKER).exists():
        raise FileNotFoundError(f"artifact {path} is missing: the study trains it before its episodes run")
    return path


def _train_task(kind: str, scenario: str, preset: StudyPreset, force: bool) -> dict[str, Any]:
    """Train one artifact (a BC/IQL policy or a cost model) unless cached; a ResultStore record."""
    from safectrl.studies import offline, safety_layer

    _torch_threads()
    t0 = time.perf_counter()
    if kind == "cost-model":
        def build(folder: Path) -> None:
            safety_layer.train_for_scenario(scenario, folder, preset.data_episodes, preset.data_seed,
                                            config=cost_model_config(scenario, preset), progress=False)

        path = artifacts.build_artifact(kind, cost_model_artifact_config(scenario, preset), build, force)
    else:
        algo = kind.split("-")[0]
        cfg = policy_artifact_config(algo, scenario, preset)

        def build(folder: Path) -> None:
            offline.train_policy(algo, [scenario], steps=cfg["steps"], seed=preset.train_seed, out=folder,
                                 episodes=preset.data_episodes, dataset_seed=preset.data_seed, progress=False)

        path = artifacts.build_artifact(kind, cfg, build, force)
    return {"path": np.array(str(path)), "seconds": np.array(time.perf_counter() - t0)}


def _artifact_kinds(preset: StudyPreset) -> list[str]:
    """The kinds of artifact the preset's controllers need, longest to train first (IQL), so that the
    pool stays busy."""
    kinds = set()
    for controller in preset.controllers:
        if controller in _NEEDS:
            algo, picnn = _NEEDS[controller]
            kinds.add(f"{algo}-policy")
            if picnn:
                kinds.add("cost-model")
    order = {"iql-policy": 0, "cost-model": 1, "bc-policy": 2}
    return sorted(kinds, key=order.__getitem__)


def artifact_ids(preset: StudyPreset) -> dict[str, str]:
    """``kind/scenario`` -> the cache name (kind and config hash) of every artifact the preset uses.

    Part of a run folder's ``config.json``: a changed artifact definition (a new default, a new
    safectrl version) makes the folder refuse to resume with episodes of the old artifacts.
    """
    ids = {}
    for kind in _artifact_kinds(preset):
        for scenario in preset.scenarios:
            cfg = (cost_model_artifact_config(scenario, preset) if kind == "cost-model"
                   else policy_artifact_config(kind.split("-")[0], scenario, preset))
            ids[f"{kind}/{scenario}"] = artifacts.artifact_path(kind, cfg).name
    return ids


def train_artifacts(preset: StudyPreset, executor: Executor, store: ResultStore, force: bool = False,
                    progress: bool = True, alongside: Sequence[Task] = ()) -> dict[str, Path]:
    """Every policy and cost model the preset's controllers need, as independent tasks; key -> folder.

    ``alongside``: further tasks (episodes that need no trained artifact) queued behind the training runs in
    the same executor, so that no worker idles while the last, longest training runs finish.
    """
    tasks = [Task(f"train/{kind}/{scenario}", _train_task, (kind, scenario, preset, force))
             for kind in _artifact_kinds(preset) for scenario in preset.scenarios]
    if not tasks:
        return {}
    desc = "training and the episodes that need none" if alongside else "training"
    results = run_tasks([*tasks, *alongside], executor, store, desc=desc, progress=progress)
    return {t.key: Path(str(results[t.key]["path"])) for t in tasks}


def _episode_task(controller: str, scenario: str, variant: str, seed: int, seed_index: int,
                  preset: StudyPreset) -> dict[str, Any]:
    """One closed-loop episode; returns its metrics and trajectory (a ResultStore record)."""
    var = preset.variant_table[variant]
    policy = controller_spec(controller, preset).build(BuildContext(scenario, var, seed, seed_index, preset))
    env = TaskEnv(preset.task, scenario=scenario, plant=var.plant, noise=var.noise, max_steps=preset.max_steps,
                  faults=var.faults)
    ep, fallback_warnings = _run_recording_fallbacks(env, policy, seed)
    metrics = episode_metrics(ep, preset.task).as_dict()
    metrics.update(_filter_statistics(controller, policy, metrics))
    return {
        "metrics": metrics,
        "actions": ep.actions,
        "rewards": ep.rewards,
        "terminations": ep.terminations,
        "truncations": ep.truncations,
        "decision_time": ep.decision_time,
        FALLBACK_WARNINGS: fallback_warnings,
        **{f"info_{k}": np.asarray(ep.infos[k]) for k in ("state", "setpoint", "violation", "failure")},
        **_filter_trace(policy, preset.task),
    }


#: The record entry of the FallbackWarning messages an episode raised (a list of strings, in order).
FALLBACK_WARNINGS = "fallback_warnings"


def _run_recording_fallbacks(env: TaskEnv, policy: Any, seed: int) -> tuple[Episode, list[str]]:
    """The episode, and the messages of the FallbackWarnings raised during it, every one of them (a
    decision-maker warns once per object, and one object runs one episode). Other warnings are given again
    as they were raised, to the filters outside."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        ep = run_episode(env, policy, seed)
    messages = []
    for w in caught:
        if issubclass(w.category, FallbackWarning):
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return ep, messages


def fallback_summary(warned: Mapping[tuple[str, str], Sequence[Sequence[str]]]) -> str | None:
    """One message for the FallbackWarnings of a study's episodes; ``None`` if there were none.

    ``warned``: (variant, row) -> per episode, the messages it raised. Per variant and row (in the mapping's
    order), each kind of warning (the decision-maker that raised it: the text before the first colon) gets
    one line with the episodes that raised it out of the row's episodes, and the first of its messages with
    its whitespace collapsed.
    """
    lines, episodes, raised = [], 0, 0
    for (variant, row), per_episode in warned.items():
        episodes += len(per_episode)
        raised += sum(1 for messages in per_episode if messages)
        kinds: dict[str, list[str]] = {}
        for messages in per_episode:
            first: dict[str, str] = {}
            for message in messages:
                first.setdefault(message.split(":", 1)[0], message)
            for kind, message in first.items():
                kinds.setdefault(kind, []).append(message)
        for kind, messages in kinds.items():
            first_message = " ".join(messages[0].split())  # one line (a NumPy array prints on several)
            lines.append(f"  {variant} / {row}: {len(messages)} of {len(per_episode)} episodes; the first: "
                         f"{first_message}")
    if not lines:
        return None
    return (f"{raised} of {episodes} episodes fell back or left readings out (their fallbacks are counted in "
            "episodes.csv and in summary.md's faults table):\n" + "\n".join(lines))


def _filter_statistics(controller: str, policy: Any, metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The entries of ``policy.episode_report()`` if it has one (every built-in decision-maker), else none."""
    report_fn = getattr(policy, "episode_report", None)
    if not callable(report_fn):
        return {}
    out: dict[str, float | int] = {}
    for name, value in dict(report_fn()).items():
        if name in metrics:
            raise StudyError(f"controller {controller!r}: its episode_report() entry {name!r} is also an "
                             "episode metric")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise StudyError(f"controller {controller!r}: episode_report()[{name!r}] is a "
                             f"{type(value).__name__}, not a number")
        out[name] = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return out


#: Prefix of the record entries of a filter's proposal, applied input and predicted limit output.
FILTER_TRACE = "filter_"


def _filter_trace(policy: Any, task: PlantTask) -> dict[str, np.ndarray]:
    """``filter_proposal``, ``filter_applied`` ((steps, nu), physical units) and ``filter_predicted``
    ((steps, horizon + 1), the first operating limit's output along each step's plan, with the nominal
    model's parameters) of a policy whose ``record`` has ``proposal``, ``applied`` and ``predicted`` (the
    predictive safety filter); none for the others or a task without limits. Only the limit's output of the
    plans is kept, to keep the stored episode small."""
    record = getattr(policy, "record", None)
    if not task.limits or not all(hasattr(record, k) for k in ("proposal", "applied", "predicted")):
        return {}
    limit = task.limits[0]
    predicted = [np.asarray(limit.value(np.asarray(x, dtype=float), task.nominal, task.states), dtype=float)
                 for x in record.predicted]
    return {f"{FILTER_TRACE}proposal": np.asarray(record.proposal, dtype=float),
            f"{FILTER_TRACE}applied": np.asarray(record.applied, dtype=float),
            f"{FILTER_TRACE}predicted": np.asarray(predicted, dtype=float)}


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
    # (variant, scenario, controller) -> per seed, the filter's stored trace (see _filter_trace); rows with one
    filter_traces: dict[tuple[str, str, str], list[dict[str, np.ndarray]]] = field(default_factory=dict)


def prepare_datasets(preset: StudyPreset, progress: bool = True) -> list[str]:
    """The offline datasets the preset needs (created once, then reused from Minari's folder)."""
    if not preset.needs_data:
        return []
    return [datasets.generate_dataset(s, preset.data_episodes, preset.data_seed, progress=progress)
            for s in preset.scenarios]


def episode_tasks(preset: StudyPreset) -> tuple[list[Task], dict[str, tuple[str, str, str, int]]]:
    """Every evaluation episode of the preset as a task; key -> (variant, scenario, controller, seed)."""
    seeds = data.evaluation_seeds(preset.eval_seeds)
    tasks, index = [], {}
    for variant in preset.variants:
        for scenario in preset.scenarios:
            for controller in preset.rows:
                for k, seed in enumerate(seeds):
                    key = f"episode/{variant}/{scenario}/{controller}{_row_version(controller, preset)}/{seed}"
                    tasks.append(Task(key, _episode_task, (controller, scenario, variant, seed, k, preset)))
                    index[key] = (variant, scenario, controller, seed)
    return tasks, index


def _row_version(controller: str, preset: StudyPreset) -> str:
    """What a stored episode's key adds for a row whose configuration lives in code, not in the preset: the
    +PSF rows carry the fingerprint of the filter's configuration of the plant, so that a run resumed after
    that configuration changed (a new back-off, say) reruns them instead of reading stale episodes."""
    return "@psf-" + runfolder.psf_fingerprint(preset.env) if controller.endswith("+PSF") else ""


def run_episodes(preset: StudyPreset, executor: Executor, store: ResultStore, progress: bool = True) -> StudyResults:
    seeds = data.evaluation_seeds(preset.eval_seeds)
    tasks, index = episode_tasks(preset)
    records = run_tasks(tasks, executor, store, desc="episodes", progress=progress)
    metrics: dict[tuple[str, str, str], list[EpisodeMetrics]] = defaultdict(list)
    episodes: dict[tuple[str, str, str], list[Episode]] = defaultdict(list)
    traces: dict[tuple[str, str, str], list[dict[str, np.ndarray]]] = defaultdict(list)
    warned: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for key in (t.key for t in tasks):
        variant, scenario, controller, seed = index[key]
        warned[(variant, controller)].append(list(records[key].get(FALLBACK_WARNINGS, ())))  # older runs: none
        metrics[(variant, scenario, controller)].append(EpisodeMetrics(**records[key]["metrics"]))
        episodes[(variant, scenario, controller)].append(_episode_from_record(records[key], seed))
        trace = {k[len(FILTER_TRACE):]: v for k, v in records[key].items() if k.startswith(FILTER_TRACE)}
        if trace:
            traces[(variant, scenario, controller)].append(trace)
    message = fallback_summary(warned)
    if message is not None:
        warnings.warn(message, FallbackWarning, stacklevel=2)
    return StudyResults(preset, seeds, dict(metrics), dict(episodes), dict(traces))


def summary_rows(results: StudyResults, variant: str, reference: str) -> list[list[Any]]:
    """Table rows of one variant; costs also relative to ``reference`` on the same seeds (paired ratio)."""
    rows = []
    for scenario in results.preset.scenarios:
        by_controller = {c: results.metrics[(variant, scenario, c)] for c in results.preset.rows}
        rows += report.controller_rows(scenario, by_controller, reference, results.preset.task)
    return rows


#: The paper's claim the study checks: the corrected IQL beats PI, BC and IQL without violating T_max.
HEADLINE_CONTROLLER = "IQL+PICNN (exact)"
HEADLINE_BASELINES = ("PI nominal", "PI dataset", "BC", "IQL")
HEADLINE_HEADERS = ("variant", "scenario", "holds", f"{HEADLINE_CONTROLLER} cost", "beaten by (mean cost)",
                    "intervals T > T_max")


def headline_rows(results: StudyResults) -> list[list[Any]]:
    """One row per variant and scenario: does the headline hold, and if not, what breaks it."""
    controllers = results.preset.controllers
    if HEADLINE_CONTROLLER not in controllers:
        return []
    baselines = [c for c in HEADLINE_BASELINES if c in controllers]
    rows = []
    for variant in results.preset.variants:
        for scenario in results.preset.scenarios:
            ms = results.metrics[(variant, scenario, HEADLINE_CONTROLLER)]
            cost = float(np.mean([m.cost for m in ms]))
            better = [f"{c} ({np.mean([m.cost for m in results.metrics[(variant, scenario, c)]]):.4g})"
                      for c in baselines
                      if np.mean([m.cost for m in results.metrics[(variant, scenario, c)]]) < cost]
            violations = int(sum(m.violations for m in ms))
            rows.append([variant, scenario, "yes" if not better and violations == 0 else "no", f"{cost:.4g}",
                         ", ".join(better) or "-", violations])
    return rows


def extra_metric_names(results: StudyResults) -> list[str]:
    """Metric names beyond the task's (a filter's ``episode_report()`` entries), in order of appearance."""
    known = set(metric_names(results.preset.task))
    extra: dict[str, None] = {}
    for ms in results.metrics.values():
        for m in ms:
            extra.update((k, None) for k in m if k not in known)
    return list(extra)


def filter_rows(results: StudyResults, variant: str) -> list[list[Any]]:
    """Rows of :func:`~safectrl.studies.report.filter_headers` of one variant: the rows whose every episode
    reported filter statistics (``interventions``); empty without any."""
    rows = []
    for scenario in results.preset.scenarios:
        by_controller = {c: results.metrics[(variant, scenario, c)] for c in results.preset.rows}
        rows += report.filter_rows(scenario, {c: ms for c, ms in by_controller.items()
                                              if ms and all("interventions" in m for m in ms)},
                                   results.preset.task)
    return rows


def psf_figure_row(results: StudyResults) -> tuple[str, str] | None:
    """(first scenario, first row with a stored filter trace) on the ``mismatch`` variant, if there is one."""
    if "mismatch" not in results.preset.variants or not results.preset.task.limits:
        return None
    scenario = results.preset.scenarios[0]
    for controller in results.preset.rows:
        if results.filter_traces.get(("mismatch", scenario, controller)):
            return scenario, controller
    return None


FAULT_HEADERS = ("scenario", "controller", "episodes finished", "failures", "fallbacks / episode",
                 "cost without faults", "cost with faults", "cost ratio (per seed)")


def fault_rows(results: StudyResults) -> list[list[Any]]:
    """Per scenario and controller: episodes run to the end (or to a failure of the plant), the intervals
    answered with the controller's fallback (its ``episode_report()``'s ``fallbacks``; "-" for a controller
    that reports none), and the cost of the ``faults`` variant against the ``nominal`` one on the same
    seeds; empty without both variants."""
    if not {"faults", "nominal"} <= set(results.preset.variants):
        return []
    rows = []
    for scenario in results.preset.scenarios:
        for controller in results.preset.rows:
            clean = results.metrics[("nominal", scenario, controller)]
            faulty = results.metrics[("faults", scenario, controller)]
            finished = sum(m.length == results.preset.max_steps or m.failure for m in faulty)
            held = [m.get("fallbacks") for m in faulty]
            fallbacks = "-" if any(h is None for h in held) else report.mean_std(held)
            rows.append([scenario, controller, f"{finished}/{len(faulty)}", int(sum(m.failure for m in faulty)),
                         fallbacks, report.mean_std([m.cost for m in clean]),
                         report.mean_std([m.cost for m in faulty]),
                         report.mean_std([f.cost / c.cost for f, c in zip(faulty, clean)])])
    return rows


def write_outputs(results: StudyResults, out_dir: Path, reference: str) -> str:
    """``episodes.csv``, ``summary.md`` and the figures; returns the markdown summary."""
    with open(out_dir / "episodes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        fields = list(metric_names(results.preset.task))
        extra = extra_metric_names(results)
        writer.writerow(["variant", "scenario", "controller", "seed", *fields, *extra])
        for (variant, scenario, controller), ms in results.metrics.items():
            for seed, m in zip(results.seeds, ms):
                writer.writerow([variant, scenario, controller, seed, *(m[f] for f in fields),
                                 *(m.get(f, "") for f in extra)])
    task = results.preset.task
    window = max(1, round(FINAL_FRACTION * task.episode_steps))
    span = window * task.model.dt / PER_HOUR[task.time_unit]
    data_note = (f"datasets of {results.preset.data_episodes} PI episodes per scenario (dataset seed "
                 f"{results.preset.data_seed}). " if results.preset.needs_data else "")
    parts = [f"# safectrl study, preset `{results.preset.name}`, {task.name} (`{results.preset.env}`)\n",
             f"safectrl {safectrl.__version__}; evaluation seeds {results.seeds[0]}..{results.seeds[-1]}; "
             f"{data_note}Cost = -sum of rewards over the episode (a failure is charged by the task's failure "
             f"reward); final offsets are means over the last {window} intervals ({span:g} h); "
             f"`cost / {reference}` is the per-seed ratio; mean ± std over seeds.\n"]
    for variant in results.preset.variants:
        parts.append(f"## {variant}: {results.preset.variant_table[variant].description}\n")
        rows = summary_rows(results, variant, reference)
        parts.append(report.markdown_table(report.summary_headers(reference, results.preset.task), rows))
        filtered = filter_rows(results, variant)
        if filtered:
            parts.append(f"\nSafety filters on {variant}: share of steps whose applied input differs from the "
                         "policy's proposal (the filter's own threshold), mean |u - a| per input, fallbacks "
                         "per episode; mean ± std over seeds.\n")
            parts.append(report.markdown_table(report.filter_headers(task), filtered))
        parts.append(f"\n![trajectories](trajectories_{variant}.png)\n")
        plots.trajectory_figure(
            {s: [plots.Trace(results.episodes[(variant, s, c)][0], c, color=f"C{i}", width=1.6)
                 for i, c in enumerate(results.preset.rows)] for s in results.preset.scenarios},
            out_dir / f"trajectories_{variant}.png",
            title=f"{variant}: first evaluation seed ({results.seeds[0]}) of every controller", task=task,
        )
    plots.distribution_figure(results.metrics, results.preset.variants, results.preset.scenarios,
                              results.preset.rows, out_dir / "distributions.png", task=task)
    parts.append("## Distributions over seeds\n\n![distributions](distributions.png)\n")
    psf_row = psf_figure_row(results)
    if psf_row is not None:
        scenario, controller = psf_row
        fig = plots.filter_figure(results.episodes[("mismatch", scenario, controller)][0],
                                  results.filter_traces[("mismatch", scenario, controller)][0], task=task,
                                  title=f"{controller} on the mismatched plant, {scenario}, seed {results.seeds[0]}")
        plots.save_figure(fig, out_dir / "psf_mismatch.png")
        parts.append(f"## Predictive safety filter on the mismatched plant\n\n{controller}, {scenario}, first "
                     "evaluation seed: the policy's proposal and the applied input, and the filter's predicted "
                     f"{task.limits[0].name} at four steps.\n\n![psf](psf_mismatch.png)\n")
    faults = fault_rows(results)
    if faults:
        parts.append(f"## Sensor faults\n\n{results.preset.variant_table['faults'].description}: does every "
                     "controller finish every episode, on how many intervals did it answer with its "
                     "fallback instead of its decision (a held action or PI output, a safe input, a shifted "
                     "plan; the NMPC and the PSF decide on their estimator's prediction of a lost reading), "
                     "and what do the lost readings cost against the fault-free nominal plant (same "
                     "seeds)?\n")
        parts.append(report.markdown_table(FAULT_HEADERS, faults) + "\n")
    headline = headline_rows(results)
    if headline:
        parts.append(f"## The paper's headline\n\nIs {HEADLINE_CONTROLLER} at least as good (mean cost) as "
                     f"{', '.join(HEADLINE_BASELINES)}, with no interval above T_max?\n")
        parts.append(report.markdown_table(HEADLINE_HEADERS, headline))
    text = "\n".join(parts)
    (out_dir / "summary.md").write_text(text)
    return text


#: The kind recorded in this study's run folders (:mod:`safectrl.studies.runfolder`).
KIND = "comparative"


def report_set_aside(store: ResultStore) -> None:
    """The end-of-run line on corrupt task files that were moved aside and recomputed (if any)."""
    if store.set_aside:
        print(f"{len(store.set_aside)} corrupt task file(s) moved to {store.root / 'corrupt'} and recomputed")


def run_study(preset: str | StudyPreset = "quick", out: str | Path | None = None, force: bool = False,
              scheduler: str | None = None, workers: int | None = None, serial: bool = False,
              progress: bool = True, controllers: Mapping[str, str] | None = None,
              connect_timeout: float = CONNECT_TIMEOUT) -> Path:
    """Run the study end to end and write its folder; rerunning with the same ``out`` resumes it.

    Args:
        preset: a name of :data:`PRESETS` or a :class:`StudyPreset` of your own.
        out: run folder (default ``runs/study-<preset>``).
        force: retrain the artifacts and rerun every episode (a folder of another study is still refused).
        scheduler, workers, serial, connect_timeout: the executor (see
            :func:`~safectrl.studies.executor.make_executor`).
        progress: print progress and the summary.
        controllers: your own rows, ``{name: "package.module:factory"}``, added to the preset's
            ``custom_controllers`` (see the module docstring for what the factory receives).
    """
    if isinstance(preset, StudyPreset):
        cfg = preset
    elif preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if controllers:
        cfg = replace(cfg, custom_controllers=(*cfg.custom_controllers, *controllers.items()))
    if not serial and registry.TASKS[cfg.env].startswith("<"):
        raise ValueError(f"{cfg.env} was registered as a Task object, which worker processes cannot import; "
                         "register it as 'module:attribute' or run with serial=True")
    check_custom_controllers(cfg)
    default_name = f"study-{cfg.name}" if cfg.env == StudyPreset.__dataclass_fields__["env"].default else \
        f"study-{cfg.task.name}-{cfg.name}"
    out_dir = Path(out) if out is not None else Path("runs") / default_name
    config = {"preset": asdict(cfg), "eval_seeds": data.evaluation_seeds(cfg.eval_seeds),
              "nominal_pi": NOMINAL_TUNING.as_dict(), "safectrl": safectrl.__version__,
              "artifacts": artifact_ids(cfg)}
    folder = runfolder.check(out_dir, KIND, config, force, resumable=True)
    t0 = time.perf_counter()
    executor = make_executor(scheduler, workers, serial, connect_timeout)  # connects: nothing written yet
    try:
        with runfolder.cleanup_on_failure(folder):
            runfolder.commit(folder)
            prepare_datasets(cfg, progress)
            if progress:
                print(f"executor: {executor.name}")
            store = ResultStore(out_dir / runfolder.TASKS)
            tasks, index = episode_tasks(cfg)
            untrained = [t for t in tasks if index[t.key][2] not in _NEEDS]  # PI and NMPC: no artifact to wait for
            train_artifacts(cfg, executor, store, force, progress, alongside=untrained)
            results = run_episodes(cfg, executor, store, progress)
    finally:
        executor.close()
    reference = cfg.reference if cfg.reference in cfg.rows else cfg.rows[0]
    text = write_outputs(results, out_dir, reference=reference)
    if progress:
        print(text)
        print(f"\nwritten to {out_dir} in {time.perf_counter() - t0:.0f} s")
        report_set_aside(store)
    return out_dir


@dataclass(frozen=True)
class StudyConfig:
    """What ``safectrl study`` runs: a preset, your own rows, the run folder and the executor."""

    # quick: minutes on 2 cores (README); full: the published numbers
    preset: str = field(default="quick", metadata={"choices": tuple(PRESETS)})
    # the plant: a registered id, or ID=package.module:TASK for a plant defined in another package
    env: str = field(default="safectrl/PolyCSTR-v0", metadata={"metavar": "ID[=package.module:TASK]"})
    out: str | None = None  # output folder (default: runs/study-PRESET); an existing run there is resumed
    force: bool = False  # rebuild cached artifacts and rerun every episode
    # your own controller as a row: factory(ctx) returns an object with reset(seed=None) and act(obs); repeatable
    controller: tuple[str, ...] = field(default=(), metadata={"repeat": True,
                                                              "metavar": "NAME=package.module:factory"})
    # send tasks to this running Dask scheduler
    scheduler: str | None = field(default=None, metadata={"group": "executor", "metavar": "tcp://HOST:PORT"})
    # start a local Dask cluster with this many worker processes
    workers: int | None = field(default=None, metadata={"group": "executor", "min": 1})
    serial: bool = field(default=False, metadata={"group": "executor"})  # run every task in this process
    connect_timeout: float = CONNECT_TIMEOUT  # seconds to wait for the --scheduler to answer
    progress: bool = True  # print progress and the summary

    def __post_init__(self) -> None:
        validation.positive("connect_timeout", self.connect_timeout)


def run(config: StudyConfig = StudyConfig()) -> Path:
    """Run the comparative study of ``config``; its folder (with ``config.json``) is returned."""
    pairs = [parse_controller_option(text) for text in config.controller]
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ControllerSpecError(f"--controller: a name given twice in {names}")
    env_id, sep, target = config.env.partition("=")
    try:
        if sep:
            from safectrl.rl import register_task

            register_task(env_id, target)
        get_task(env_id)  # a ValueError lists the registered ids
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise StudyError(f"--env {config.env!r}: {exc}") from None
    preset = config.preset
    if env_id != StudyPreset.__dataclass_fields__["env"].default:
        base = PRESETS[preset]
        defined = variants(get_task(env_id))
        preset = replace(base, env=env_id, variants=tuple(v for v in base.variants if v in defined),
                         controllers=None, scenarios=None, max_steps=None, env_target="")
    return run_study(preset, config.out, force=config.force, scheduler=config.scheduler,
                     workers=config.workers, serial=config.serial, progress=config.progress,
                     controllers=dict(pairs), connect_timeout=config.connect_timeout)
