"""How the nominal PI tuning was chosen: SIMC rules, closed-loop time constants picked by closed-loop cost.

For every pair of closed-loop time constants on a grid, the SIMC gains (:func:`simc_tuning`) are run on
all three scenarios on the nominal plant and on the mismatched plant (UA -20 %, dH +10 %), with tuning
seeds that no dataset or evaluation uses. Admissible pairs have no T_max violation and no runaway on
either plant; the chosen pair minimises the summed mean episode cost over both plants. The result,
rounded to two significant figures, is :data:`safectrl.controllers.pi.NOMINAL_TUNING`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from safectrl.controllers.pi import NOMINAL_TUNING, PIController, PITuning, simc_tuning
from safectrl.models import polycstr as pc
from safectrl.rl.data import TUNING_SEED_OFFSET
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode
from safectrl.studies import report

TAU_C_P_HOURS = (0.5, 1.0, 2.0, 4.0)
TAU_C_T_HOURS = (1.0, 1.5, 2.0, 3.0, 4.0)


def round_tuning(t: PITuning, digits: int = 2) -> PITuning:
    """Every gain rounded to ``digits`` significant figures."""

    def sig(v: float) -> float:
        return 0.0 if v == 0 else round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))

    return PITuning(**{k: sig(v) for k, v in t.as_dict().items()})


def closed_loop_score(tuning: PITuning, plant: pc.PolyCSTRParams, episodes: int) -> tuple[float, int, int]:
    """Sum over scenarios of the mean episode cost; episodes with violations; runaways."""
    total, violating, failed = 0.0, 0, 0
    for scenario in pc.SCENARIOS:
        env = TaskEnv(pc.TASK, scenario=scenario, plant=plant)
        costs = []
        for k in range(episodes):
            ep = run_episode(env, PIController(tuning), TUNING_SEED_OFFSET + k)
            costs.append(-ep.rewards.sum())
            violating += int(ep.infos["violation"].any())
            failed += int(ep.failed)
        total += float(np.mean(costs))
    return total, violating, failed


def run_pi_tuning(episodes: int = 5, verbose: bool = True) -> PITuning:
    """Search the grid, print the table, and return the chosen tuning (rounded)."""
    rows, best, best_score = [], None, math.inf
    for tc_P in TAU_C_P_HOURS:
        for tc_T in TAU_C_T_HOURS:
            tuning = simc_tuning(tc_P * 3600, tc_T * 3600)
            nom = closed_loop_score(tuning, pc.PolyCSTRParams(), episodes)
            mis = closed_loop_score(tuning, pc.mismatched(), episodes)
            admissible = nom[1] == nom[2] == mis[1] == mis[2] == 0
            score = nom[0] + mis[0]
            rows.append([tc_P, tc_T, tuning.Kp_P, tuning.Ki_P, tuning.Kp_T, tuning.Ki_T, nom[0], nom[1] + nom[2],
                         mis[0], mis[1] + mis[2], admissible])
            if admissible and score < best_score:
                best, best_score = (tc_P, tc_T, tuning), score
    if best is None:
        raise RuntimeError("no admissible SIMC tuning on the grid")
    chosen = round_tuning(best[2])
    if verbose:
        print(report.markdown_table(
            ["tau_c P h", "tau_c T h", "Kp_P", "Ki_P", "Kp_T", "Ki_T", "cost nominal", "viol+fail nominal",
             "cost mismatched", "viol+fail mismatched", "admissible"], rows))
        print(f"\nchosen: tau_c P = {best[0]} h, tau_c T = {best[1]} h -> {chosen}")
        print(f"NOMINAL_TUNING in safectrl: {NOMINAL_TUNING} ({'same' if chosen == NOMINAL_TUNING else 'DIFFERENT'})")
    return chosen


@dataclass(frozen=True)
class PITuningConfig:
    """``safectrl pi-tuning``: the SIMC grid scored in closed loop on tuning seeds."""

    episodes: int = field(default=5, metadata={"min": 1})  # tuning episodes per scenario and plant
    verbose: bool = True  # print the table and the choice


def run(config: PITuningConfig = PITuningConfig()) -> PITuning:
    """The chosen tuning (:func:`run_pi_tuning`); prints, writes no folder (the table is the result)."""
    return run_pi_tuning(config.episodes, config.verbose)
