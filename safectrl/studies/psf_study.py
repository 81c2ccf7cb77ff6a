"""Choose the predictive safety filter's temperature back-off for the reactor on tuning seeds.

The filter (:mod:`safectrl.safety.psf`) plans with T <= T_max - c. What c has to absorb is the error of the
filter's one-interval prediction of T, from the EKF's estimate with the nominal model and the estimated UA
and propagation factor, when the plant is not the model and the sensors are noisy: the filter keeps a
policy that pushes against the limit *at* T_max - c, so the plant's T ends an interval at T_max - c plus
that error. At c = 1.5 K (the NMPC's back-off, and the filter's first choice) the comparative study's full
preset ended one interval of BC+PSF on the mismatched plant with noise 0.50 K above T_max.

:func:`backoff_study` runs, for every candidate back-off, the filter behind three kinds of policy on the
mismatched plant without and with measurement noise: always the most heat, corners of the input box held for
random numbers of intervals (uniformly random inputs average to the middle of the box and never reach
T_max), and the comparative study's BC policy of the scenario (full preset; a learned policy that proposes
safe and unsafe inputs in turn, where the full preset's exceedance was). Seeds are tuning seeds
(``TUNING_SEED_OFFSET + k``), never evaluation seeds. The choice is the smallest back-off whose worst
peak T over all of them stays :data:`BACKOFF_MARGIN` below T_max; the table also gives the one-interval
prediction errors of T at the steps where the applied plan rode the tightened limit.

``safectrl safety psf-backoff-study`` runs it (resumable: one stored task per episode).

:func:`run_tightening` (``safectrl safety psf-tightening-study --env ENV_ID``) asks the same of any registered
task whose filter tightens its limits (the RL-ACR tasks' margins in :data:`safectrl.safety.psf.DEFAULTS`):
for multiples of that tightening, the filter behind corners of the input box held for random numbers of
intervals and behind uniformly random inputs, on the task's actual plant (with its sensor noise too, where
it has one), tuning seeds. Per setting: failures, intervals outside a limit, the smallest distance inside
each limit, and where the applied plan rode a tightened limit, how far the plant ended beyond the plan's
one-interval prediction towards the limit (what the tightening has to absorb). The smallest multiple from
which on every multiple tried has no failure, no interval outside, and a margin of at least a quarter of
the tightening left on every limit is reported, not applied.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from safectrl.common import validation
from safectrl.common.faults import FallbackWarning
from safectrl.models import polycstr as pc
from safectrl.rl.data import TUNING_SEED_OFFSET
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode
from safectrl.studies import options, report, runfolder
from safectrl.studies.executor import ResultStore, Task, make_executor, run_tasks

ENV = "safectrl/PolyCSTR-v0"
KIND = "psf-backoff"
#: Back-offs tried, K (1.5 K: the NMPC's, the filter's first choice).
BACKOFFS = (1.5, 2.0, 2.5, 3.0)
#: The worst peak T must stay this far below T_max (the NMPC's study uses the same margin).
BACKOFF_MARGIN = 0.25
POLICIES = ("most heat", "bang-bang", "BC")
VARIANTS = ("mismatch", "mismatch+noise")
#: A step "rides the limit" when its plan's predicted T after one interval is within this of T_max - c.
RIDING = 0.5


class MostHeat:
    """Always the most heat: the largest initiator flow and the hottest coolant."""

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return pc.MODEL.u_high.copy()


class Uniform:
    """Uniformly random inputs in the box ``[low, high]`` (default: the reactor's), seeded by the episode."""

    def __init__(self, low: np.ndarray | None = None, high: np.ndarray | None = None) -> None:
        self.low, self.high = _box(low, high)
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high)


class BangBang:
    """A corner of the input box ``[low, high]`` (default: the reactor's), held for a random number of
    intervals (a new corner drawn with probability 0.3 per interval), seeded by the episode; it starts at the
    highest corner (the reactor's: the most heat)."""

    def __init__(self, low: np.ndarray | None = None, high: np.ndarray | None = None) -> None:
        self.low, self.high = _box(low, high)
        self.rng = np.random.default_rng(0)
        self.u = self.high.copy()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.u = self.high.copy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.rng.random() < 0.3:
            corner = self.rng.integers(0, 2, size=len(self.u)).astype(bool)
            self.u = np.where(corner, self.high, self.low)
        return self.u.copy()


class MisledMPC:
    """The task's own MPC (:func:`safectrl.controllers.task_nmpc.nmpc_for`, on the filter's model), reading
    one limited quantity's observation (a limit with two finite bounds whose name is an observation's)
    shifted towards a side drawn per episode, the shift growing from 0 to
    :attr:`SHIFT` of that limit's range over the first half of the episode: a competent controller that
    carries the plant past a limit and keeps it well behaved on the way (CartPole: the pole balanced, the
    cart driven into a rail), as a learned policy that balances well but drifts does. Bang-bang and uniform
    inputs do not do that: they shake the plant instead of carrying it to a limit."""

    SHIFT = 0.75

    def __init__(self, env_id: str, params: Any) -> None:
        from safectrl.controllers.task_nmpc import nmpc_for
        from safectrl.models.registry import get_task

        self.task = get_task(env_id)
        self.mpc = nmpc_for(env_id, params)
        self.shiftable = self._shiftable(self.task)
        if not self.shiftable:
            raise ValueError(f"{self.task.name}: no limited quantity with two finite bounds is observed; a "
                             "misled MPC needs one")
        self.shift = np.zeros(len(self.task.observations))  # the full shift, reached at step `ramp`
        self.ramp = max(1, self.task.episode_steps // 2)
        self.k = 0

    @staticmethod
    def _shiftable(task: Any) -> list[tuple[int, Any]]:
        obs = task.observations
        return [(obs.index(lim.name), lim) for lim in task.limits
                if lim.name in obs and math.isfinite(lim.high - lim.low)]

    @classmethod
    def applies(cls, task: Any) -> bool:
        """Whether ``task`` observes a limited quantity with two finite bounds (else no misled MPC)."""
        return bool(cls._shiftable(task))

    def reset(self, seed: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        index, limit = self.shiftable[int(rng.integers(len(self.shiftable)))]
        self.shift[:] = 0.0
        self.shift[index] = (1.0 if rng.random() < 0.5 else -1.0) * self.SHIFT * (limit.high - limit.low)
        self.k = 0
        self.mpc.reset(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        share = min(1.0, self.k / self.ramp)
        self.k += 1
        return self.mpc.act(np.asarray(obs, dtype=float) + share * self.shift)


def _box(low: np.ndarray | None, high: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if (low is None) != (high is None):
        raise ValueError("give both low and high, or neither (the reactor's input box)")
    if low is None:
        return pc.MODEL.u_low.copy(), pc.MODEL.u_high.copy()
    lo, hi = np.asarray(low, dtype=float).ravel(), np.asarray(high, dtype=float).ravel()
    if lo.shape != hi.shape or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)) or np.any(lo > hi):
        raise ValueError(f"the input box needs finite low <= high of one shape, got {lo} and {hi}")
    return lo, hi


def _policy(name: str, bc_path: str | None) -> Any:
    if name == "most heat":
        return MostHeat()
    if name == "bang-bang":
        return BangBang()
    from safectrl.rl.checkpoint import load_policy

    return load_policy(Path(str(bc_path)))


def backoff_episode(backoff: float, policy: str, scenario: str, variant: str, seed: int, steps: int,
                    bc_path: str | None = None) -> dict[str, Any]:
    """One filtered episode on the mismatched plant; peak T, violations, the one-interval errors of T."""
    from safectrl.safety.psf import predictive_safety_filter, with_config
    from safectrl.studies.executor import worker_setup

    worker_setup()
    task = pc.TASK
    env = TaskEnv(task, scenario=scenario, plant=task.actual, noise=variant == "mismatch+noise", max_steps=steps)
    psf = predictive_safety_filter(_policy(policy, bc_path), ENV,
                                   config=with_config(ENV, tightening=(float(backoff),)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        ep = run_episode(env, psf, seed)
    T = np.asarray(ep.infos["state"], dtype=float)[:, task.states.index("T")]
    planned = np.array([x[1, task.states.index("T")] for x in psf.record.predicted])  # T after one interval
    n = len(planned)
    error = T[1: n + 1] - planned
    riding = planned >= pc.T_MAX - backoff - RIDING
    report_ = psf.episode_report()
    return {"peak_T": float(np.max(T[1:])), "violations": int(np.sum(T[1:] > pc.T_MAX)),
            "runaway": bool(np.any(ep.terminations)), "error": error, "riding": riding,
            "interventions": float(report_.get("interventions", 0.0)),
            "fallbacks": int(report_.get("fallbacks", 0)),
            "ms": float(np.median(ep.decision_time) * 1e3)}


HEADERS = ("back-off K", "policy", "noise", "episodes", "peak T max K", "peak T median K", "T>T_max intervals",
           "runaways", "riding steps", "1-step T error max K", "1-step T error p99 K", "interventions %",
           "fallbacks", "ms/decision median")


def backoff_table(backoffs: tuple[float, ...], results: dict[tuple, dict[str, Any]]) -> tuple[float, list[list]]:
    """The chosen back-off (NaN if none qualifies) and the table's rows from the stored episodes."""
    rows, chosen = [], math.nan
    for b in backoffs:
        worst = -math.inf
        for policy in POLICIES:
            for variant in VARIANTS:
                eps = [r for k, r in results.items() if k[0] == b and k[1] == policy and k[2] == variant]
                if not eps:
                    continue
                peaks = np.array([float(r["peak_T"]) for r in eps])
                err = np.concatenate([np.asarray(r["error"])[np.asarray(r["riding"], dtype=bool)] for r in eps])
                worst = max(worst, float(peaks.max()))
                rows.append([b, policy, "yes" if variant == "mismatch+noise" else "no", len(eps),
                             float(peaks.max()), float(np.median(peaks)),
                             int(sum(int(r["violations"]) for r in eps)), int(sum(bool(r["runaway"]) for r in eps)),
                             len(err), float(err.max()) if len(err) else math.nan,
                             float(np.percentile(err, 99)) if len(err) else math.nan,
                             100 * float(np.mean([float(r["interventions"]) for r in eps])),
                             int(sum(int(r["fallbacks"]) for r in eps)),
                             float(np.median([float(r["ms"]) for r in eps]))])
        if math.isnan(chosen) and worst <= pc.T_MAX - BACKOFF_MARGIN:
            chosen = float(b)
    return chosen, rows


@dataclass(frozen=True)
class PSFBackoffConfig:
    """``safectrl safety psf-backoff-study``: choose the filter's T back-off on tuning seeds."""

    backoffs: tuple[float, ...] = BACKOFFS  # candidate back-offs, K
    scenario: str = field(default="startup", metadata={"choices": tuple(pc.SCENARIOS)})  # its optimum rides T_max
    episodes: int = field(default=10, metadata={"min": 1})  # tuning seeds per back-off, policy and plant
    adversarial_episodes: int = field(default=5, metadata={"min": 1})  # of those, for most heat and bang-bang
    steps: int = field(default=100, metadata={"min": 1})  # intervals per episode (startup reaches T_max in ~20)
    out: str | None = None  # output folder (default: runs/psf-backoff-TIMESTAMP); an existing one resumes
    workers: int | None = field(default=None, metadata={"min": 1})  # Dask LocalCluster workers (default: a local pool)

    def __post_init__(self) -> None:
        validation.reals("backoffs", self.backoffs, low=0.0)
        if not self.backoffs or len(set(self.backoffs)) != len(self.backoffs):
            raise ValueError(f"backoffs must be distinct back-offs in K, got {list(self.backoffs)}")


def run_backoff(config: PSFBackoffConfig = PSFBackoffConfig(), progress: bool = True) -> tuple[float, list[list], Path]:
    """Run (or resume) the study; writes ``config.json``, ``tasks/`` and ``backoff.md`` into ``config.out``."""
    from safectrl.studies import study

    out = Path(config.out) if config.out else options.timestamped(KIND)
    # the filter's configuration but the back-off (which the study varies) is part of the run's: a folder of
    # episodes of another filter is refused instead of resumed
    from safectrl.safety.psf import DEFAULTS

    recorded = {**{k: v for k, v in asdict(config).items() if k not in ("out", "workers")},
                "filter": asdict(replace(DEFAULTS[ENV], tightening=None))}
    folder = runfolder.check(out, KIND, recorded, resumable=True)
    executor = make_executor(workers=config.workers)
    try:
        with runfolder.cleanup_on_failure(folder):
            runfolder.commit(folder)
            store = ResultStore(out / runfolder.TASKS)
            # the study's BC policy of the scenario (full preset), trained here once if missing
            bc = str(study.ensure_artifact("bc-policy", config.scenario, study.PRESETS["full"]))
            tasks, keys = [], {}
            for b in sorted(config.backoffs):
                for policy in POLICIES:
                    n = config.episodes if policy == "BC" else min(config.adversarial_episodes, config.episodes)
                    for variant in VARIANTS:
                        for k in range(n):
                            seed = TUNING_SEED_OFFSET + k
                            key = f"{b:g}/{policy}/{variant}/{seed}"
                            keys[key] = (b, policy, variant, seed)
                            tasks.append(Task(key, backoff_episode, (b, policy, config.scenario, variant, seed,
                                                                     config.steps, bc if policy == "BC" else None)))
            done = run_tasks(tasks, executor, store, desc="psf back-off", progress=progress)
    finally:
        executor.close()
    chosen, rows = backoff_table(tuple(sorted(config.backoffs)), {keys[k]: v for k, v in done.items()})
    (out / "backoff.md").write_text(
        f"# Predictive safety filter: temperature back-off ({config.scenario}, mismatched plant, tuning seeds)\n\n"
        f"{report.markdown_table(HEADERS, rows)}\n\nchosen back-off: {chosen:g} K (smallest with peak T <= "
        f"T_max - {BACKOFF_MARGIN:g} K)\n")
    return chosen, rows, out


# -- any task: is its filter's tightening enough behind adversarial policies? ------------------------------

#: Multiples of the task's tightening (its :data:`safectrl.safety.psf.DEFAULTS` entry) tried.
SCALES = (0.5, 1.0, 1.5, 2.0)
TASK_POLICIES = ("bang-bang", "uniform", "misled MPC")
TIGHTENING_KIND = "psf-tightening"
#: A scale qualifies when every limit's smallest margin over its episodes is at least this share of that
#: limit's tightening (the reactor's back-off study keeps 0.25 K of 2.5 K in the same spirit).
MARGIN_FRACTION = 0.25


def _limited(task: Any, x: np.ndarray, params: Any) -> np.ndarray:
    """(n, n_limits): every operating limit's quantity at the states ``x`` (n, nx)."""
    return np.column_stack([np.asarray(lim.value(x, params, task.states), dtype=float).reshape(len(x))
                            for lim in task.limits])


def tightening_episode(env_id: str, tightening: tuple[Any, ...], policy: str, seed: int,
                       steps: int | None, noise: bool, plant: str | None, model: str) -> dict[str, Any]:
    """One episode of ``policy`` ("bang-bang" or "uniform" over the task's input box, or :class:`MisledMPC`)
    behind the filter with ``tightening``, predicting with ``model`` on ``plant`` (default: the task's actual
    plant). Per limit: the
    smallest distance inside it over the episode (negative: outside), how far the applied plans' own
    one-interval predictions went beyond the tightened bound (positive: a soft plan), and at the steps where
    the applied plan's predicted quantity after one interval came within a quarter of the tightening of its
    tightened bound ("riding"), the plant's excess over that prediction towards the limit."""
    from safectrl.models.registry import get_task
    from safectrl.safety.psf import bound_tightenings, predictive_safety_filter, with_config
    from safectrl.studies.executor import worker_setup

    worker_setup()
    task = get_task(env_id)
    m = task.model
    c_low, c_high = np.array(bound_tightenings(tightening), dtype=float).T
    p_plant, p_model = task.plant(plant if plant is not None else task.actual), task.plant(model)
    if policy == "misled MPC":
        base = MisledMPC(env_id, p_model)
    else:
        base = BangBang(m.u_low, m.u_high) if policy == "bang-bang" else Uniform(m.u_low, m.u_high)
    psf = predictive_safety_filter(base, env_id, params=p_model, config=with_config(env_id, tightening=tightening))
    env = TaskEnv(task, plant=p_plant, noise=noise, max_steps=steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        ep = run_episode(env, psf, seed)
    states = np.asarray(ep.infos["state"], dtype=float)  # the initial state, then every interval's end
    value = _limited(task, states[1:], p_plant)
    n = len(psf.record.predicted)
    planned = _limited(task, np.array([x[1] for x in psf.record.predicted]), p_model)
    low = np.array([lim.low for lim in task.limits])
    high = np.array([lim.high for lim in task.limits])
    inside = np.minimum(value - low, high - value)  # (n, L) distance inside each limit
    upper = planned >= high - c_high - c_high / 4
    lower = planned <= low + c_low + c_low / 4
    toward = np.where(upper, value[:n] - planned, planned - value[:n])  # the plant beyond the plan, limit-wards
    # how far the applied plans themselves ended their first interval beyond a tightened bound (soft plans)
    slack = (np.maximum(planned - (high - c_high), (low + c_low) - planned).max(axis=0) if n
             else np.full(len(c_low), -np.inf))
    rep = psf.episode_report()
    return {"margin": inside.min(axis=0), "outside": int(np.sum(np.any(inside < 0, axis=1))),
            "plan_beyond": slack,
            "failed": bool(np.any(ep.terminations)), "length": int(ep.length),
            "error": toward, "riding": upper | lower,
            "interventions": float(rep.get("interventions", 0.0)), "fallbacks": int(rep.get("fallbacks", 0)),
            "ms": float(np.median(ep.decision_time) * 1e3)}


CHOICE_RULE = (f"smallest scale from which on every scale tried has no failure, no interval outside a limit and "
               f"every limit's margin at least {MARGIN_FRACTION:g} of its tightening")
TIGHTENING_HEADERS = ("scale", "tightening", "policy", "noise", "episodes", "failures", "intervals outside",
                      "smallest margin per limit", "plan beyond tightened bound, max per limit", "riding steps",
                      "plant beyond plan, max per limit",
                      "interventions %", "fallbacks", "ms/decision median")


def tightening_table(task: Any, base: tuple[Any, ...], scales: tuple[float, ...],
                     results: dict[tuple, dict[str, Any]]) -> tuple[float, list[list]]:
    """The chosen scale and the table's rows, from the episodes in ``results`` keyed by (scale, policy, noise,
    seed). A scale qualifies with no failure, no interval outside any limit, and every limit's smallest margin
    at least :data:`MARGIN_FRACTION` of its tightening (of its bounds' smaller one); the choice is the smallest
    scale above which every scale tried qualifies too (NaN if the largest does not)."""
    from safectrl.safety.psf import bound_tightenings

    rows, qualifies = [], {}
    names = [lim.name for lim in task.limits]
    pairs = np.array(bound_tightenings(base), dtype=float)  # (L, 2)

    def shown(scale: float) -> str:
        return ", ".join(f"{scale * lo:g}" if lo == hi else f"{scale * lo:g}/{scale * hi:g}" for lo, hi in pairs)

    def per_limit(values: np.ndarray) -> str:
        return ", ".join(f"{n} {v:.4g}" for n, v in zip(names, values))

    for scale in scales:
        clean = True
        for policy in TASK_POLICIES:
            for noise in (False, True):
                eps = [r for k, r in results.items() if k[:3] == (scale, policy, noise)]
                if not eps:
                    continue
                riding = np.concatenate([np.asarray(r["riding"], dtype=bool) for r in eps])
                error = np.concatenate([np.asarray(r["error"], dtype=float) for r in eps])
                beyond = np.array([np.max(error[riding[:, i], i]) if riding[:, i].any() else math.nan
                                   for i in range(len(names))])
                failures = sum(bool(r["failed"]) for r in eps)
                outside = sum(int(r["outside"]) for r in eps)
                margin = np.min([np.asarray(r["margin"]) for r in eps], axis=0)
                kept = bool(np.all(margin >= MARGIN_FRACTION * scale * pairs.min(axis=1)))
                clean = clean and failures == 0 and outside == 0 and kept
                rows.append([scale, shown(scale), policy, "yes" if noise else "no",
                             len(eps), failures, outside,
                             per_limit(margin),
                             per_limit(np.max([np.asarray(r["plan_beyond"]) for r in eps], axis=0)),
                             int(riding.any(axis=1).sum()), per_limit(beyond),
                             100 * float(np.mean([float(r["interventions"]) for r in eps])),
                             int(sum(int(r["fallbacks"]) for r in eps)),
                             float(np.median([float(r["ms"]) for r in eps]))])
        if any(k[0] == scale for k in results):
            qualifies[scale] = clean
    # the smallest scale from which on every larger one tried qualifies too: a scale that passes by luck
    # below one that fails is not a choice
    chosen = math.nan
    for scale in sorted(qualifies, reverse=True):
        if not qualifies[scale]:
            break
        chosen = float(scale)
    return chosen, rows


@dataclass(frozen=True)
class PSFTighteningConfig:
    """``safectrl safety psf-tightening-study``: a task's filter behind adversarial policies on its actual
    plant, for multiples of its tightening, on tuning seeds."""

    env: str = field(default="safectrl/Glucose-v0", metadata={"metavar": "ENV_ID"})  # a registered task
    scales: tuple[float, ...] = SCALES  # multiples of the filter's tightening (psf.DEFAULTS) to try
    plant: str | None = None  # the plant run (default: the task's actual plant)
    model: str = "nominal"  # the filter's prediction model (and its observer's)
    episodes: int = field(default=5, metadata={"min": 1})  # tuning seeds per scale, policy and noise setting
    steps: int | None = field(default=None, metadata={"min": 1})  # intervals per episode (default: the task's)
    out: str | None = None  # output folder (default: runs/psf-tightening-TIMESTAMP); an existing one resumes
    workers: int | None = field(default=None, metadata={"min": 1})  # Dask LocalCluster workers (default: a local pool)

    def __post_init__(self) -> None:
        from safectrl.models.registry import get_task

        task = get_task(self.env)  # an unknown id: a ValueError that lists the registered ones
        validation.reals("scales", self.scales, low=0.0)
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct multiples of the tightening, got {list(self.scales)}")
        for name in (self.plant, self.model):
            if name is not None:
                task.plant(name)  # an unknown plant: a ValueError that lists the task's plants


def run_tightening(config: PSFTighteningConfig = PSFTighteningConfig(),
                   progress: bool = True) -> tuple[float, list[list], Path]:
    """Run (or resume) the study; writes ``config.json``, ``tasks/`` and ``tightening.md`` into ``config.out``.
    With measurement noise on as well where the task defines it."""
    from safectrl.models.registry import get_task
    from safectrl.safety.psf import DEFAULTS, PSFConfig, bound_tightenings, scale_tightening

    task = get_task(config.env)
    filter_config = DEFAULTS.get(config.env, PSFConfig())
    base = filter_config.tightening
    if base is None or not np.any(np.array(bound_tightenings(base)) > 0):
        raise ValueError(f"{task.name}'s filter has no tightening to scale; give it one in psf.DEFAULTS")
    out = Path(config.out) if config.out else options.timestamped(TIGHTENING_KIND)
    recorded = {**{k: v for k, v in asdict(config).items() if k not in ("out", "workers", "scales")},
                "filter": asdict(filter_config)}  # a folder of another filter's episodes is refused
    folder = runfolder.check(out, TIGHTENING_KIND, recorded, resumable=True)
    noises = (False, True) if task.measurement_std is not None else (False,)
    scales = tuple(sorted(float(x) for x in config.scales))
    executor = make_executor(workers=config.workers)
    try:
        with runfolder.cleanup_on_failure(folder):
            runfolder.commit(folder)
            store = ResultStore(out / runfolder.TASKS)
            tasks, keys = [], {}
            policies = TASK_POLICIES if MisledMPC.applies(task) else TASK_POLICIES[:2]
            for scale in scales:
                tight = scale_tightening(base, scale)
                for policy in policies:
                    for noise in noises:
                        for k in range(config.episodes):
                            seed = TUNING_SEED_OFFSET + k
                            key = f"{scale:g}/{policy}/{'noise' if noise else 'exact'}/{seed}"
                            keys[key] = (scale, policy, noise, seed)
                            tasks.append(Task(key, tightening_episode, (config.env, tight, policy, seed, config.steps,
                                                                        noise, config.plant, config.model)))
            done = run_tasks(tasks, executor, store, desc=f"psf tightening {task.name}", progress=progress)
    finally:
        executor.close()
    chosen, rows = tightening_table(task, base, scales, {keys[k]: v for k, v in done.items()})
    (out / "tightening.md").write_text(
        f"# Predictive safety filter: tightening of {task.name} behind adversarial policies (tuning seeds)\n\n"
        f"Filter tightening {', '.join(f'{lim.name} {c}' for lim, c in zip(task.limits, base))}; plant "
        f"{config.plant or 'the actual plant'}, model {config.model!r}.\n\n"
        f"{report.markdown_table(TIGHTENING_HEADERS, rows)}\n\n{CHOICE_RULE}: {chosen:g}\n")
    return chosen, rows, out
