"""Dynamic optimisation of a grade change by collocation in Pyomo, replayed in the Gymnasium environment.

The reactor block of :mod:`safectrl.models.pyomo` over a 20 h horizon, discretised by Radau collocation
(3 points, 2 finite elements per 30-minute control interval). The inputs are held over each interval, as
the environment holds them. The objective is the environment's tracking cost — the sum over interval ends
of (P_sp - P)² + (T_sp - T)², scaled by 1/100 — plus a small penalty on input moves; T <= T_max holds at
every collocation point. The initial state is the environment's own (reset with a seed), the problem is
initialised by a ``pyomo.dae.Simulator`` run with the previous inputs held, and solved with ``solve_nlp``.

The optimal input sequence is then replayed in the env: its trajectory must reproduce the Pyomo
prediction up to the discretisation error of the collocation (and the env's own integrator error), which
the script prints per state, together with the error against an adaptive CVODES reference.

Run: ``python examples/pyomo_grade_change.py [grade_up|grade_down] [seed]``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.mpc.modeling.constraints import get_piecewise_constant_constraints
from pyomo.dae import ContinuousSet

from safectrl.controllers.pi import PIController
from safectrl.models import polycstr as pc
from safectrl.models.pyomo import NLPResult, polycstr_block, simulate, solve_nlp, to_block_units, to_si
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

HORIZON = 40  # control intervals of 30 min: 20 h, between three and four residence times
ELEMENTS_PER_INTERVAL = 2  # Radau finite elements per control interval
COLLOCATION_POINTS = 3
MOVE_WEIGHT = 0.1  # on (Δf_I / 2.5 kg/h)² + (ΔT_c / 50 K)², against the 1/100-scaled tracking cost
INTERVAL_H = pc.DT / 3600.0  # the block's time is in hours


@dataclass(frozen=True)
class GradeChangePlan:
    """The optimal open-loop grade change, SI units."""

    u: np.ndarray  # (N, 2) inputs (f_I kg/h, T_c K) held over each interval
    x: np.ndarray  # (N+1, 5) predicted states at the interval boundaries
    cost: float  # sum over interval ends of (P_sp - P)² + (T_sp - T)², the env's negated return
    result: NLPResult


def build(
    x0: np.ndarray,
    u_prev: np.ndarray,
    setpoint: tuple[float, float],
    n_intervals: int,
    params: pc.PolyCSTRParams,
) -> pyo.ConcreteModel:
    """The collocation NLP, initialised by a simulation with ``u_prev`` held. ``x0`` in SI units."""
    m = pyo.ConcreteModel(name="polycstr_grade_change")
    boundaries = [k * INTERVAL_H for k in range(n_intervals + 1)]
    m.time = ContinuousSet(initialize=boundaries)
    m.reactor = polycstr_block(m.time, params)
    nfe = n_intervals * ELEMENTS_PER_INTERVAL
    pyo.TransformationFactory("dae.collocation").apply_to(
        m, wrt=m.time, nfe=nfe, ncp=COLLOCATION_POINTS, scheme="LAGRANGE-RADAU"
    )
    r = m.reactor
    for s, value in zip(pc.STATES, to_block_units(x0)):
        r.component(s)[0.0].fix(value)
    simulate(r, {"f_I": float(u_prev[0]), "T_c": float(u_prev[1])}).initialize(r)

    # Radau collocation uses an input on (t_k, t_k+1] at the points inside it and at t_k+1: hold it there
    # (and tie the unused value at t = 0 to the first interval).
    m.inputs, m.hold = get_piecewise_constant_constraints([r.f_I, r.T_c], m.time, boundaries[1:])
    m.t_max = pyo.Constraint(m.time, rule=lambda m, t: m.reactor.T[t] <= pc.T_MAX)

    ends = boundaries[1:]
    P_sp, T_sp = setpoint
    tracking = sum((P_sp - r.P[t]) ** 2 + (T_sp - r.T[t]) ** 2 for t in ends)
    span_f, span_T = pc.U_HIGH - pc.U_LOW
    previous = [(float(u_prev[0]), float(u_prev[1]))] + [(r.f_I[t], r.T_c[t]) for t in ends[:-1]]
    moves = sum(
        ((r.f_I[t] - f_I) / span_f) ** 2 + ((r.T_c[t] - T_c) / span_T) ** 2
        for t, (f_I, T_c) in zip(ends, previous)
    )
    m.tracking = pyo.Expression(expr=tracking)
    m.objective = pyo.Objective(expr=tracking / 100.0 + MOVE_WEIGHT * moves)
    return m


def optimise_grade_change(
    x0: np.ndarray,
    u_prev: np.ndarray,
    setpoint: tuple[float, float],
    n_intervals: int = HORIZON,
    params: pc.PolyCSTRParams = pc.PolyCSTRParams(),
    solver: str = "auto",
) -> GradeChangePlan:
    """Optimal inputs for ``n_intervals`` from ``x0`` (SI), after inputs ``u_prev``, toward ``setpoint``."""
    m = build(np.asarray(x0, float), np.asarray(u_prev, float), setpoint, n_intervals, params)
    result = solve_nlp(m, solver=solver)
    r = m.reactor
    boundaries = [k * INTERVAL_H for k in range(n_intervals + 1)]
    u = np.array([[pyo.value(r.f_I[t]), pyo.value(r.T_c[t])] for t in boundaries[1:]])
    x = to_si(np.array([[pyo.value(r.component(s)[t]) for s in pc.STATES] for t in boundaries]))
    return GradeChangePlan(u=u, x=x, cost=float(pyo.value(m.tracking)), result=result)


def replay_in_env(plan: GradeChangePlan, scenario: str, seed: int) -> tuple[np.ndarray, float]:
    """The plan's inputs applied in the env; returns the states (N+1, 5) and the tracking cost."""
    env = TaskEnv(pc.TASK, scenario, max_steps=len(plan.u))
    _, info = env.reset(seed=seed)
    states, cost = [info["state"]], 0.0
    for u in plan.u:
        _, reward, terminated, _, info = env.step(u)
        if info["clipped"] or terminated:
            raise RuntimeError(f"the plan's input {u} was clipped or the episode failed in the env")
        states.append(info["state"])
        cost -= reward
    return np.array(states), cost


def cvodes_replay(plan: GradeChangePlan, params: pc.PolyCSTRParams = pc.PolyCSTRParams()) -> np.ndarray:
    """The plan's inputs integrated by CVODES (rtol 1e-9) from the plan's initial state, (N+1, 5)."""
    interval = pc.MODEL.adaptive_interval_function()
    p = pc.MODEL.param_vector(params)
    states = [plan.x[0]]
    for u in plan.u:
        states.append(np.asarray(interval(states[-1], u, p, 0.0)).ravel())
    return np.array(states)


def max_relative_deviation(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per state, the largest |x - reference| / |reference| over the interval ends (rows 1..N)."""
    return np.max(np.abs(x[1:] - reference[1:]) / np.abs(reference[1:]), axis=0)


def main(scenario: str = "grade_up", seed: int = 0) -> None:
    env = TaskEnv(pc.TASK, scenario, max_steps=HORIZON)
    obs, info = env.reset(seed=seed)
    x0, u_prev = info["state"], obs[[pc.OBSERVATIONS.index("f_I_prev"), pc.OBSERVATIONS.index("T_c_prev")]]
    plan = optimise_grade_change(x0, u_prev, env.scenario.setpoint)
    print(f"{scenario}, seed {seed}: {plan.result.solver} {plan.result.status}, {plan.result.iterations} "
          f"iterations, {plan.result.n_variables} variables, {plan.result.solve_time:.2f} s in IPOPT")
    env_states, env_cost = replay_in_env(plan, scenario, seed)
    pi_cost = -run_episode(env, PIController(), seed).rewards.sum()
    print(f"tracking cost over {HORIZON * INTERVAL_H:.0f} h: optimal plan {plan.cost:.1f} "
          f"(replayed in the env {env_cost:.1f}), nominal PI {pi_cost:.1f}")
    print("max relative deviation of the Pyomo prediction at interval ends:")
    print("  state   vs env (RODAS4)   vs CVODES rtol 1e-9")
    vs_env = max_relative_deviation(plan.x, env_states)
    vs_cvodes = max_relative_deviation(plan.x, cvodes_replay(plan))
    for name, a, b in zip(pc.STATES, vs_env, vs_cvodes):
        print(f"  {name:5s}   {a:15.2e}   {b:18.2e}")
    print("inputs (f_I kg/h, T_c K) for the first 6 h:")
    for k, u in enumerate(plan.u[:12]):
        print(f"  {k * INTERVAL_H:4.1f} h  {u[0]:6.3f}  {u[1]:7.2f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["grade_up"]), *(int(a) for a in sys.argv[2:3]))
