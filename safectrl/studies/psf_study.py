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
    """Uniformly random inputs in the bounds, seeded by the episode."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(pc.MODEL.u_low, pc.MODEL.u_high)


class BangBang:
    """A corner of the input box, held for a random number of intervals (a new corner drawn with probability
    0.3 per interval), seeded by the episode; it starts at the most heat."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.u = pc.MODEL.u_high.copy()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.u = pc.MODEL.u_high.copy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.rng.random() < 0.3:
            corner = self.rng.integers(0, 2, size=pc.MODEL.nu).astype(bool)
            self.u = np.where(corner, pc.MODEL.u_high, pc.MODEL.u_low)
        return self.u.copy()


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
