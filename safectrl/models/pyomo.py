r"""The polymerisation CSTR in a Pyomo flowsheet, and a way to solve it with pip-installed packages only.

Three things, all built on :func:`safectrl.models.polycstr.rhs` — no balance is written again here:

* :func:`polycstr_block` — the reactor as a Pyomo ``Block``: states as ``DerivativeVar``\ s over a
  ``ContinuousSet`` (or a steady-state form without time), inputs as ``Var``\ s, inlet and outlet ``Port``\ s
  that a flowsheet connects with ``Arc``\ s, the physical constants as mutable ``Param``\ s taken from a
  :class:`~safectrl.models.polycstr.PolyCSTRParams`.
* :func:`solve_nlp` — writes any Pyomo model as an unlabelled ``.nl`` file, imports it into CasADi, solves
  it with the IPOPT (with MUMPS) inside CasADi's wheel and loads the solution back; a real ``ipopt``
  executable is used instead when Pyomo finds one.
* :func:`simulate` — ``pyomo.dae.Simulator(package="casadi")`` for a reactor block under piecewise-constant
  inputs, e.g. to initialise a collocation problem (:meth:`Simulation.initialize`).

Units of the block
------------------

The right-hand side works in SI units with time in seconds. A flowsheet is friendlier in hours (the feeds
are in kg/h already; the residence time is 5.5 h), and a radical concentration of ~1e-6 mol/m³ would sit
below IPOPT's tolerances. The block therefore has two units of its own and converts exactly when it calls
the right-hand side; with them every variable and balance residual is of order 1 to 1000 and IPOPT needs
no user scaling:

==========  ====================================  ============  =====================
component   meaning                               block unit    to the rhs's unit
==========  ====================================  ============  =====================
time        the ``ContinuousSet``                 h             × 3600 s
A, I, P     monomer, initiator, polymer           kg/m³         × 1
R           radicals                              µmol/m³       × 1e-6 mol/m³
T           reactor temperature                   K             × 1
dX_dt       derivative of state X                 X-unit / h    × 1/3600 X-unit / s
f_I, T_c    initiator feed, coolant temperature   kg/h, K       × 1
W_A, W_s    monomer and solvent feed (inlet)      kg/h          × 1
T_feed      feed temperature (inlet)              K             × 1
==========  ====================================  ============  =====================

The balance of state X reads ``dX_dt[t] == TIME_UNIT * rhs_X / TO_SI[X]`` with ``rhs_X`` evaluated at the
SI state ``X * TO_SI[X]``.

The solve route
---------------

No ``ipopt`` executable (the AMPL driver) installs from PyPI, but CasADi's wheel carries IPOPT.
:func:`solve_nlp` bridges the two: Pyomo's NL writer (without symbolic labels: CasADi's parser rejects the
comments they add) → ``casadi.NlpBuilder.import_nl`` → ``casadi.nlpsol("ipopt")`` → values back through the
writer's variable list, undoing its linear presolve and any ``scaling_factor`` suffix. CasADi turns a
maximisation into the minimisation of the negated objective; the result reports the objective in the
model's own sense and duals in AMPL's convention (d objective / d constraint bound), as an ``ipopt``
executable would. What the route cannot do it refuses with an error that says so: external functions,
if-then-else expressions (CasADi's importer reads neither), integer variables.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace
from typing import Any, Mapping

import casadi as ca
import numpy as np
import pyomo.environ as pyo
from pyomo.common import Executable
from pyomo.common.errors import InfeasibleConstraintException
from pyomo.dae import ContinuousSet, DerivativeVar, Simulator
from pyomo.network import Arc, Port
from pyomo.repn.plugins.nl_writer import NLWriter

from safectrl.models import polycstr as pc
from safectrl.models.mathns import MathNamespace


def _if_else(cond, a, b):
    return pyo.Expr_if(IF=cond, THEN=a, ELSE=b)


#: The math namespace under which a right-hand side yields Pyomo expressions.
PYOMO = MathNamespace(
    name="pyomo",
    exp=pyo.exp,
    log=pyo.log,
    sqrt=pyo.sqrt,
    sin=pyo.sin,
    cos=pyo.cos,
    if_else=_if_else,
    fabs=abs,
    fmax=lambda a, b: _if_else(a >= b, a, b),
)

TIME_UNIT = 3600.0  # s per hour: the block's time is in hours
#: Factor from each state's block unit to the SI unit of the right-hand side (R is in µmol/m³ in the block).
TO_SI = {"A": 1.0, "I": 1.0, "R": 1e-6, "P": 1.0, "T": 1.0}
#: Bounds of the states in block units (the temperature range is the env's observation range).
STATE_BOUNDS = {"A": (0.0, None), "I": (0.0, None), "R": (0.0, None), "P": (0.0, None), "T": (200.0, 700.0)}
#: Parameters that are stream quantities: Vars of the block's inlet, specified by ``inlet_spec``.
INLET_PARAMS = ("W_A", "W_s", "T_feed")
#: Port member -> block component. A unit feeding the reactor names its outlet members the same.
INLET = {"flow_monomer": "W_A", "flow_solvent": "W_s", "flow_initiator": "f_I", "temperature": "T_feed"}
OUTLET = {
    "flow_vol": "flow_vol",
    "conc_monomer": "A",
    "conc_initiator": "I",
    "conc_radical": "R",
    "conc_polymer": "P",
    "temperature": "T",
}
_SI_FACTOR = np.array([TO_SI[s] for s in pc.STATES])


def to_block_units(x: np.ndarray) -> np.ndarray:
    """States (..., 5) from SI (as in :mod:`~safectrl.models.polycstr` and the env) to block units."""
    return np.asarray(x, dtype=float) / _SI_FACTOR


def to_si(x: np.ndarray) -> np.ndarray:
    """States (..., 5) from block units to SI."""
    return np.asarray(x, dtype=float) * _SI_FACTOR


# -- the block ------------------------------------------------------------------------------------------


def _at(component, t):
    """``component[t]``, or the component itself in the steady-state form (``t is None``)."""
    return component if t is None else component[t]


def _time_arg(t: tuple):
    """A rule's optional time index: ``(t,)`` in the dynamic form, ``()`` in the steady-state form."""
    return t[0] if t else None


def _rates(blk: pyo.Block, t) -> tuple:
    """d(state)/dt at time ``t`` in block units (per hour, R in µmol/m³), from the one right-hand side."""
    x = [_at(blk.component(s), t) * TO_SI[s] for s in pc.STATES]
    u = [_at(blk.f_I, t), _at(blk.T_c, t)]
    p = SimpleNamespace(**{f.name: blk.component(f.name) for f in fields(pc.PolyCSTRParams)})
    for name in INLET_PARAMS:  # stream quantities: the inlet's Vars at time t
        setattr(p, name, _at(blk.component(name), t))
    xdot = pc.rhs(x, u, p, PYOMO)
    return tuple(TIME_UNIT * d / TO_SI[s] for s, d in zip(pc.STATES, xdot))


def _balance(blk: pyo.Block, s: str, *t):
    k = pc.STATES.index(s)
    t = _time_arg(t)
    rate = _rates(blk, t)[k]
    return rate == 0 if t is None else blk.component(f"d{s}_dt")[t] == rate


def _inlet_spec(blk: pyo.Block, name: str, *t):
    return _at(blk.component(name), _time_arg(t)) == blk.component(f"{name}_spec")


def _flow_vol(blk: pyo.Block, *t):
    t = _time_arg(t)
    return (_at(blk.f_I, t) + _at(blk.W_A, t) + _at(blk.W_s, t)) / blk.rho  # constant density


def _polymer_rate(blk: pyo.Block, *t):
    t = _time_arg(t)
    return _at(blk.flow_vol, t) * _at(blk.P, t)


def _build(blk: pyo.Block, time: ContinuousSet | None, params: pc.PolyCSTRParams) -> None:
    """Add the reactor's components to ``blk`` (a Block, or a whole model for a flat simulation twin)."""
    index = () if time is None else (time,)
    for f in fields(pc.PolyCSTRParams):
        name = f"{f.name}_spec" if f.name in INLET_PARAMS else f.name
        blk.add_component(name, pyo.Param(initialize=getattr(params, f.name), mutable=True))
    nominal = dict(zip(pc.STATES, to_block_units(pc.X_SCALE)))
    for s in pc.STATES:
        blk.add_component(s, pyo.Var(*index, bounds=STATE_BOUNDS[s], initialize=nominal[s]))
    blk.f_I = pyo.Var(*index, bounds=(pc.U_LOW[0], pc.U_HIGH[0]), initialize=1.0)
    blk.T_c = pyo.Var(*index, bounds=(pc.U_LOW[1], pc.U_HIGH[1]), initialize=345.0)
    for name in INLET_PARAMS:
        blk.add_component(name, pyo.Var(*index, bounds=(0.0, None), initialize=getattr(params, name)))
    # The inlet is specified by constraints rather than by fixing its Vars: a time discretisation adds
    # points to a Var unfixed but applies a constraint's rule at every new point, so the specification
    # holds at every collocation point. A flowsheet that supplies a stream deactivates its member.
    blk.inlet_spec = pyo.Constraint(INLET_PARAMS, *index, rule=_inlet_spec)
    if time is not None:
        for s in pc.STATES:
            blk.add_component(f"d{s}_dt", DerivativeVar(blk.component(s), wrt=time, initialize=0.0))
    blk.balance = pyo.Constraint(pc.STATES, *index, rule=_balance)
    blk.flow_vol = pyo.Expression(*index, rule=_flow_vol, doc="outlet volumetric flow, m³/h")
    blk.polymer_rate = pyo.Expression(*index, rule=_polymer_rate, doc="polymer leaving the reactor, kg/h")
    blk.inlet = Port(initialize={member: blk.component(name) for member, name in INLET.items()})
    blk.outlet = Port(initialize={member: blk.component(name) for member, name in OUTLET.items()})


def polycstr_block(
    time: ContinuousSet | None = None, params: pc.PolyCSTRParams = pc.PolyCSTRParams()
) -> pyo.Block:
    """The polymerisation CSTR as a Pyomo Block; assign it to a model: ``m.reactor = polycstr_block(m.t)``.

    Components (units in the module docstring; indexed by ``time`` unless steady-state):

    * states ``A, I, R, P, T`` and, if dynamic, their ``DerivativeVar``\\ s ``dA_dt, ...`` (per hour);
    * inputs ``f_I`` [kg/h] and ``T_c`` [K], free within their bounds — fix them (after discretising, since
      a discretisation adds its points unfixed) or optimise them;
    * inlet stream ``W_A, W_s`` [kg/h] and ``T_feed`` [K], held at the Params ``W_A_spec, W_s_spec,
      T_feed_spec`` by ``inlet_spec[name(, t)]``; deactivate a member when an upstream unit supplies it;
    * ``balance[state(, t)]``: the five balances, built from :func:`safectrl.models.polycstr.rhs`;
    * expressions ``flow_vol`` [m³/h] and ``polymer_rate`` [kg/h];
    * ports ``inlet`` (:data:`INLET`: the three feeds and their temperature) and ``outlet``
      (:data:`OUTLET`: volumetric flow, concentrations, temperature);
    * every other field of the dataclass as a mutable Param of the same name (``UA``, ``dH``, ...).

    A dynamic block leaves its initial state free: fix ``A[t0]``, ..., ``T[t0]`` or constrain them. The inlet
    model is the paper's — pure monomer, solvent and initiator at one temperature — while the outlet carries
    polymer and radicals, so two of these blocks cannot be put in series.

    Args:
        time: the flowsheet's ``ContinuousSet``, in hours, or None for the steady-state form (no time).
        params: physical parameters; W_A, W_s, T_feed initialise the inlet specification.

    Raises:
        TypeError: if ``time`` is not a ``ContinuousSet`` or ``params`` not a ``PolyCSTRParams``.
    """
    if time is not None and not isinstance(time, ContinuousSet):
        raise TypeError(f"time must be a pyomo.dae ContinuousSet (hours) or None, got {type(time).__name__}")
    if not isinstance(params, pc.PolyCSTRParams):
        raise TypeError(f"params must be a PolyCSTRParams, got {type(params).__name__}")
    return pyo.Block(rule=lambda blk: _build(blk, time, params))


# -- solving with IPOPT ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NLPResult:
    """What :func:`solve_nlp` reports.

    ``status`` is one of "optimal", "acceptable" (IPOPT stopped at its looser acceptable tolerances),
    "infeasible", "max_iterations", "error"; ``message`` is the solver's own text.
    """

    status: str
    message: str
    solver: str  # "casadi-ipopt" or "ipopt" (an executable)
    objective: float | None  # in the model's sense: a maximisation reports the maximum
    iterations: int | None  # None where the executable's results do not say
    solve_time: float  # s, wall time of the solver call
    n_variables: int  # variables sent to the solver (after the writer's presolve)
    n_constraints: int

    @property
    def success(self) -> bool:
        return self.status in ("optimal", "acceptable")


class NLPSolveError(RuntimeError):
    """The NLP solver did not succeed; ``result`` holds its status."""

    def __init__(self, result: NLPResult) -> None:
        super().__init__(
            f"{result.solver} did not solve the model: status {result.status!r} ({result.message}) after "
            f"{result.iterations} iterations; the model's variables were left unchanged"
        )
        self.result = result


_CASADI_STATUS = {
    "Solve_Succeeded": "optimal",
    "Solved_To_Acceptable_Level": "acceptable",
    "Infeasible_Problem_Detected": "infeasible",
    "Maximum_Iterations_Exceeded": "max_iterations",
    "Maximum_CpuTime_Exceeded": "max_iterations",
    "Maximum_WallTime_Exceeded": "max_iterations",
}

_PYOMO_STATUS = {
    pyo.TerminationCondition.optimal: "optimal",
    pyo.TerminationCondition.locallyOptimal: "optimal",
    pyo.TerminationCondition.globallyOptimal: "optimal",
    pyo.TerminationCondition.feasible: "acceptable",
    pyo.TerminationCondition.infeasible: "infeasible",
    pyo.TerminationCondition.maxIterations: "max_iterations",
    pyo.TerminationCondition.maxTimeLimit: "max_iterations",
}


def ipopt_executable() -> str | None:
    """The ``ipopt`` executable (AMPL driver) Pyomo would use, or None if there is none."""
    return Executable("ipopt").path()


def solve_nlp(
    model: pyo.Block,
    solver: str = "auto",
    options: Mapping[str, Any] | None = None,
    tee: bool = False,
    raise_on_failure: bool = True,
) -> NLPResult:
    """Solve a Pyomo NLP with IPOPT and load the solution into the model.

    Args:
        model: a Pyomo model (any Block) with at most one active objective; without one it is solved as a
            square system or a feasibility problem. Arcs must be expanded first.
        solver: "auto" (an ``ipopt`` executable if Pyomo finds one, else CasADi's IPOPT), "casadi" or
            "ipopt".
        options: IPOPT options, e.g. ``{"tol": 1e-10, "max_iter": 500}``.
        tee: print IPOPT's log.
        raise_on_failure: raise :class:`NLPSolveError` unless the status is optimal or acceptable. If False,
            a failed result is returned and the model's values are left unchanged.

    Returns:
        The :class:`NLPResult`. On success the variables hold the solution and, if the model has an IMPORT
        ``dual`` Suffix, it holds the constraint duals (d objective / d bound, AMPL's convention).

    Raises:
        ValueError: for what the route cannot do (unexpanded Arcs; on the CasADi route external functions,
            if-then-else expressions, integer variables, nothing to solve), an unknown ``solver``, or
            ``solver="ipopt"`` without an executable.
    """
    if solver not in ("auto", "casadi", "ipopt"):
        raise ValueError(f"solver must be 'auto', 'casadi' or 'ipopt', got {solver!r}")
    if solver == "ipopt" and ipopt_executable() is None:
        raise ValueError(
            "solver='ipopt' needs an ipopt executable (the AMPL driver) and Pyomo finds none; "
            "solver='casadi' uses the IPOPT inside CasADi's wheel"
        )
    arcs = [arc.name for arc in model.component_data_objects(Arc, active=True)]
    if arcs:
        raise ValueError(
            f"the model has unexpanded Arcs ({', '.join(arcs[:3])}); expand them first with "
            "pyo.TransformationFactory('network.expand_arcs').apply_to(model)"
        )
    options = dict(options or {})
    if solver == "ipopt" or (solver == "auto" and ipopt_executable() is not None):
        result = _solve_with_executable(model, options, tee)
    else:
        result = _solve_with_casadi(model, options, tee)
    if raise_on_failure and not result.success:
        raise NLPSolveError(result)
    return result


def _dual_suffix(model: pyo.Block) -> pyo.Suffix | None:
    dual = model.component("dual")
    return dual if isinstance(dual, pyo.Suffix) and dual.import_enabled() else None


def _write_nl(model: pyo.Block, path: Path, presolve: bool):
    """Write ``model`` to ``path`` as CasADi can read it; returns the writer's info, checked for the route."""
    with path.open("w", newline="\n") as stream:
        # No symbolic labels: CasADi's parser rejects the comments they add.
        info = NLWriter().write(
            model, stream, None, None, symbolic_solver_labels=False, linear_presolve=presolve
        )
    if info.external_function_libraries:
        raise ValueError(
            f"the model calls external functions ({', '.join(info.external_function_libraries)}); CasADi's "
            ".nl importer cannot evaluate them: install an ipopt executable and use solver='ipopt'"
        )
    discrete = [v.name for v in info.variables if not v.is_continuous()]
    if discrete:
        names = ", ".join(discrete)
        raise ValueError(f"IPOPT solves continuous NLPs only; integer or binary variables {names}")
    if not info.variables and not info.eliminated_vars:
        raise ValueError("nothing to solve: no free variable appears in an active constraint or objective")
    return info


def _import_nl(path: Path) -> ca.NlpBuilder:
    nl = ca.NlpBuilder()
    try:
        nl.import_nl(str(path))
    except RuntimeError as err:  # e.g. "If-then-else expressions not supported"
        reason = str(err).strip().splitlines()[-1]
        raise ValueError(
            f"CasADi's .nl importer cannot read this model ({reason}); reformulate it, or install an ipopt "
            "executable and use solver='ipopt'"
        ) from err
    return nl


def _solve_with_casadi(model: pyo.Block, options: dict[str, Any], tee: bool) -> NLPResult:
    dual = _dual_suffix(model)
    with tempfile.TemporaryDirectory(prefix="safectrl_nl_") as tmp:
        path = Path(tmp) / "model.nl"
        try:
            # The writer's linear presolve shrinks the problem but spoils duals: off when duals are wanted.
            info = _write_nl(model, path, presolve=dual is None)
        except InfeasibleConstraintException as err:
            return NLPResult("infeasible", f"Pyomo's NL writer proved the model infeasible: {err}",
                             "casadi-ipopt", None, 0, 0.0, 0, 0)
        if not info.variables:  # the presolve determined every variable
            _load_eliminated(info)
            message = "solved by Pyomo's presolve"
            return NLPResult("optimal", message, "casadi-ipopt", _objective(info), 0, 0.0, 0, 0)
        nl = _import_nl(path)
    n, m = len(info.variables), len(info.constraints)
    if len(nl.x) != n or len(nl.g) != m:
        raise RuntimeError(
            f"CasADi read {len(nl.x)} variables, {len(nl.g)} constraints; Pyomo wrote {n}, {m}"
        )
    nlp = {"x": ca.vertcat(*nl.x), "f": nl.f, "g": ca.vertcat(*nl.g)}
    ipopt_options = {"print_level": 5 if tee else 0, "sb": "yes", **options}
    solver = ca.nlpsol("pyomo_nl", "ipopt", nlp, {"ipopt": ipopt_options, "print_time": tee,
                                                   "expand": True})
    start = perf_counter()
    sol = solver(x0=nl.x_init, lbx=nl.x_lb, ubx=nl.x_ub, lbg=nl.g_lb, ubg=nl.g_ub)
    solve_time = perf_counter() - start
    stats = solver.stats()
    message = str(stats["return_status"])
    status = _CASADI_STATUS.get(message, "error")
    if status not in ("optimal", "acceptable"):
        return NLPResult(status, message, "casadi-ipopt", None, int(stats["iter_count"]), solve_time, n, m)
    # IPOPT relaxes bounds by a relative 1e-8 while iterating; project back, as its honor_original_bounds
    # option does behind the AMPL driver.
    x = np.clip(np.asarray(sol["x"]).ravel(), nl.x_lb, nl.x_ub)
    x_scale = info.scaling.variables if info.scaling else np.ones(n)
    for var, value, scale in zip(info.variables, x, x_scale):
        var.set_value(float(value) / scale, skip_validation=True)
    _load_eliminated(info)
    if dual is not None:
        _load_duals(dual, info, np.asarray(sol["lam_g"]).ravel())
    iterations = int(stats["iter_count"])
    return NLPResult(status, message, "casadi-ipopt", _objective(info), iterations, solve_time, n, m)


def _load_eliminated(info) -> None:
    """Values of the variables the writer's presolve eliminated, in the writer's order."""
    for var, expr in info.eliminated_vars:
        var.set_value(pyo.value(expr), skip_validation=True)


def _objective(info) -> float | None:
    return float(pyo.value(info.objectives[0])) if info.objectives else None


def _load_duals(dual: pyo.Suffix, info, lam_g: np.ndarray) -> None:
    """Duals as d objective / d bound (AMPL's convention) from CasADi's multipliers.

    CasADi minimises f (the negated objective for a maximisation) with Lagrangian f + lam_g' g, so
    d f* / d bound = -lam_g — the sign IPOPT's AMPL driver writes for a minimisation, and it writes +lam_g
    for a maximisation. The writer's scaling multiplies constraint c by s_c and the objective by s_o.
    """
    sense = 1.0
    o_scale = 1.0
    if info.objectives:
        sense = 1.0 if info.objectives[0].sense == pyo.minimize else -1.0
        if info.scaling and info.scaling.objectives:
            o_scale = info.scaling.objectives[0]
    c_scale = info.scaling.constraints if info.scaling else np.ones(len(info.constraints))
    for con, lam, scale in zip(info.constraints, lam_g, c_scale):
        dual[con] = -sense * float(lam) * scale / o_scale


def _solve_with_executable(model: pyo.Block, options: dict[str, Any], tee: bool) -> NLPResult:
    """Pyomo's own ipopt interface (the executable); duals through the model's ``dual`` Suffix as usual."""
    start = perf_counter()
    results = pyo.SolverFactory("ipopt").solve(model, tee=tee, options=options, load_solutions=False)
    solve_time = perf_counter() - start
    condition = results.solver.termination_condition
    status = _PYOMO_STATUS.get(condition, "error")
    if status == "optimal" and results.solver.status == pyo.SolverStatus.warning:
        status = "acceptable"  # the ASL's "solved?" codes 100-199, e.g. Solved_To_Acceptable_Level
    message = str(results.solver.message or condition).replace("\\x3a", ":")
    objective = None
    if status in ("optimal", "acceptable"):
        model.solutions.load_from(results)
        objectives = list(model.component_data_objects(pyo.Objective, active=True))
        objective = float(pyo.value(objectives[0])) if objectives else None
    problem = results.problem
    return NLPResult(status, message, "ipopt", objective, None, solve_time, int(problem.number_of_variables),
                     int(problem.number_of_constraints))


# -- simulation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """A simulated trajectory of a reactor block, in block units.

    ``t`` holds the output times in hours on the block's own clock, ``states`` each state's profile over
    ``t``, ``inputs`` every time-varying input's piecewise-constant profile as applied (switch time -> value).
    """

    t: np.ndarray
    states: dict[str, np.ndarray]
    inputs: dict[str, dict[float, float]]

    def state_matrix(self) -> np.ndarray:
        """States as an array (len(t), 5), columns as :data:`safectrl.models.polycstr.STATES`, block units."""
        return np.column_stack([self.states[s] for s in pc.STATES])

    def initialize(self, blk: pyo.Block) -> None:
        """Write the trajectory into a (discretised) dynamic reactor block as its initial guess.

        States are interpolated at the block's time points; unfixed inputs take the value in force on the
        interval that ends at each point (the value collocation uses there); derivatives are the balances'
        rates, so every balance holds at the initial guess.
        """
        time = _block_time(blk)
        for s in pc.STATES:
            var = blk.component(s)
            for t in time:
                var[t].set_value(float(np.interp(t, self.t, self.states[s])))
        for name, profile in self.inputs.items():
            var = blk.component(name)
            switches = sorted(profile)
            for t in time:
                if not var[t].fixed:
                    k = max(0, int(np.searchsorted(switches, t, side="left")) - 1)
                    var[t].set_value(profile[switches[k]])
        for t in time:
            for s, rate in zip(pc.STATES, _rates(blk, t)):
                blk.component(f"d{s}_dt")[t].set_value(pyo.value(rate))


def _block_time(blk: pyo.Block) -> ContinuousSet:
    """The ContinuousSet of a dynamic reactor block."""
    T = blk.component("T")
    if T is None or not isinstance(blk.component("inlet_spec"), pyo.Constraint):
        raise TypeError(f"{blk.name} is not a reactor block built by polycstr_block")
    if not T.is_indexed():
        raise ValueError(f"{blk.name} is the steady-state form; simulation needs a block with a time set")
    return T.index_set()


_TIME_VARYING = ("f_I", "T_c") + INLET_PARAMS


def simulate(
    blk: pyo.Block,
    inputs: Mapping[str, Mapping[float, float] | float],
    numpoints: int = 101,
    integrator: str = "cvodes",
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> Simulation:
    """Simulate a dynamic reactor block with ``pyomo.dae.Simulator(package="casadi")``.

    Pyomo's Simulator accepts neither hierarchical models nor fixed time-indexed Vars, so the reactor is
    rebuilt as a flat twin model (the same equations, the block's current Param values) over the block's
    time span shifted to start at 0, and every time-varying input is passed as a ``varying_inputs``
    profile. The block itself is not changed (:meth:`Simulation.initialize` does that).

    Args:
        blk: a dynamic block from :func:`polycstr_block`; its states at the first time point are the initial
            state and must have values.
        inputs: per name ("f_I", "T_c", "W_A", "W_s", "T_feed"), a piecewise-constant profile
            ``{switch time [h]: value}`` whose first switch is the block's start time, or a constant. An
            inlet quantity not given keeps its specification (``inlet_spec``) if that is active; any other
            input not given must be fixed at every time point of the block, and is held between them.
        numpoints: output points, evenly spaced over the time span (the switch times are added).
        integrator: CasADi integrator, "cvodes" (default) or "idas".
        rtol, atol: integrator tolerances (block units).

    Raises:
        ValueError: for an unknown input name, a profile that does not start at the start time or leaves the
            time span, an input neither given nor specified, or a state without an initial value.
    """
    time = _block_time(blk)
    t0, tf = time.first(), time.last()
    unknown = sorted(set(inputs) - set(_TIME_VARYING))
    if unknown:
        raise ValueError(f"unknown inputs {unknown}; the reactor's time-varying inputs are {_TIME_VARYING}")
    profiles = {name: _input_profile(blk, name, inputs.get(name), time) for name in _TIME_VARYING}
    x0 = {s: blk.component(s)[t0].value for s in pc.STATES}
    missing = [s for s, v in x0.items() if v is None]
    if missing:
        raise ValueError(f"the initial state of {blk.name} has no value for {', '.join(missing)} at t = {t0}")

    twin = pyo.ConcreteModel(name=f"{blk.name}_simulation")
    twin.time = ContinuousSet(bounds=(0.0, tf - t0))
    _build(twin, twin.time, pc.PolyCSTRParams())
    for param in blk.component_objects(pyo.Param, descend_into=False):
        twin.component(param.local_name).set_value(pyo.value(param))
    twin.inlet_spec.deactivate()  # the inlet comes in as varying inputs
    for s, value in x0.items():
        twin.component(s)[0.0].fix(value)
    twin.varying_inputs = pyo.Suffix(direction=pyo.Suffix.LOCAL)
    for name, profile in profiles.items():
        twin.varying_inputs[twin.component(name)] = {t - t0: v for t, v in profile.items()}

    sim = Simulator(twin, package="casadi")
    t_sim, values = sim.simulate(
        numpoints=numpoints,
        integrator=integrator,
        varying_inputs=twin.varying_inputs,
        integrator_options={"reltol": rtol, "abstol": atol},
    )
    order = [v.base.local_name for v in sim.get_variable_order()]
    states = {name: np.asarray(values[:, k]) for k, name in enumerate(order)}
    return Simulation(t=np.asarray(t_sim) + t0, states=states, inputs=profiles)


def _input_profile(blk: pyo.Block, name: str, given, time: ContinuousSet) -> dict[float, float]:
    """The piecewise-constant profile ``{switch time: value}`` of one time-varying input of the block."""
    t0, tf = time.first(), time.last()
    if given is not None:
        profile = {t0: float(given)} if np.isscalar(given) else {float(k): float(v) for k, v in given.items()}
        if not profile or min(profile) != t0 or max(profile) > tf:
            raise ValueError(
                f"the profile of {name} must switch first at the start time {t0} h and stay within "
                f"[{t0}, {tf}] h; got switch times {sorted(profile)[:3]}..."
            )
        return profile
    if name in INLET_PARAMS and all(blk.inlet_spec[name, t].active for t in time):
        return {t0: float(pyo.value(blk.component(f"{name}_spec")))}
    var = blk.component(name)
    if all(var[t].fixed for t in time):
        return {float(t): float(pyo.value(var[t])) for t in time if t < tf}
    raise ValueError(
        f"{var.name} is neither given in inputs, nor specified, nor fixed at every time point; the Simulator "
        "needs a profile for every time-varying input"
    )
