"""How many RODAS4 substeps an interval of the reactor needs, and how far the error estimate can be trusted.

Run: ``python benchmarks/coarse_rung.py [--episodes 60]``. The measurement behind the reactor's coarse rung
(``polycstr.MODEL``: 4 substeps, kept where the embedded error estimate is at most 3e-6, else 16): episodes
of the env under four kinds of input (randomly tuned PI as in the datasets, the nominal PI, a uniformly
random input every interval, always the most heat), each scenario, on the nominal and on a mismatched plant
(UA -20 %, dH +10 %). Every interval is taken again from its start state in k substeps and compared with
CVODES at rtol 1e-9 (the model's reference); intervals whose reference fails (a runaway) are left out.

Printed per k and tolerance: the share of intervals a rung of k substeps keeps, the largest relative error
(max over states of |x - x_ref| / |x_ref|) among those it keeps, the largest error of the ladder "k, else
16, else CVODES" over all intervals, and its mean substeps per interval per kind of input (the fixed 16
substeps: 16, plus CVODES where its estimate exceeds ``err_tol``).
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from safectrl.controllers.pi import NOMINAL_TUNING, DatasetPI, PIController
from safectrl.models import compiled
from safectrl.models import polycstr as pc
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

KINDS = ("dataset PI", "nominal PI", "random inputs", "most heat")


class _Fixed:
    """A controller that applies ``draw(rng)`` every interval."""

    def __init__(self, draw, seed):
        self.draw, self.rng = draw, np.random.default_rng(seed)

    def reset(self, seed=None):
        pass

    def act(self, obs):
        return self.draw(self.rng)


def controller(kind: str, seed: int):
    if kind == "dataset PI":
        return DatasetPI()
    if kind == "nominal PI":
        return PIController(NOMINAL_TUNING)
    if kind == "random inputs":
        return _Fixed(lambda r: r.uniform(pc.U_LOW, pc.U_HIGH), seed)
    return _Fixed(lambda r: np.array([pc.U_HIGH[0], pc.U_HIGH[1]]), seed)  # most initiator, hottest coolant


def intervals(episodes: int):
    """(kind index, x0, u, p, reference x_end) of every interval of the episodes, reference finite."""
    ref = pc.MODEL.adaptive_interval_function()
    nominal = pc.PolyCSTRParams()
    mismatch = pc.mismatched(nominal, UA=0.8, dH=1.1)
    rows = []
    for k in tqdm(range(episodes), desc="episodes and their CVODES reference"):
        kind = k % len(KINDS)
        scenario = tuple(pc.SCENARIOS)[(k // len(KINDS)) % len(pc.SCENARIOS)]
        plant = nominal if (k // (len(KINDS) * len(pc.SCENARIOS))) % 2 == 0 else mismatch
        ep = run_episode(TaskEnv(pc.TASK, scenario, plant=plant), controller(KINDS[kind], k), seed=2000 + k)
        p = pc.MODEL.param_vector(plant)
        for x, u in zip(ep.infos["state"][:-1], np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)):
            if not np.all(np.isfinite(x)):
                continue
            try:
                xr = np.asarray(ref(x, u, p, 0.0)).ravel()
            except RuntimeError:
                continue
            if np.all(np.isfinite(xr)):
                rows.append((kind, x, u, p, xr))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=48, help="episodes (cycled over inputs, scenarios, plants)")
    ap.add_argument("--substeps", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8], help="coarse rungs to try")
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-6, 3e-6, 1e-5], help="error-estimate bounds")
    args = ap.parse_args()
    data = intervals(args.episodes)
    kind = np.array([d[0] for d in data])
    X, U, P, ref = (np.array([d[i] for d in data]) for i in range(1, 5))
    print(f"{len(data)} intervals ({', '.join(f'{KINDS[c]}: {np.sum(kind == c)}' for c in range(len(KINDS)))})")

    def rel_err(xf):
        return np.max(np.abs(xf - ref) / np.abs(ref), axis=1)

    fine = pc.MODEL.substeps
    xf16, est16 = compiled.Rows(pc.MODEL.interval_function())(X, U, P)
    # as in simulation, an interval whose 16-substep estimate exceeds err_tol is CVODES's (the reference)
    cvodes = ~(est16[:, 0] <= pc.MODEL.err_tol)
    e16 = np.where(cvodes, 0.0, rel_err(xf16))
    print(f"fixed {fine} substeps: largest relative error {e16.max():.1e} (per kind: "
          + ", ".join(f"{e16[kind == c].max():.1e}" for c in range(len(KINDS)))
          + f"); {cvodes.sum()} intervals recomputed by CVODES (estimate above {pc.MODEL.err_tol:g})\n")
    head = f"{'k':>2}  {'tol':>7}  {'kept':>6}  {'max err kept':>12}  {'ladder max err':>14}  " + "  ".join(
        f"{'substeps ' + name:>24}" for name in KINDS)
    print(head)
    for k in args.substeps:
        fn = pc.MODEL.interval_function(k)
        xf, est = compiled.Rows(fn)(X, U, P)
        e = rel_err(xf)
        for tol in args.tol:
            keep = est[:, 0] <= tol
            ladder = np.where(keep, e, e16)
            per_kind = [k + fine * (1 - keep[kind == c].mean()) for c in range(len(KINDS))]
            print(f"{k:>2}  {tol:>7.0e}  {keep.mean():>6.1%}  {e[keep].max() if keep.any() else 0:>12.1e}  "
                  f"{ladder.max():>14.1e}  " + "  ".join(f"{s:>24.1f}" for s in per_kind))


if __name__ == "__main__":
    main()
