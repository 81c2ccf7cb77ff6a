"""Simulation speed: scipy BDF (the reference) vs the env's step vs the batched compiled step.

Run: ``python benchmarks/env_step.py``. Every number is measured in this process, on the same right-hand
side (``safectrl.models.polycstr.rhs``) and the same inputs: those of a nominal-PI startup episode.
Ratios are reference time / our time per reactor-step. The reference is scipy ``solve_ivp(method="BDF")``
at rtol 1e-8 (per-state atol 1e-10 x nominal magnitude), the tolerance at which scipy is as accurate as
our integrator; the precursor's default-tolerance run is printed too, with its error.
"""

from __future__ import annotations

import resource
import time
import tracemalloc

import gymnasium as gym
import numpy as np
from scipy.integrate import solve_ivp

import safectrl  # noqa: F401
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import polycstr as pc
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

PARAMS = pc.PolyCSTRParams()


def scipy_episode(x0, actions, rtol, atol_factor):
    x, out = x0.copy(), [x0]
    for u in actions:
        sol = solve_ivp(lambda t, y: pc.MODEL.rhs_numpy(y, u, PARAMS), (0.0, pc.DT), x, method="BDF",
                        rtol=rtol, atol=atol_factor * pc.X_SCALE)
        x = sol.y[:, -1]
        out.append(x)
    return np.array(out)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ep = run_episode(TaskEnv(pc.TASK, "startup"), PIController(NOMINAL_TUNING), seed=0)
    x0, actions = ep.infos["state"][0], np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)
    n = len(actions)
    truth = scipy_episode(x0, actions, 1e-11, 1e-14)
    ours = ep.infos["state"]

    def rel_err(traj):
        return float(np.max(np.abs(traj - truth) / np.abs(truth).clip(1e-300)))

    print(f"startup episode under nominal PI, {n} intervals of {pc.DT:g} s, seed 0")
    print(f"reference accuracy check against scipy BDF rtol 1e-11: ours max rel err {rel_err(ours):.1e}\n")
    rows = []
    ref_time = None
    for label, rtol, atol in (("scipy BDF rtol 1e-8 (reference)", 1e-8, 1e-10),
                              ("scipy BDF rtol 1e-6", 1e-6, 1e-8),
                              ("scipy BDF defaults (precursor)", 1e-3, None)):
        if atol is None:
            def run():
                x = x0.copy()
                for u in actions:
                    x = solve_ivp(lambda t, y: pc.MODEL.rhs_numpy(y, u, PARAMS), (0, pc.DT), x, method="BDF").y[:, -1]
            t = best_of(run, 3) / n
            xs, xx = [x0], x0.copy()
            for u in actions:
                xx = solve_ivp(lambda t_, y: pc.MODEL.rhs_numpy(y, u, PARAMS), (0, pc.DT), xx, method="BDF").y[:, -1]
                xs.append(xx)
            err = rel_err(np.array(xs))
        else:
            t = best_of(lambda: scipy_episode(x0, actions, rtol, atol), 3) / n
            err = rel_err(scipy_episode(x0, actions, rtol, atol))
        ref_time = ref_time or t
        rows.append((label, t, err))

    env = gym.make("safectrl/PolyCSTR-v0", scenario="startup")

    def env_episode():
        env.reset(seed=0)
        for u in actions:
            env.step(u)

    env_episode()
    rows.append(("env.step (gym.make, single reactor)", best_of(env_episode, 5) / n, rel_err(ours)))
    # The interval inside env.step: one compiled call (the env's since 2026-12) against the previous path,
    # step_batch and then the stage cost, the limits' exceedance and the failure test in NumPy.
    task, p1 = pc.TASK, pc.MODEL.param_vector(PARAMS)
    sp = np.array([pc.SCENARIOS["startup"].setpoint])
    states, inputs = ours[:-1, None, :], actions[:, None, :]

    def pieces():
        for x, u in zip(states, inputs):
            xf = pc.MODEL.step_batch(x, u, p1)
            with np.errstate(all="ignore"):
                task.stage_cost_numpy(xf, u, sp, PARAMS)
            task.exceedance(xf, PARAMS)
            task.failed(xf, PARAMS)

    def fused():
        for x, u in zip(states, inputs):
            task.transition(x, u, p1, sp)

    fused(), pieces()
    rows.append(("  interval, previous: step_batch + NumPy cost, limits", best_of(pieces, 5) / n, float("nan")))
    rows.append(("  interval, now: Task.transition (one compiled call)", best_of(fused, 5) / n, float("nan")))
    model_calls = {}
    for N in (1, 64, 1024):
        # N reactors at N different points of the episode, each with that point's input
        at = np.arange(N) % n
        X, U = ours[at], actions[at]
        p = pc.MODEL.param_vector(PARAMS)
        steps = n if N == 1 else (40 if N == 64 else 10)
        pc.MODEL.step_batch(X, U, p)

        def batch_run(X=X, U=U, steps=steps, N=N):
            for k in range(steps):
                if N == 1:  # one reactor walks through the episode, as the env does
                    pc.MODEL.step_batch(ours[k : k + 1], actions[k : k + 1], p)
                else:
                    pc.MODEL.step_batch(X, U, p)

        if N == 1024:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            batch_run()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            model_calls["mem"] = (peak, rss1 - rss0, rss1)
        t = best_of(batch_run, 3) / (steps * N)
        rows.append((f"batched step_batch, N = {N}", t, float("nan")))
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  {'us / reactor-step':>18}  {'speed-up vs reference':>22}  {'max rel err':>11}")
    for label, t, err in rows:
        print(f"{label:<{width}}  {t * 1e6:>18.2f}  {ref_time / t:>21.1f}x  {err:>11.1e}")
    peak, drss, rss = model_calls["mem"]
    print(f"\nN = 1024 run: peak traced (NumPy) allocation {peak / 2**20:.2f} MiB, process peak RSS growth "
          f"{drss / 1024:.1f} MiB (peak RSS {rss / 1024:.0f} MiB)")
    print(f"intervals recomputed by CVODES during this benchmark: {pc.MODEL.fallbacks} "
          f"(RODAS4 error estimate above {pc.MODEL.err_tol:g})")


if __name__ == "__main__":
    main()
