"""Latency of the PICNN action correction: gradient descent vs the exact program, single and batched, and
the exact program (built once, DPP, re-solved) vs a naive cvxpy formulation rebuilt for every state, and
the QP's built-once backends (DAQP, the default, and Clarabel) against each other.

Run: ``python benchmarks/safety.py [--models DIR] [--scenario grade_up] [--states 200]``. With ``--models``
the checkpoint ``DIR/<scenario>`` (``safectrl safety train``) is used; otherwise a cost model is trained
for 20 epochs on the scenario's PI dataset first. States and policy actions are the dataset's. Every time
is measured in this process; the ratios compare methods on the same states, with the same objective
(λ = FilterSettings().trust). The rebuilt baseline is solved by HiGHS (LP) or Clarabel (QP) with the
options ExactCorrector gives them, for every built-once solver. "Built once, batched" corrects the same
states in one call (one export, then one re-solve per state); the rebuilt baseline has no batched form.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import cvxpy as cp
import numpy as np
import torch

from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.safety.correction import ExactCorrector, GradientCorrector
from safectrl.studies import datasets
from safectrl.studies import safety_layer as sl


def naive_solve(layers, k: int, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, trust: float, solver: str,
                options: dict) -> tuple[float, float, int]:
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
    return problem.value, problem.solver_stats.solve_time, problem.solver_stats.num_iters or 0


def compare_with_rebuild(model, box, obs: np.ndarray, raw: np.ndarray, trust: float, solver: str | None = None
                         ) -> tuple[tuple, np.ndarray, np.ndarray]:
    """Built-once exact correction (``solver``, None for the default) vs :func:`naive_solve` (HiGHS for the
    LP, Clarabel for the QP), one state per call, states in the given order.

    Returns the row (trust, solver, ms per state, solver ms per state, iterations per state — built once;
    the same three for the rebuilt program; max |difference| of the optimal values; ms per state of the
    built-once program correcting all states in one call), and the built-once optimal values (N,) and
    actions (N, act_dim).
    """
    lo, hi = box.bounds(obs)
    x = model.state_features(obs)
    y_lo, y_hi, y_ref = model.scale_action(lo), model.scale_action(hi), model.scale_action(np.clip(raw, lo, hi))
    n = len(x)
    exact = ExactCorrector(model.picnn, trust, solver=solver)
    baseline = ExactCorrector(model.picnn, trust, solver=cp.HIGHS if trust == 0 else cp.CLARABEL)
    layers = exact.net.export(torch.as_tensor(x))
    exact.correct(x[-1:], y_ref[-1:], y_lo[-1:], y_hi[-1:])  # the one-off compilation (and a solve elsewhere)
    values = {"exact": np.empty(n), "naive": np.empty(n)}
    actions = np.empty_like(y_ref)
    stats = {"exact": [], "naive": []}  # per timed run: (solver ms, iterations) per state, as reported

    def run_exact():
        ms = its = 0.0
        for k in range(n):
            res = exact.correct(x[k : k + 1], y_ref[k : k + 1], y_lo[k : k + 1], y_hi[k : k + 1])
            values["exact"][k], actions[k] = res.objective[0], res.action[0]
            ms, its = ms + res.solver_time[0] * 1e3 / n, its + res.iterations[0] / n
        stats["exact"].append((ms, its))

    def run_naive():
        ms = its = 0.0
        for k in range(n):
            values["naive"][k], t, it = naive_solve(layers, k, y_ref[k], y_lo[k], y_hi[k], trust,
                                                    baseline.solver, baseline.solver_options)
            ms, its = ms + t * 1e3 / n, its + it / n
        stats["naive"].append((ms, its))

    (t_exact, i_exact), (t_naive, i_naive) = timed_runs(run_exact, n), timed_runs(run_naive, n)
    t_batched = per_action(lambda: exact.correct(x, y_ref, y_lo, y_hi), n)
    agree = float(np.max(np.abs(values["exact"] - values["naive"])))
    row = (trust, exact.solver, t_exact, *stats["exact"][i_exact], t_naive, *stats["naive"][i_naive], agree,
           t_batched)
    return row, values["exact"].copy(), actions


class TorchGradientCorrector(GradientCorrector):
    """The gradient descent's evaluations as they were before they moved to NumPy: each objective and
    gradient by torch's autograd through the whole network (gates included) at float64, inside the same
    descent. The baseline of the "gd (previous ...)" rows."""

    def correct(self, x, y_ref, lo, hi, record_path=False):
        self._x = torch.as_tensor(np.asarray(x, dtype=float))
        return super().correct(x, y_ref, lo, hi, record_path)

    def _objective(self, gates, y, y_ref):
        yt = torch.as_tensor(y).requires_grad_(True)
        with torch.enable_grad():
            f = self.net(self._x, yt)
            obj = f + 0.5 * self.trust * ((yt - torch.as_tensor(y_ref)) ** 2).sum(1)
            (grad,) = torch.autograd.grad(obj.sum(), yt)
        return obj.detach().numpy(), f.detach().numpy(), grad.numpy()


def per_action(fn, n_actions: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` divided by the number of actions it corrects, in ms."""
    return timed_runs(fn, n_actions, repeats)[0]


def timed_runs(fn, n_actions: int, repeats: int = 3) -> tuple[float, int]:
    """(best-of-``repeats`` ms per action, index of the best run), so that numbers ``fn`` records per run
    can be taken from the same run as the time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    best = int(np.argmin(times))
    return times[best] / n_actions * 1e3, best


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
        default = sl.SafetyLayerConfig()
        cfg = sl.SafetyLayerConfig(target=default.target, train=replace(default.train, epochs=20))
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
    previous = sl.make_filter(sl.BASE_POLICIES["PI nominal"](args.scenario), model, "gd", settings)
    previous.corrector = TorchGradientCorrector(model.picnn, previous.corrector.trust, previous.corrector.config)
    times: dict[str, float] = {}
    for m, filt in (("gd (previous: torch autograd)", previous), *filters.items()):
        times[f"{m} single"] = per_action(lambda: [filt.correct(obs[k : k + 1], raw[k : k + 1]) for k in range(n)], n)
        times[f"{m} batched"] = per_action(lambda: filt.correct(obs, raw), n)
    gd_prev = previous.correct(obs, raw)[0]

    # exact (built once, DPP, re-solved) vs naive (rebuilt per state): same numbers, solver and options, on
    # two sets of states: random dataset states (each solve starts far from the last) and the consecutive
    # states of one dataset episode, in order (what a filter in closed loop sees)
    box = sl.action_box(settings.rate)
    first = np.flatnonzero(tr.episode == tr.episode[0])
    state_sets = {"random": (obs[:50], raw[:50]), "episode": (tr.obs[first], tr.action[first])}
    rebuild_rows, backend_lines = [], []
    for label, (o, a) in state_sets.items():
        row, _, _ = compare_with_rebuild(model, box, o, a, 0.0)
        rebuild_rows.append((label, len(o), *row))
        qp = []
        for solver in (None, cp.CLARABEL):  # the default (DAQP), then Clarabel, on the same states
            row, value, action = compare_with_rebuild(model, box, o, a, settings.trust, solver)
            rebuild_rows.append((label, len(o), *row))
            qp.append((row, value, action))
        (new, v_new, a_new), (old, v_old, a_old) = qp
        backend_lines.append(
            f"{label} ({len(o)}), λ = {settings.trust:g}, built once: {new[1]} vs {old[1]}: "
            f"{old[2] / new[2]:.1f}x faster per state ({new[2]:.2f} vs {old[2]:.2f} ms; "
            f"solver {new[3]:.2f} vs {old[3]:.2f} ms, {_ratio(old[3], new[3])}; "
            f"iterations {new[4]:.1f} vs {old[4]:.1f}); against the same rebuilt baseline "
            f"{new[5] / new[2]:.1f}x vs {old[5] / old[2]:.1f}x; optimal values agree to "
            f"{np.max(np.abs(v_new - v_old)):.1e}, actions to {np.max(np.abs(a_new - a_old)):.1e} "
            "(network units)")
    gd = filters["gd"].correct(obs, raw)[0]
    ex = filters["exact"].correct(obs, raw)[0]
    print(f"correction through SafetyFilter.correct (export, solve, unit conversions), λ = {settings.trust}:\n")
    print("| method | ms per action |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} |")
    print()
    print(f"GD in NumPy vs GD by torch autograd (previous), single state: "
          f"{times['gd (previous: torch autograd) single'] / times['gd single']:.1f}x faster, batched: "
          f"{times['gd (previous: torch autograd) batched'] / times['gd batched']:.1f}x; corrected actions "
          f"differ by at most {np.max(np.abs(gd - gd_prev)):.1e} (physical units)")
    print(f"GD vs exact, single state:  {times['exact single'] / times['gd single']:.1f}x faster")
    print(f"GD vs exact, batched:       {times['exact batched'] / times['gd batched']:.1f}x faster")
    print(f"batched vs single, GD:      {times['gd single'] / times['gd batched']:.1f}x faster per action")
    print(f"batched vs single, exact:   {times['exact single'] / times['exact batched']:.1f}x faster per action")
    print(f"GD vs exact corrected actions: max |difference| f_I {np.max(np.abs(gd - ex)[:, 0]):.1e} kg/h, "
          f"T_c {np.max(np.abs(gd - ex)[:, 1]):.1e} K\n")
    print("exact program built once (DPP, Parameters) vs the same program rebuilt from constants per state, "
          "one state per call; states: 50 random dataset states, or the consecutive states of the dataset's "
          "first episode in order (closed loop: HiGHS restarts from the previous state's basis, DAQP from "
          "the previous working set); rebuilt: solved by HiGHS (λ = 0) or Clarabel (λ > 0):\n")
    print("| states | λ | solver | built once: ms per state (solver ms) | iterations | rebuilt: ms per state "
          "(solver ms) | iterations | speed-up | speed-up of the cvxpy part | built once, batched: ms per state | "
          "speed-up batched | optimal values agree to |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, n_states, trust, solver, te, se, ie, tn, sn, i_n, agree, tb in rebuild_rows:
        print(f"| {label} ({n_states}) | {trust:g} | {solver} | {te:.2f} ({se:.2f}) | {ie:.1f} | {tn:.2f} ({sn:.2f}) "
              f"| {i_n:.1f} | {tn / te:.1f}x | {_ratio(tn - sn, te - se)} | {tb:.2f} | {tn / tb:.1f}x | {agree:.1e} |")
    print("\nQP backends of the built-once program, same run, same states:\n")
    for line in backend_lines:
        print(line)


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.1f}x" if den > 0 and num > 0 else "n/a (solver time above wall time: a noisy run)"


if __name__ == "__main__":
    main()
