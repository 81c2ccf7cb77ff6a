"""Latency of the PICNN action correction: gradient descent vs the exact program, single and batched, and
the exact program (built once, DPP, re-solved) vs a naive cvxpy formulation rebuilt for every state.

Run: ``python benchmarks/safety.py [--models DIR] [--scenario grade_up] [--states 200]``. With ``--models``
the checkpoint ``DIR/<scenario>`` (``safectrl safety train``) is used; otherwise a cost model is trained
for 20 epochs on the scenario's PI dataset first. States and policy actions are the dataset's. Every time
is measured in this process; the ratios compare methods on the same states, with the same objective
(λ = FilterSettings().trust) and solver.
"""

from __future__ import annotations

import argparse
import time

import cvxpy as cp
import numpy as np
import torch

from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.safety.correction import ExactCorrector
from safectrl.safety.cost_model import CostModelTrainConfig
from safectrl.studies import datasets
from safectrl.studies import safety_layer as sl


def naive_solve(layers, k: int, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, trust: float, solver: str,
                options: dict) -> tuple[np.ndarray, float]:
    """The same epigraph program written with the numbers of state k as constants: rebuilt every call."""
    m = y_ref.shape[0]
    y = cp.Variable(m)
    constraints = [y >= lo, y <= hi]
    z = None
    for i in range(len(layers)):
        pre = layers.B[i][k] @ y + layers.c[i][k]
        if i > 0:
            pre = pre + layers.A[i][k] @ z
        if i < len(layers) - 1:
            z = cp.Variable(layers.c[i].shape[1])
            constraints += [z >= pre, z >= 0]
    objective = cp.sum(pre) + (0.5 * trust * cp.sum_squares(y - y_ref) if trust > 0 else 0)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=solver, **options)
    if problem.status != cp.OPTIMAL:
        raise RuntimeError(f"naive {solver} solve: status {problem.status}")
    return y.value, problem.value


def per_action(fn, n_actions: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` divided by the number of actions it corrects, in ms."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n_actions * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="folder of trained cost models (safectrl safety train)")
    parser.add_argument("--scenario", default="grade_up", choices=list(pc.SCENARIOS))
    parser.add_argument("--states", type=int, default=200, help="states to correct per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tr = data.load_transitions(datasets.generate_dataset(args.scenario, 100, 0, progress=True))
    if args.models:
        model = sl.load_scenario_model(args.models, args.scenario)
        source = f"checkpoint {args.models}/{args.scenario}"
    else:
        cfg = sl.SafetyLayerConfig(train=CostModelTrainConfig(epochs=20))
        model, _ = sl.train_cost_model(tr, cfg, progress=True, desc="cost model (20 epochs)")
        source = "trained here for 20 epochs"
    idx = np.random.default_rng(0).choice(len(tr), args.states, replace=False)
    obs, raw = tr.obs[idx], tr.action[idx]
    settings = sl.FilterSettings()
    n = len(obs)
    print(f"cost model: {source}; PICNN hidden {model.picnn.config.hidden}; λ = {settings.trust}; "
          f"{n} dataset states of {args.scenario}; torch threads {torch.get_num_threads()}\n")

    filters = {m: sl.make_filter(sl.BASE_POLICIES["PI nominal"](args.scenario), model, m, settings)
               for m in ("gd", "exact")}
    times: dict[str, float] = {}
    for m, filt in filters.items():
        times[f"{m} single"] = per_action(lambda: [filt.correct(obs[k : k + 1], raw[k : k + 1]) for k in range(n)], n)
        times[f"{m} batched"] = per_action(lambda: filt.correct(obs, raw), n)

    # exact (re-solved with Parameters) vs naive (rebuilt per state), on identical numbers and solver
    exact: ExactCorrector = filters["exact"].corrector
    box = sl.action_box(settings.rate)
    lo, hi = box.bounds(obs)
    x = model.state_features(obs)
    y_lo, y_hi, y_ref = model.scale_action(lo), model.scale_action(hi), model.scale_action(np.clip(raw, lo, hi))
    layers = exact.net.export(torch.as_tensor(x))
    reference = exact.correct(x, y_ref, y_lo, y_hi)
    n_naive = min(n, 50)
    naive_values = np.empty(n_naive)

    def run_naive():
        for k in range(n_naive):
            naive_values[k] = naive_solve(layers, k, y_ref[k], y_lo[k], y_hi[k], exact.trust, exact.solver,
                                          exact.solver_options)[1]

    times["naive cvxpy rebuilt per state"] = per_action(run_naive, n_naive, repeats=1)
    times["exact re-solve (no export, same states)"] = per_action(
        lambda: exact.correct(x[:n_naive], y_ref[:n_naive], y_lo[:n_naive], y_hi[:n_naive]), n_naive)
    agree = float(np.max(np.abs(naive_values - reference.objective[:n_naive])))
    gd = filters["gd"].correct(obs, raw)[0]
    ex = filters["exact"].correct(obs, raw)[0]

    print("| method | ms per action |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} |")
    print()
    print(f"exact (built once, DPP) vs naive rebuild per state: {times['naive cvxpy rebuilt per state'] / times['exact re-solve (no export, same states)']:.1f}x faster "
          f"(solver {exact.solver}; optimal values agree to {agree:.1e})")
    print(f"GD vs exact, single state:  {times['exact single'] / times['gd single']:.1f}x faster")
    print(f"GD vs exact, batched:       {times['exact batched'] / times['gd batched']:.1f}x faster")
    print(f"batched vs single, GD:      {times['gd single'] / times['gd batched']:.1f}x faster per action")
    print(f"batched vs single, exact:   {times['exact single'] / times['exact batched']:.1f}x faster per action")
    print(f"GD vs exact corrected actions: max |difference| f_I {np.max(np.abs(gd - ex)[:, 0]):.1e} kg/h, "
          f"T_c {np.max(np.abs(gd - ex)[:, 1]):.1e} K")


if __name__ == "__main__":
    main()
