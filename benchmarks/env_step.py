"""Simulation speed: scipy BDF (the reference) vs the env's step vs the batched compiled step.

Run: ``python benchmarks/env_step.py``. Every number is measured in this process, on the same right-hand
side (``safectrl.models.polycstr.rhs``) and the same inputs: those of a nominal-PI startup episode.
Ratios are reference time / our time per reactor-step. The reference is scipy ``solve_ivp(method="BDF")``
at rtol 1e-8 (per-state atol 1e-10 x nominal magnitude), the tolerance at which scipy is as accurate as
our integrator; the precursor's default-tolerance run is printed too, with its error.

The second table times, in turn in the same process, the previous configuration (every interval in 16
RODAS4 substeps) and the current one (4 substeps, retaken in 16 where their error estimate is too large):
the env's step, the interval inside it, and the batched step of 1, 64 and 1024 reactors.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
from scipy.integrate import solve_ivp

import safectrl  # noqa: F401
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import compiled
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


COARSE = pc.MODEL.coarse_substeps


@contextmanager
def fixed_substeps():
    """The previous configuration: every interval in ``MODEL.substeps`` RODAS4 steps."""
    pc.MODEL.coarse_substeps = 0
    try:
        yield
    finally:
        pc.MODEL.coarse_substeps = COARSE


def paired(fn, repeats, per):
    """Best time per ``per`` of ``fn`` with fixed substeps and with the coarse rung, timed in turn."""
    prev, now = [], []
    for _ in range(repeats):
        with fixed_substeps():
            prev.append(best_of(fn, 1))
        now.append(best_of(fn, 1))
    return min(prev) / per, min(now) / per


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    before = pc.MODEL.refined
    ep = run_episode(TaskEnv(pc.TASK, "startup"), PIController(NOMINAL_TUNING), seed=0)
    refined_in_episode = pc.MODEL.refined - before
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

    with fixed_substeps():
        ep_prev = run_episode(TaskEnv(pc.TASK, "startup"), PIController(NOMINAL_TUNING), seed=0)
    env_episode()
    paired_rows = [("env.step (gym.make, single reactor)", *paired(env_episode, 15, n),
                    rel_err(ep_prev.infos["state"]), rel_err(ours))]
    task, p1 = pc.TASK, pc.MODEL.param_vector(PARAMS)
    sp = np.array([pc.SCENARIOS["startup"].setpoint])
    states, inputs = ours[:-1, None, :], actions[:, None, :]

    def fused():
        for x, u in zip(states, inputs):
            task.transition(x, u, p1, sp)

    fused()
    paired_rows.append(("  its interval: Task.transition", *paired(fused, 15, n), np.nan, np.nan))
    p = pc.MODEL.param_vector(PARAMS)
    for N in (1, 64, 1024):
        # N reactors at N different points of the episode, each with that point's input
        at = np.arange(N) % n
        X, U = ours[at], actions[at]
        steps = n if N == 1 else (40 if N == 64 else 10)
        pc.MODEL.step_batch(X, U, p)

        def batch_run(X=X, U=U, steps=steps, N=N):
            for k in range(steps):
                if N == 1:  # one reactor walks through the episode, as the env does
                    pc.MODEL.step_batch(ours[k : k + 1], actions[k : k + 1], p)
                else:
                    pc.MODEL.step_batch(X, U, p)

        with fixed_substeps():
            batch_run()
        paired_rows.append((f"batched step_batch, N = {N}", *paired(batch_run, 3, steps * N), np.nan, np.nan))
        if N == 1024:
            # the path of before this table: the compiled 16-substep interval mapped by CasADi over
            # threads, the arrays converted to CasADi matrices on every call
            F = compiled.compile_function(pc.MODEL.interval_function())
            F = F.map(N, "thread", compiled.threads()) if compiled.threads() > 1 else F.map(N)
            P = np.broadcast_to(p, (N, len(p)))

            def casadi_map(F=F, X=X, U=U, P=P, steps=steps):
                for _ in range(steps):
                    F(X.T, U.T, P.T)

            casadi_map()
            t_map = best_of(casadi_map, 3) / (steps * N)
            same = np.array_equal(pc.MODEL.step_batch(X, U, p), ours[at + 1])
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            batch_run()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    width = max(len(r[0]) for r in rows + paired_rows)
    print(f"{'method':<{width}}  {'us / reactor-step':>18}  {'speed-up vs reference':>22}  {'max rel err':>11}")
    for label, t, err in rows:
        print(f"{label:<{width}}  {t * 1e6:>18.2f}  {ref_time / t:>21.1f}x  {err:>11.1e}")
    print(f"\nprevious: {pc.MODEL.substeps} RODAS4 substeps per interval; now: {COARSE}, retaken in "
          f"{pc.MODEL.substeps} where the error estimate exceeds {pc.MODEL.coarse_tol:g} (timed in turn, best of)")
    print(f"{'method':<{width}}  {'us previous':>11}  {'us now':>8}  {'vs reference: previous':>22}  {'now':>8}  "
          f"{'now vs previous':>15}  {'max rel err previous':>20}  {'now':>7}")
    for label, tp, tn, ep_, en in paired_rows:
        print(f"{label:<{width}}  {tp * 1e6:>11.2f}  {tn * 1e6:>8.2f}  {ref_time / tp:>21.1f}x  {ref_time / tn:>7.1f}x  "
              f"{tp / tn:>14.2f}x  {ep_:>20.1e}  {en:>7.1e}")
    print(f"{'  N = 1024 through CasADi map (the batched path before)':<{width}}  {t_map * 1e6:>11.2f}  "
          f"{'':>8}  {ref_time / t_map:>21.1f}x")
    print(f"\nintervals simulated by the model: {pc.MODEL.intervals}, retaken in {pc.MODEL.substeps} substeps: "
          f"{pc.MODEL.refined} ({pc.MODEL.refined / pc.MODEL.intervals:.1%}); in the env's episode: "
          f"{refined_in_episode} of {n}")
    print(f"N = 1024 batch equals the env's single steps bit for bit: {'yes' if same else 'NO'}")
    print(f"N = 1024 run: peak traced (NumPy) allocation {peak / 2**20:.2f} MiB, process peak RSS growth "
          f"{(rss1 - rss0) / 1024:.1f} MiB (peak RSS {rss1 / 1024:.0f} MiB)")
    print(f"intervals recomputed by CVODES during this benchmark: {pc.MODEL.fallbacks} "
          f"(RODAS4 error estimate above {pc.MODEL.err_tol:g})")


if __name__ == "__main__":
    main()
