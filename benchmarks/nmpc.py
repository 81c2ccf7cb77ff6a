"""NMPC solve time: the controller (NLP built once, shifted warm start) against a naive NMPC of the same
problem (NLP rebuilt every step, cold start), and the discretisation choice.

Run: ``python benchmarks/nmpc.py``. Every number is measured in this process. Part 1 runs the oracle NMPC
on the true state of the reactor through the first ``STEPS`` intervals of a startup and a grade change;
at every visited state, the naive controller builds the same NLP anew and solves it from the cold initial
guess (every state at the current one, every input at the previous one). Ratios are naive time / ours
per control step. Part 2 solves the same closed loops with each solver
(IPOPT with MUMPS, fatrop) and discretisation, against the previous default (IPOPT, Radau 3 points on 2
elements) in the same run, and compares the prediction with the plant's integrator.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from safectrl.controllers.nmpc import NMPC, NMPCConfig
from safectrl.controllers.polycstr_nmpc import NMPC_CONFIG
from safectrl.models import polycstr as pc
from safectrl.studies import report

PLANT = pc.PolyCSTRParams()
STEPS = 40
SCENARIOS = (("startup", 0), ("grade_up", 0))


def closed_loop(scenario: str, seed: int, config: NMPCConfig, steps: int = STEPS):
    """The NMPC on the true state: visited (x, u_prev), solutions, build time, cost, 1-step T error, stats."""
    rng = np.random.default_rng(seed)
    x, u_prev = pc.get_scenario(scenario).initial(rng, PLANT)
    sp = np.array(pc.get_scenario(scenario).setpoint)
    t0 = time.perf_counter()
    nmpc = NMPC(pc.MODEL, PLANT, config)
    build = time.perf_counter() - t0
    visited, sols, cost, pred_err = [], [], 0.0, 0.0
    for _ in range(steps):
        sol = nmpc.solve(x, u_prev, sp)
        visited.append((x, u_prev))
        sols.append(sol)
        x_next = pc.MODEL.step(x, sol.u, PLANT)
        pred_err = max(pred_err, abs(sol.x_plan[1, 4] - x_next[4]))
        cost += float(np.sum((sp - x_next[[3, 4]]) ** 2))
        x, u_prev = x_next, sol.u
    return visited, sols, build, cost, pred_err, nmpc.stats


def naive(visited, sp: np.ndarray, config: NMPCConfig):
    """Rebuild and cold-solve at every visited state: per-step total and solve-only times, iterations."""
    cold = replace(config, warm_start=False)
    totals, solves, iters, fails = [], [], [], 0
    for x, u_prev in visited:
        t0 = time.perf_counter()
        nmpc = NMPC(pc.MODEL, PLANT, cold)
        sol = nmpc.solve(x, u_prev, sp)
        totals.append(time.perf_counter() - t0)
        solves.append(sol.solve_time)
        iters.append(sol.iterations)
        fails += int(not sol.success)
    return np.array(totals), np.array(solves), np.array(iters), fails


def ms(values) -> str:
    v = np.asarray(values) * 1e3
    return f"{report.fmt(float(np.median(v)), 3)} / {report.fmt(float(np.percentile(v, 95)), 3)}"


def main() -> None:
    print(f"NMPC of the polymerisation CSTR, horizon {NMPC_CONFIG.horizon}, first {STEPS} intervals, "
          f"oracle on the true state\n")
    rows = []
    for scenario, seed in SCENARIOS:
        visited, sols, _, _, _, stats = closed_loop(scenario, seed, NMPC_CONFIG)
        sp = np.array(pc.get_scenario(scenario).setpoint)
        totals, cold_solves, cold_iters, fails = naive(visited, sp, NMPC_CONFIG)
        ours = stats.solve_times()
        its = stats.iterations()
        rows.append([scenario, "ours: built once, shifted warm start", ms(ours),
                     f"{int(np.median(its))} / {int(its.max())}", stats.failures, 1.0])
        rows.append([scenario, "naive: rebuilt every step, cold start", ms(totals),
                     f"{int(np.median(cold_iters))} / {int(cold_iters.max())}", fails,
                     float(np.median(totals) / np.median(ours))])
        rows.append([scenario, "  (naive solve alone, without the rebuild)", ms(cold_solves), "", "",
                     float(np.median(cold_solves) / np.median(ours))])
    print(report.markdown_table(
        ["scenario", "controller", "ms per step median / p95", "solver iterations median / max", "failed",
         "ratio of medians naive/ours"], rows))

    print("\nSolver and discretisation (same closed loops; ratio = previous default's median / this one's, "
          "error = |predicted - plant T| one interval ahead, violations = intervals above T_max)\n")
    rows = []
    for scenario, seed in SCENARIOS:
        base_time = base_cost = None
        for name, cfg in CONFIGURATIONS:
            visited, _, build, cost, err, stats = closed_loop(scenario, seed, cfg)
            t = float(np.median(stats.solve_times()))
            base_time, base_cost = base_time or t, base_cost or cost
            T = np.array([x[4] for x, _ in visited[1:]])  # the plant's T at the interval ends
            rows.append([scenario, name, build, ms(stats.solve_times()), base_time / t,
                         int(np.median(stats.iterations())), stats.failures, cost,
                         100.0 * (cost - base_cost) / base_cost, int(np.sum(T > pc.T_MAX)), float(T.max()), err])
    print(report.markdown_table(
        ["scenario", "configuration", "build s", "solve ms median / p95", "speed-up", "iterations median",
         "failed", f"cost of {STEPS} intervals", "cost vs previous %", "violations", "max plant T K",
         "max 1-step T error K"], rows))


#: The configurations compared; the first is the previous default (the ratios' baseline), NMPC_CONFIG the
#: current one (docs/decisions.md#nmpc-solver).
CONFIGURATIONS = (
    ("previous default: IPOPT, Radau 3 points x 2 elements",
     replace(NMPC_CONFIG, solver="ipopt", collocation_elements=2)),
    ("IPOPT, Radau 3 x 1", replace(NMPC_CONFIG, solver="ipopt", collocation_elements=1)),
    ("fatrop, Radau 3 x 2", replace(NMPC_CONFIG, solver="fatrop", collocation_elements=2)),
    (f"default: {NMPC_CONFIG.solver}, Radau {NMPC_CONFIG.collocation_degree} x "
     f"{NMPC_CONFIG.collocation_elements}", NMPC_CONFIG),
    ("fatrop, Radau 2 x 1", replace(NMPC_CONFIG, solver="fatrop", collocation_degree=2, collocation_elements=1)),
    ("fatrop, Radau 3 x 3", replace(NMPC_CONFIG, solver="fatrop", collocation_elements=3)),
    ("fatrop, multiple shooting (RODAS4, 16 substeps)", replace(NMPC_CONFIG, discretisation="shooting")),
)


if __name__ == "__main__":
    main()
