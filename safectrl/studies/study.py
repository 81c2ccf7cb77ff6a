"""The main study: every scenario under the reference controllers, with tables and figures.

For now it compares the nominal PI with the distribution of randomly tuned PI controllers that make up
the offline datasets; the comparative-study issue grows it to NMPC, offline RL and the safety layer.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

import safectrl
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import polycstr as pc
from safectrl.rl.data import evaluation_seeds
from safectrl.rl.polycstr_env import PolyCSTREnv
from safectrl.rl.rollout import Episode, run_episode
from safectrl.studies import plots, report
from safectrl.studies.datasets import simulate_pi_episodes
from safectrl.studies.metrics import EpisodeMetrics, episode_metrics


@dataclass(frozen=True)
class StudyPreset:
    """Size of a study run."""

    name: str
    eval_seeds: int  # evaluation episodes per controller and scenario
    data_tunings: int  # randomly tuned PI episodes per scenario (the dataset's own episodes)
    data_seed: int = 0  # dataset seed the tunings come from


PRESETS = {
    "quick": StudyPreset("quick", eval_seeds=5, data_tunings=20),
    "full": StudyPreset("full", eval_seeds=20, data_tunings=100),
}


def default_out_dir(preset: str) -> Path:
    return Path("runs") / f"study-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _summary_rows(results: dict[str, dict[str, list[EpisodeMetrics]]]) -> list[list]:
    rows = []
    for scenario, by_ctrl in results.items():
        for ctrl, ms in by_ctrl.items():
            rows.append(
                [
                    scenario,
                    ctrl,
                    len(ms),
                    report.mean_std([m.cost for m in ms]),
                    report.mean_std([m.final_abs_eP for m in ms]),
                    report.mean_std([m.final_abs_eT for m in ms]),
                    sum(m.violations > 0 for m in ms),
                    float(max(m.worst_exceedance for m in ms)),
                    sum(m.failure for m in ms),
                ]
            )
    return rows


SUMMARY_HEADERS = (
    "scenario",
    "controller",
    "episodes",
    "cost (mean ± std)",
    "final |e_P| kg/m³",
    "final |e_T| K",
    "episodes with T > T_max",
    "worst exceedance K",
    "runaways",
)


def run_study(preset: str = "quick", out: str | Path | None = None, progress: bool = True) -> Path:
    """Run the study and write ``config.json``, ``episodes.csv``, ``summary.md`` and ``trajectories.png``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    out_dir = Path(out) if out is not None else default_out_dir(preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = evaluation_seeds(cfg.eval_seeds)
    (out_dir / "config.json").write_text(
        json.dumps(
            {"preset": asdict(cfg), "eval_seeds": seeds, "nominal_pi": NOMINAL_TUNING.as_dict(),
             "safectrl": safectrl.__version__},
            indent=2,
        )
    )
    results: dict[str, dict[str, list[EpisodeMetrics]]] = {}
    panels: dict[str, list[plots.Trace]] = {}
    records = []
    for scenario in tqdm(pc.SCENARIOS, desc="scenarios", disable=not progress):
        env = PolyCSTREnv(scenario=scenario)
        nominal = [run_episode(env, PIController(NOMINAL_TUNING), s) for s in seeds]
        sampled = simulate_pi_episodes(scenario, cfg.data_tunings, cfg.data_seed)
        episodes: dict[str, list[Episode]] = {"PI nominal": nominal, "PI dataset tunings": sampled}
        results[scenario] = {k: [episode_metrics(ep) for ep in v] for k, v in episodes.items()}
        for ctrl, eps in episodes.items():
            for ep, m in zip(eps, results[scenario][ctrl]):
                records.append({"scenario": scenario, "controller": ctrl, "seed": ep.seed, **m.as_dict()})
        panels[scenario] = [
            plots.Trace(ep, "PI dataset tunings" if k == 0 else None, color="0.55", width=0.8, alpha=0.6)
            for k, ep in enumerate(sampled)
        ] + [plots.Trace(nominal[0], "PI nominal", color="C0", width=2.0)]
    with open(out_dir / "episodes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    table = report.markdown_table(SUMMARY_HEADERS, _summary_rows(results))
    (out_dir / "summary.md").write_text(
        f"# safectrl study ({preset})\n\nEvaluation seeds {seeds[0]}..{seeds[-1]}; dataset tunings from "
        f"dataset seed {cfg.data_seed}. Cost is -sum of rewards over 100 h; final offsets are means over "
        f"the last 10 h.\n\n{table}\n\n![trajectories](trajectories.png)\n"
    )
    plots.trajectory_figure(panels, out_dir / "trajectories.png",
                            title="Nominal PI (blue) and the dataset's randomly tuned PI (grey)")
    print(table)
    print(f"\nwritten to {out_dir}")
    return out_dir

