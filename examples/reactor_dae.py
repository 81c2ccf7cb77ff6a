"""The reactor as an ODE and as a quasi-steady-state DAE, on the same closed-loop inputs.

The env runs an episode under the nominal PI; its applied inputs are then replayed open loop from the same
initial state through each form of the reactor:

* ``ODE step``: :meth:`ODEModel.step`, the env's own integrator (compiled RODAS4, 16 substeps);
* ``ODE interval_function``: the same RODAS4 graph evaluated by CasADi's virtual machine;
* ``DAE IDAS`` and ``DAE collocation``: :data:`safectrl.models.polycstr.DAE` (R algebraic) through
  ``casadi.integrator`` (IDAS; Radau collocation, 3 points on 2 elements).

Printed per scenario: the largest relative deviation from the ODE of A, I, P, T at the interval ends
(R is not compared: the DAE's R is its quasi-steady value, the ODE's lags it), both for the replayed
trajectory and for single intervals started from the ODE's state; and the time per interval of each form,
as a ratio to the compiled ODE measured in the same run. A last table gives the one-interval error in T,
against the plant, of Radau collocation on 1 and 2 elements of the ODE and of the DAE: the discretisation
choice an NMPC on the DAE would face (CasADi's collocation integrator standing in for the NMPC's own).

Run: ``python examples/reactor_dae.py``
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import casadi as ca
import numpy as np

from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import polycstr as pc
from safectrl.models.core import DAEModel
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

SEED = 0
COMPARED = ("A", "I", "P", "T")
_COMPARED = [pc.STATES.index(s) for s in COMPARED]
TOLERANCE = 1e-3  # largest accepted relative deviation from the ODE on A, I, P, T
REPEATS = 3  # timed replays per form; the fastest counts (the machine is shared)


@dataclass(frozen=True)
class Replay:
    """A form's trajectory under the recorded inputs and what it cost."""

    states: np.ndarray  # (n+1, 5), interval ends, SI
    one_step: np.ndarray  # (n, 5), each interval started from the ODE's state
    seconds_per_interval: float  # of the replayed trajectory, best of REPEATS


def record(scenario: str) -> tuple[np.ndarray, np.ndarray]:
    """States (n+1, 5) and applied inputs (n, 2) of a nominal-PI episode of the env."""
    ep = run_episode(TaskEnv(pc.TASK, scenario), PIController(NOMINAL_TUNING), seed=SEED)
    return ep.infos["state"], np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)


def replay(step: Callable[[np.ndarray, np.ndarray], np.ndarray], x_ode: np.ndarray, u: np.ndarray) -> Replay:
    """Replay ``u`` from ``x_ode[0]`` through ``step(x, u) -> x_next``; and each interval from ``x_ode``."""
    elapsed = []
    for _ in range(REPEATS):
        x = [x_ode[0]]
        t0 = time.perf_counter()
        for k in range(len(u)):
            x.append(step(x[-1], u[k]))
        elapsed.append(time.perf_counter() - t0)
    one = np.array([step(x_ode[k], u[k]) for k in range(len(u))])
    return Replay(np.array(x), one, min(elapsed) / len(u))


def relative_deviation(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|x - reference| / |reference| on A, I, P, T, shape (n, 4); entries where the reference is 0 are 0."""
    ref = reference[:, _COMPARED]
    dev = np.abs(x[:, _COMPARED] - ref)
    return np.divide(dev, np.abs(ref), out=np.zeros_like(dev), where=ref != 0)


def compare(scenario: str) -> None:
    params = pc.PolyCSTRParams()
    p = pc.MODEL.param_vector(params)
    x_env, u = record(scenario)
    interval = pc.MODEL.interval_function()
    forms = {
        "ODE step": lambda x, v: pc.MODEL.step(x, v, p),
        "ODE interval_function": lambda x, v: np.asarray(interval(x, v, p)[0]).ravel(),
        "DAE IDAS": lambda x, v: pc.DAE.step(x, v, p, method="idas"),
        "DAE collocation": lambda x, v: pc.DAE.step(x, v, p, method="collocation"),
    }
    for form in ("ODE interval_function", "DAE IDAS", "DAE collocation"):  # build outside the timing
        forms[form](x_env[0], u[0])
    replays = {name: replay(step, x_env, u) for name, step in forms.items()}
    ode = replays["ODE step"]
    env_dev = float(np.max(relative_deviation(ode.states, x_env)))
    print(f"\n{scenario}: {len(u)} intervals of {pc.DT:.0f} s under the nominal PI, seed {SEED} "
          f"(the ODE step reproduces the env to {env_dev:.1e})")
    print(f"{'form':<24}{'max relative deviation (A, I, P, T), trajectory':<52}{'one interval':<16}"
          f"{'time/interval':>14}{'ratio':>8}")
    for name, rep in replays.items():
        traj = relative_deviation(rep.states[1:], ode.states[1:])
        one = relative_deviation(rep.one_step, ode.states[1:])
        cells = "  ".join(f"{s} {v:.1e}" for s, v in zip(COMPARED, traj.max(axis=0)))
        print(f"{name:<24}{cells:<52}{one.max():<16.1e}{rep.seconds_per_interval * 1e6:>11.0f} us"
              f"{rep.seconds_per_interval / ode.seconds_per_interval:>8.0f}")
    dae = relative_deviation(replays["DAE IDAS"].states[1:], ode.states[1:])
    worst = dae.max(axis=1)
    over = np.flatnonzero(worst > TOLERANCE)
    if over.size:
        k = int(over[-1]) + 1
        print(f"DAE IDAS deviates more than {TOLERANCE:.0e} up to interval {k} ({k * pc.DT / 3600:.1f} h; "
              f"worst {COMPARED[int(np.argmax(dae[over[0]]))]} at interval {over[0] + 1}: "
              f"{worst[over[0]]:.1e}); from interval {k + 1} on the largest is {worst[k:].max():.1e}")
    else:
        print(f"DAE IDAS is within {TOLERANCE:.0e} of the ODE on A, I, P, T at every interval end")


def collocation_elements(scenario: str, intervals: int = 40) -> None:
    """One-interval error in T against the plant (the ODE step) of Radau collocation, 3 points, on 1 and 2
    elements, of the ODE and of the DAE: the prediction error of the discretisation an NMPC would use."""
    p = pc.MODEL.param_vector(pc.PolyCSTRParams())
    x_env, u = record(scenario)
    s = ca.DM(pc.X_SCALE)
    xs = ca.MX.sym("xs", pc.MODEL.nx)
    q = ca.MX.sym("q", pc.MODEL.nu + pc.MODEL.n_params)
    ode_rhs = pc.MODEL.rhs_function()(xs * s, q[: pc.MODEL.nu], q[pc.MODEL.nu :]) / s
    i_T = pc.STATES.index("T")
    cells = []
    for elements in (1, 2):
        colloc = ca.integrator("ode_collocation", "collocation", {"x": xs, "p": q, "ode": ode_rhs},
                               0.0, pc.DT, {"number_of_finite_elements": elements, "interpolation_order": 3,
                                            "collocation_scheme": "radau"})
        dae = DAEModel(pc.MODEL, ("R",), collocation_elements=elements)
        err_ode, err_dae = 0.0, 0.0
        for k in range(intervals):
            plant_T = x_env[k + 1][i_T]
            ode_T = float(colloc(x0=x_env[k] / pc.X_SCALE, p=np.r_[u[k], p])["xf"][i_T]) * pc.X_SCALE[i_T]
            err_ode = max(err_ode, abs(ode_T - plant_T))
            err_dae = max(err_dae, abs(dae.step(x_env[k], u[k], p, method="collocation")[i_T] - plant_T))
        cells.append(f"ODE {err_ode:.1e}, DAE {err_dae:.1e}")
    idas = max(abs(pc.DAE.step(x_env[k], u[k], p)[i_T] - x_env[k + 1][i_T]) for k in range(intervals))
    print(f"{scenario:<10}1 element: {cells[0]:<26}2 elements: {cells[1]:<26}DAE by IDAS: {idas:.1e}")


def main() -> None:
    for scenario in ("startup", "grade_up"):
        compare(scenario)
    print("\none interval from the env's states, first 40 intervals: largest |T - T_plant| in K of Radau "
          "collocation (3 points) of the ODE and of the DAE")
    for scenario in ("startup", "grade_up"):
        collocation_elements(scenario)


if __name__ == "__main__":
    main()
