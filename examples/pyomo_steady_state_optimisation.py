"""Steady-state economic optimisation of the polymerisation CSTR in Pyomo, with pip-installed packages only.

Maximise the polymer leaving the reactor (kg/h) over the initiator feed and the coolant temperature,
subject to the steady-state balances, the operating limit T <= T_max = 365 K and the input bounds. The
model is the reactor block of :mod:`safectrl.models.pyomo`; the NLP goes through ``solve_nlp`` (CasADi's
IPOPT, or an ``ipopt`` executable if one is on the PATH).

Besides the optimum it reports the shadow price of the temperature limit (the dual of T <= T_max: kg/h of
polymer gained per kelvin of extra headroom) and whether the optimal operating point is open-loop stable
(eigenvalues of the Jacobian of the right-hand side) — an economic optimum of an exothermic CSTR often is
not, and then it needs a temperature controller to be held.

Run: ``python examples/pyomo_steady_state_optimisation.py``
"""

from __future__ import annotations

from dataclasses import dataclass

import casadi as ca
import numpy as np
import pyomo.environ as pyo

from safectrl.models import polycstr as pc
from safectrl.models.pyomo import NLPResult, polycstr_block, solve_nlp, to_si


@dataclass(frozen=True)
class SteadyStateOptimum:
    """The economic optimum, SI units as in :mod:`safectrl.models.polycstr`."""

    x: np.ndarray  # (A, I, R, P, T)
    u: np.ndarray  # (f_I kg/h, T_c K)
    production: float  # kg/h of polymer
    t_max_price: float  # (kg/h)/K, dual of T <= T_max
    eigenvalues: np.ndarray  # 1/s, of d rhs / d x at the optimum
    result: NLPResult

    @property
    def stable(self) -> bool:
        return bool(np.all(self.eigenvalues.real < 0))


def build(params: pc.PolyCSTRParams = pc.PolyCSTRParams(), t_max: float = pc.T_MAX) -> pyo.ConcreteModel:
    """The optimisation model: steady-state reactor block, temperature limit, production objective."""
    m = pyo.ConcreteModel(name="polycstr_economic_optimum")
    m.reactor = polycstr_block(params=params)
    m.t_max = pyo.Constraint(expr=m.reactor.T <= t_max)
    m.production = pyo.Objective(expr=m.reactor.polymer_rate, sense=pyo.maximize)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


def optimise(
    params: pc.PolyCSTRParams = pc.PolyCSTRParams(), t_max: float = pc.T_MAX, solver: str = "auto"
) -> SteadyStateOptimum:
    """Solve the economic optimisation; raises ``NLPSolveError`` if IPOPT does not succeed."""
    m = build(params, t_max)
    result = solve_nlp(m, solver=solver, options={"tol": 1e-10})
    r = m.reactor
    x = to_si([pyo.value(r.component(s)) for s in pc.STATES])
    u = np.array([pyo.value(r.f_I), pyo.value(r.T_c)])
    xs = ca.SX.sym("x", pc.MODEL.nx)
    xdot = pc.MODEL.rhs_function()(xs, u, pc.MODEL.param_vector(params))
    jacobian = ca.Function("polycstr_jacobian", [xs], [ca.jacobian(xdot, xs)], ["x"], ["dxdot_dx"])
    eigenvalues = np.linalg.eigvals(np.asarray(jacobian(x)))
    production, price = float(pyo.value(m.production)), float(m.dual[m.t_max])
    return SteadyStateOptimum(x, u, production, price, eigenvalues, result)


def main() -> None:
    opt = optimise()
    print(f"solver {opt.result.solver}: {opt.result.status} after {opt.result.iterations} iterations")
    print(f"maximum polymer production   {opt.production:8.3f} kg/h")
    print(f"initiator feed f_I           {opt.u[0]:8.3f} kg/h   (bounds {pc.U_LOW[0]}..{pc.U_HIGH[0]})")
    print(f"coolant temperature T_c      {opt.u[1]:8.3f} K")
    for name, value in zip(pc.STATES, opt.x):
        print(f"  {name} = {value:.5g}")
    print(f"shadow price of T <= {pc.T_MAX:.0f} K   {opt.t_max_price:8.3f} (kg/h)/K")
    rightmost = opt.eigenvalues[np.argmax(opt.eigenvalues.real)]
    print(f"open loop {'stable' if opt.stable else 'UNSTABLE'}: rightmost eigenvalue "
          f"{rightmost.real:.3e} +- {abs(rightmost.imag):.3e}j 1/s (a temperature controller must hold it)")


if __name__ == "__main__":
    main()
