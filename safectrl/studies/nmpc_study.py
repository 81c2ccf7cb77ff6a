"""The NMPC reference controller in closed loop: one episode with its predictions, and the acceptance table.

* :func:`run_nmpc_episode` — one closed-loop episode of the oracle (model = plant) or the realistic
  (mismatched model) NMPC, keeping every solve's plan, for the figure of ``safectrl nmpc``.
* :func:`acceptance` — oracle and realistic NMPC on every scenario and the evaluation seeds, against the
  randomly tuned PI controllers of the offline datasets: the best dataset episode, and that episode's
  tuning re-run on the same evaluation seeds (a like-for-like comparison of initial states).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from safectrl.controllers.nmpc import NMPC, NMPCConfig, NMPCSolution
from safectrl.controllers.pi import PIController, PITuning, sample_tuning, tuning_rng
from safectrl.controllers.estimation import EKFConfig
from safectrl.controllers.polycstr_nmpc import (
    EKF_CONFIG,
    EKF_CONFIG_STATES_ONLY,
    NMPC_CONFIG,
    polycstr_nmpc,
    with_backoff,
)
from safectrl.models import polycstr as pc
from safectrl.rl.data import TUNING_SEED_OFFSET, evaluation_seeds, load_episodes
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.studies import options, plots, report, runfolder
from safectrl.studies.datasets import generate_dataset
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics

#: NMPC variants: the parameters the controller and its filter predict with, and the filter's settings.
VARIANTS: dict[str, tuple[pc.PolyCSTRParams, EKFConfig]] = {
    "oracle": (pc.PolyCSTRParams(), EKF_CONFIG),
    "mismatched": (pc.mismatched(), EKF_CONFIG),
    "mismatched, states-only EKF": (pc.mismatched(), EKF_CONFIG_STATES_ONLY),
}


def make_nmpc(variant: str, config: NMPCConfig = NMPC_CONFIG) -> NMPC:
    """The reactor's NMPC of a named variant (see :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown NMPC variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    params, ekf = VARIANTS[variant]
    return polycstr_nmpc(params, config, ekf)


class _RecordingPolicy:
    """Passes ``act`` through to an NMPC and keeps every solution (for the prediction figure)."""

    def __init__(self, nmpc: NMPC) -> None:
        self.nmpc = nmpc
        self.solutions: list[NMPCSolution] = []

    def reset(self, seed: int | None = None) -> None:
        self.nmpc.reset(seed)
        self.solutions = []

    def act(self, obs: np.ndarray) -> np.ndarray:
        u = self.nmpc.act(obs)
        self.solutions.append(self.nmpc.last_solution)
        return u


@dataclass
class NMPCRun:
    """One closed-loop NMPC episode with everything the controller did."""

    episode: Episode
    metrics: EpisodeMetrics
    solutions: list[NMPCSolution]  # one per interval
    estimates: np.ndarray  # (n+1, nx) the observer's state estimates (the last one after the final step)
    nmpc: NMPC

    def estimation_error(self) -> np.ndarray:
        """Mean |estimate - state| per state over the episode, relative to the state's nominal scale."""
        x = self.episode.infos["state"][: len(self.estimates)]
        return np.mean(np.abs(self.estimates - x), axis=0) / pc.X_SCALE


def run_nmpc_episode(
    scenario: str,
    variant: str = "oracle",
    seed: int = 0,
    config: NMPCConfig = NMPC_CONFIG,
    max_steps: int = pc.EPISODE_STEPS,
    noise: bool = False,
) -> NMPCRun:
    """One episode of the NMPC on the nominal plant; ``variant`` chooses the controller's parameters.

    ``noise`` adds the nominal measurement noise (:class:`~safectrl.models.polycstr.MeasurementNoise`).
    """
    nmpc = make_nmpc(variant, config)
    policy = _RecordingPolicy(nmpc)
    env = TaskEnv(pc.TASK, scenario=scenario, max_steps=max_steps, noise=noise)
    ep = run_episode(env, policy, seed)
    observer = nmpc.observer
    observer(ep.observations[-1])  # the estimate of the final state, for the error statistics
    return NMPCRun(ep, episode_metrics(ep), policy.solutions, np.array(observer.estimates), nmpc)


def episode_summary(run: NMPCRun) -> list[tuple[str, object]]:
    """The numbers ``safectrl nmpc`` prints for one episode."""
    m, st = run.metrics, run.nmpc.stats
    times = st.solve_times() * 1e3
    err = run.estimation_error()
    return [
        ("cost (-sum of rewards)", m.cost),
        ("final |e_P| kg/m³ (last 10 h)", m.final_abs_eP),
        ("final |e_T| K (last 10 h)", m.final_abs_eT),
        ("peak T K", m.peak_T),
        ("intervals with T > T_max", m.violations),
        ("runaway", m.failure),
        ("solves / retried cold / failed (fallback)", f"{st.solves} / {st.retries} / {st.failures}"),
        ("solve time median / p95 ms", f"{report.fmt(float(np.median(times)))} / "
                                       f"{report.fmt(float(np.percentile(times, 95)))}"),
        ("IPOPT iterations median / max",
         f"{int(np.median(st.iterations()))} / {int(st.iterations().max())}"),
        ("mean |estimate - state| / scale, I and R",
         f"{report.fmt(float(err[1]))}, {report.fmt(float(err[2]))}"),
    ]


@dataclass(frozen=True)
class AcceptanceRow:
    """One scenario and NMPC variant over the evaluation seeds, with the PI comparison."""

    scenario: str
    variant: str
    costs: np.ndarray  # (seeds,) NMPC episode costs
    final_abs_eP: np.ndarray  # (seeds,) kg/m³
    final_abs_eT: np.ndarray  # (seeds,) K
    violations: int  # intervals above T_max, summed over episodes
    peak_T: float  # K, highest over episodes
    runaways: int
    failed_solves: int  # still failed after the cold retry: the fallback acted
    retried_solves: int  # warm-started attempt failed, cold retry
    solves: int
    solve_ms_median: float
    solve_ms_p95: float
    iterations_median: float
    iterations_max: int
    estimation_error_I: float  # mean |I_hat - I| / 10 kg/m³
    estimation_error_R: float  # mean |R_hat - R| / 1e-6 mol/m³
    pi_best_cost: float  # best episode of the dataset (its own seed)
    pi_best_tuning_costs: np.ndarray  # (seeds,) that episode's tuning on the evaluation seeds

    def passes(self) -> bool:
        """The issue's criteria: no violation, no runaway, final offsets, cost at most the best PI episode."""
        return (self.violations == 0 and self.runaways == 0 and float(self.final_abs_eP.max()) < 0.5
                and float(self.final_abs_eT.max()) < 0.2 and float(self.costs.max()) <= self.pi_best_cost)


ACCEPTANCE_HEADERS = (
    "scenario", "NMPC", "cost mean ± std", "cost max", "best PI episode", "best PI tuning on eval seeds",
    "max final |e_P|", "max final |e_T|", "T>T_max intervals", "peak T K", "runaways",
    "failed/retried solves",
    "solve ms median/p95", "IPOPT it median/max", "est. err I, R", "criteria",
)


def acceptance_rows(rows: list[AcceptanceRow]) -> list[list]:
    return [
        [r.scenario, r.variant, report.mean_std(r.costs), float(r.costs.max()), r.pi_best_cost,
         report.mean_std(r.pi_best_tuning_costs), float(r.final_abs_eP.max()), float(r.final_abs_eT.max()),
         r.violations, r.peak_T, r.runaways, f"{r.failed_solves}/{r.retried_solves} of {r.solves}",
         f"{report.fmt(r.solve_ms_median, 3)}/{report.fmt(r.solve_ms_p95, 3)}",
         f"{report.fmt(r.iterations_median, 3)}/{r.iterations_max}",
         f"{report.fmt(r.estimation_error_I, 2)}, {report.fmt(r.estimation_error_R, 2)}",
         "pass" if r.passes() else "FAIL"]
        for r in rows
    ]


def best_pi_episode(
    scenario: str, episodes: int, data_seed: int, root: str | os.PathLike | None, progress: bool = True
) -> tuple[float, PITuning]:
    """Cost and tuning of the best episode of the scenario's PI dataset (generated if missing)."""
    ds_id = generate_dataset(scenario, episodes, data_seed, root=root, progress=progress)
    eps = load_episodes(ds_id, root)
    costs = np.array([-ep.rewards.sum() for ep in eps])
    best = int(np.argmin(costs))
    return float(costs[best]), sample_tuning(tuning_rng(eps[best].seed))


def acceptance(
    eval_episodes: int = 10,
    data_episodes: int = 100,
    data_seed: int = 0,
    scenarios: tuple[str, ...] = tuple(pc.SCENARIOS),
    variants: tuple[str, ...] = tuple(VARIANTS),
    config: NMPCConfig = NMPC_CONFIG,
    max_steps: int = pc.EPISODE_STEPS,
    noise: bool = False,
    root: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[AcceptanceRow]:
    """Oracle and realistic NMPC on every scenario and ``eval_episodes`` evaluation seeds, against PI data.

    Args:
        eval_episodes: evaluation seeds per scenario (``safectrl.rl.data.evaluation_seeds``).
        data_episodes: episodes of each scenario's PI dataset (generated under ``root`` if missing).
        data_seed: the dataset seed.
        scenarios, variants: subsets to run.
        config: NMPC settings.
        max_steps: episode length in intervals (shorter only for smoke tests; costs then not comparable).
        noise: measurement noise on A, P, T for the NMPC (the PI data stay noise-free).
        root: Minari datasets folder (default: Minari's).
    """
    seeds = evaluation_seeds(eval_episodes)
    rows = []
    for scenario in scenarios:
        pi_best, tuning = best_pi_episode(scenario, data_episodes, data_seed, root, progress)
        env = TaskEnv(pc.TASK, scenario=scenario, max_steps=max_steps)
        pi_costs = np.array([-run_episode(env, PIController(tuning), s).rewards.sum() for s in seeds])
        for variant in variants:
            runs = [run_nmpc_episode(scenario, variant, s, config, max_steps, noise)
                    for s in tqdm(seeds, desc=f"NMPC {variant} {scenario}", disable=not progress)]
            ms = [r.metrics for r in runs]
            times = np.concatenate([r.nmpc.stats.solve_times() for r in runs]) * 1e3
            iters = np.concatenate([r.nmpc.stats.iterations() for r in runs])
            est = np.array([r.estimation_error() for r in runs])
            rows.append(AcceptanceRow(
                scenario=scenario,
                variant=variant,
                costs=np.array([m.cost for m in ms]),
                final_abs_eP=np.array([m.final_abs_eP for m in ms]),
                final_abs_eT=np.array([m.final_abs_eT for m in ms]),
                violations=sum(m.violations for m in ms),
                peak_T=float(max(m.peak_T for m in ms)),
                runaways=sum(m.failure for m in ms),
                failed_solves=sum(r.nmpc.stats.failures for r in runs),
                retried_solves=sum(r.nmpc.stats.retries for r in runs),
                solves=sum(r.nmpc.stats.solves for r in runs),
                solve_ms_median=float(np.median(times)),
                solve_ms_p95=float(np.percentile(times, 95)),
                iterations_median=float(np.median(iters)),
                iterations_max=int(iters.max()),
                estimation_error_I=float(est[:, 1].mean()),
                estimation_error_R=float(est[:, 2].mean()),
                pi_best_cost=pi_best,
                pi_best_tuning_costs=pi_costs,
            ))
    return rows


#: Back-offs tried by :func:`backoff_study`, K.
BACKOFFS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
#: Required distance between the worst peak temperature and T_max on the tuning seeds, K (about one sensor
#: standard deviation, 0.2 K, plus rounding).
BACKOFF_MARGIN = 0.25


def backoff_study(
    backoffs: tuple[float, ...] = BACKOFFS, episodes: int = 10, progress: bool = True
) -> tuple[float, list[list]]:
    """Choose the temperature back-off of the reactor's NMPC on tuning seeds (never evaluation seeds).

    Startup is the scenario whose optimum rides T_max. For every back-off, the oracle and the mismatched
    NMPC run ``episodes`` tuning-seed startups without and with measurement noise. The choice is the
    smallest back-off whose worst peak temperature over all four settings stays :data:`BACKOFF_MARGIN`
    below T_max.

    Returns:
        The chosen back-off (NaN if none qualifies) and the table rows.
    """
    seeds = [TUNING_SEED_OFFSET + k for k in range(episodes)]
    rows, chosen = [], float("nan")
    for b in tqdm(backoffs, desc="back-off", disable=not progress):
        worst = -np.inf
        for noise in (False, True):
            for variant in ("oracle", "mismatched"):
                runs = [run_nmpc_episode("startup", variant, s, with_backoff(b), noise=noise) for s in seeds]
                peaks = np.array([r.metrics.peak_T for r in runs])
                worst = max(worst, float(peaks.max()))
                rows.append([
                    b, variant, "yes" if noise else "no", float(peaks.max()), float(np.median(peaks)),
                    sum(r.metrics.violations for r in runs), report.mean_std([r.metrics.cost for r in runs]),
                    sum(r.nmpc.stats.failures for r in runs),
                ])
        if np.isnan(chosen) and worst <= pc.T_MAX - BACKOFF_MARGIN:
            chosen = float(b)
    return chosen, rows


BACKOFF_HEADERS = ("back-off K", "NMPC", "noise", "peak T max K", "peak T median K", "T>T_max intervals",
                   "cost mean ± std", "failed solves")


def acceptance_table(rows: list[AcceptanceRow]) -> str:
    return report.markdown_table(ACCEPTANCE_HEADERS, acceptance_rows(rows))


def write_acceptance(rows: list[AcceptanceRow], out: str | os.PathLike) -> Path:
    """Write the table as ``nmpc_acceptance.md`` in ``out``; returns the file."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "nmpc_acceptance.md"
    path.write_text(
        "# NMPC acceptance\n\nCost is -sum of rewards over the episode; final offsets are means over the "
        "last 10 h; estimation errors are mean |estimate - state| divided by the state's scale (I: 10 kg/m³, "
        f"R: 1e-6 mol/m³).\n\n{acceptance_table(rows)}\n"
    )
    return path


# -- the study's configs, as the command line and scripts give them ---------------------------------------


@dataclass(frozen=True)
class EpisodeConfig:
    """``safectrl nmpc episode``: one closed-loop episode, its summary and the prediction figure."""

    scenario: str = field(default="grade_up", metadata={"choices": tuple(pc.SCENARIOS)})  # the episode's scenario
    mismatch: bool = False  # predict with the mismatched model (UA -20 %, dH +10 %) instead of the plant's
    seed: int = field(default=0, metadata={"min": 0})  # env seed
    noise: bool = False  # measurement noise on A, P, T
    out: str | None = None  # output folder (default: runs/nmpc-TIMESTAMP)


def run(config: EpisodeConfig = EpisodeConfig()) -> tuple[NMPCRun, Path]:
    """The episode of ``config`` and its figure; writes ``config.json`` and the figure into ``config.out``."""
    variant = "mismatched" if config.mismatch else "oracle"
    with runfolder.single_run(config.out or options.timestamped("nmpc"), "nmpc-episode",
                              runfolder.record(config)) as out:
        nmpc_run = run_nmpc_episode(config.scenario, variant, config.seed, noise=config.noise)
        path = out / f"nmpc-{config.scenario}-{variant}-seed{config.seed}.png"
        plots.prediction_figure(nmpc_run.episode, nmpc_run.solutions, nmpc_run.nmpc.config.horizon, path,
                                title=f"NMPC ({variant}), {config.scenario}, seed {config.seed}")
    return nmpc_run, path


@dataclass(frozen=True)
class AcceptanceConfig:
    """``safectrl nmpc acceptance``: the NMPC variants on every scenario against the best PI of the data."""

    episodes: int = field(default=10, metadata={"min": 1})  # evaluation seeds per scenario and variant
    data_episodes: int = field(default=100, metadata={"min": 1})  # episodes of each PI dataset
    noise: bool = False  # measurement noise on A, P, T for the NMPC (the PI data stay noise-free)
    root: str | None = None  # datasets folder (default: $MINARI_DATASETS_PATH or Minari's)
    out: str | None = None  # output folder (default: runs/nmpc-acceptance-TIMESTAMP)


def run_acceptance(config: AcceptanceConfig = AcceptanceConfig()) -> tuple[list[AcceptanceRow], Path]:
    """The acceptance rows; writes ``config.json`` and ``nmpc_acceptance.md`` into ``config.out``."""
    with runfolder.single_run(config.out or options.timestamped("nmpc-acceptance"), "nmpc-acceptance",
                              runfolder.record(config)) as out:
        rows = acceptance(config.episodes, config.data_episodes, noise=config.noise, root=config.root)
        return rows, write_acceptance(rows, out)


@dataclass(frozen=True)
class BackoffConfig:
    """``safectrl nmpc backoff-study``: reproduce the choice of the temperature back-off on tuning seeds."""

    episodes: int = field(default=10, metadata={"min": 1})  # tuning-seed startups per back-off and setting
    out: str | None = None  # output folder (default: runs/nmpc-backoff-TIMESTAMP)


def run_backoff(config: BackoffConfig = BackoffConfig()) -> tuple[float, list[list], Path]:
    """The chosen back-off and the table; writes ``config.json`` and ``backoff.md`` into ``config.out``."""
    with runfolder.single_run(config.out or options.timestamped("nmpc-backoff"), "nmpc-backoff",
                              runfolder.record(config)) as out:
        chosen, rows = backoff_study(episodes=config.episodes)
        (out / "backoff.md").write_text(f"# NMPC temperature back-off\n\n"
                                        f"{report.markdown_table(BACKOFF_HEADERS, rows)}\n\nchosen back-off: {chosen:g} K\n")
    return chosen, rows, out
