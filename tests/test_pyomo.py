"""The Pyomo export of the reactor, the pip-only NLP route and the Simulator helper (models.pyomo)."""

from __future__ import annotations

import ast
import os
import runpy
import sys
from pathlib import Path

import casadi as ca
import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.common import Executable
from pyomo.dae import ContinuousSet
from pyomo.network import Arc, Port

from safectrl.models import polycstr as pc
from safectrl.models import pyomo as sp

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PUBLISHED_STEADY_STATES = [  # as in tests/test_models.py: P, T -> f_I, T_c, A, I, R
    ((100.0, 350.0), (1.794, 339.90, 450.1, 9.87, 1.510e-6)),
    ((70.0, 350.0), (0.750, 342.97, 483.2, 4.15, 9.79e-7)),
    ((80.0, 350.0), (1.030, 341.95, 472.4, 5.69, 1.146e-6)),
]


@pytest.fixture(scope="module")
def example_a():
    return runpy.run_path(str(EXAMPLES / "pyomo_steady_state_optimisation.py"))


@pytest.fixture(scope="module")
def example_b():
    return runpy.run_path(str(EXAMPLES / "pyomo_grade_change.py"))


@pytest.fixture(scope="module")
def example_c():
    return runpy.run_path(str(EXAMPLES / "pyomo_flowsheet.py"))


def _values(blk, t=None) -> np.ndarray:
    return np.array([pyo.value(blk.component(s) if t is None else blk.component(s)[t]) for s in pc.STATES])


def _random_points(rng, n):
    x = np.column_stack([rng.uniform(0, 600, n), rng.uniform(0, 15, n), rng.uniform(0, 5e-6, n),
                         rng.uniform(0, 250, n), rng.uniform(300, 420, n)])
    u = np.column_stack([rng.uniform(0, 2.5, n), rng.uniform(300, 350, n)])
    return x, u


def _casadi_rates_block_units(x, u, params):
    """CasADi's right-hand side at (x, u) in SI, converted to the block's units (per hour, R in µmol/m³)."""
    n = len(x)
    p = np.tile(pc.MODEL.param_vector(params), (n, 1))
    xdot = np.asarray(pc.MODEL.rhs_function().map(n)(x.T, u.T, p.T)).T
    return sp.to_block_units(xdot) * sp.TIME_UNIT


# -- the block's equations -----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [pc.PolyCSTRParams(), pc.mismatched()], ids=["nominal", "mismatched"])
def test_pyomo_rhs_equals_casadi_at_1000_random_points(rng, params):
    n = 1000
    x, u = _random_points(rng, n)
    m = pyo.ConcreteModel()
    m.reactor = sp.polycstr_block(params=params)
    r = m.reactor
    got = np.empty((n, 5))
    for k, xb in enumerate(sp.to_block_units(x)):
        for s, v in zip(pc.STATES, xb):
            r.component(s).set_value(v)
        r.f_I.set_value(u[k, 0])
        r.T_c.set_value(u[k, 1])
        got[k] = [pyo.value(r.balance[s].body) for s in pc.STATES]
    np.testing.assert_allclose(got, _casadi_rates_block_units(x, u, params), rtol=1e-10, atol=0)


def test_dynamic_block_balances_equal_casadi(rng, nominal_params):
    """The dynamic form: dX_dt[t] == rate; with dX_dt = 0 the body is -rate."""
    n = 50
    x, u = _random_points(rng, n)
    m = pyo.ConcreteModel()
    m.time = ContinuousSet(initialize=np.linspace(0.0, 1.0, n))
    m.reactor = sp.polycstr_block(m.time, nominal_params)
    r = m.reactor
    times = list(m.time)
    for k, t in enumerate(times):
        for s, v in zip(pc.STATES, sp.to_block_units(x[k])):
            r.component(s)[t].set_value(v)
            r.component(f"d{s}_dt")[t].set_value(0.0)
        r.f_I[t].set_value(u[k, 0])
        r.T_c[t].set_value(u[k, 1])
    got = np.array([[-pyo.value(r.balance[s, t].body) for s in pc.STATES] for t in times])
    np.testing.assert_allclose(got, _casadi_rates_block_units(x, u, nominal_params), rtol=1e-10, atol=0)


def test_pyomo_namespace_if_else():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=2.0)
    e = sp.PYOMO.if_else(m.x >= 1.0, m.x**2, -m.x)
    assert pyo.value(e) == 4.0
    m.x.set_value(0.5)
    assert pyo.value(e) == -0.5


@pytest.mark.parametrize("target, expected", PUBLISHED_STEADY_STATES)
def test_published_steady_states_reproduced_in_pyomo(target, expected, nominal_params):
    m = pyo.ConcreteModel()
    m.reactor = sp.polycstr_block(params=nominal_params)
    m.reactor.P.fix(target[0])
    m.reactor.T.fix(target[1])
    result = sp.solve_nlp(m, solver="casadi", options={"tol": 1e-12})
    assert result.status == "optimal" and result.objective is None
    x = sp.to_si(_values(m.reactor))
    u = np.array([pyo.value(m.reactor.f_I), pyo.value(m.reactor.T_c)])
    np.testing.assert_allclose((u[0], u[1], x[0], x[1], x[2]), expected, rtol=5e-3)
    ss = pc.steady_state(*target, nominal_params)
    np.testing.assert_allclose(x, ss.x, rtol=1e-8)
    np.testing.assert_allclose(u, ss.u, rtol=1e-8)


def test_block_rejects_bad_arguments():
    with pytest.raises(TypeError, match="ContinuousSet"):
        sp.polycstr_block(time=[0.0, 1.0])
    with pytest.raises(TypeError, match="PolyCSTRParams"):
        sp.polycstr_block(params={"UA": 500.0})


def test_inlet_specification_holds_at_collocation_points(nominal_params):
    """A discretisation adds points to Vars unfixed; the inlet is specified by constraints, which follow."""
    m = pyo.ConcreteModel()
    m.time = ContinuousSet(bounds=(0.0, 1.0))
    m.reactor = sp.polycstr_block(m.time, nominal_params)
    pyo.TransformationFactory("dae.collocation").apply_to(m, wrt=m.time, nfe=3, ncp=3)
    assert len(m.time) == 10
    for t in m.time:
        for name in sp.INLET_PARAMS:
            con = m.reactor.inlet_spec[name, t]
            m.reactor.component(name)[t].set_value(getattr(nominal_params, name) + 1.0)
            assert con.active and pyo.value(con.body) - pyo.value(con.upper) == pytest.approx(1.0)


def test_only_the_pyomo_module_imports_pyomo():
    for path in (ROOT / "safectrl").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        if any(name.split(".")[0] == "pyomo" for name in names):
            assert path == ROOT / "safectrl" / "models" / "pyomo.py", f"{path} imports pyomo"


# -- the solve route -----------------------------------------------------------------------------------


def _native_economic_optimum(params: pc.PolyCSTRParams) -> tuple[np.ndarray, np.ndarray, float]:
    """The steady-state economic optimum written directly in CasADi on MODEL.rhs_function()."""
    x = ca.SX.sym("x", 5)
    u = ca.SX.sym("u", 2)
    scale = ca.DM(pc.X_SCALE)
    xs = x * scale
    flow = (u[0] + params.W_A + params.W_s) / params.rho  # m³/h
    production = flow * xs[3]  # kg/h
    g = ca.vertcat(pc.MODEL.rhs_function()(xs, u, pc.MODEL.param_vector(params)) * 3600 / scale, xs[4])
    solver = ca.nlpsol("native_economic", "ipopt", {"x": ca.vertcat(x, u), "f": -production, "g": g},
                       {"ipopt": {"print_level": 0, "sb": "yes", "tol": 1e-10}, "print_time": False})
    ss = pc.steady_state(*pc.HIGH_GRADE, params)
    sol = solver(x0=np.concatenate([ss.x / pc.X_SCALE, ss.u]),
                 lbx=np.concatenate([np.zeros(4), [200 / 350], pc.U_LOW]),
                 ubx=np.concatenate([np.full(5, np.inf), pc.U_HIGH]),
                 lbg=np.concatenate([np.zeros(5), [-np.inf]]), ubg=np.concatenate([np.zeros(5), [pc.T_MAX]]))
    assert solver.stats()["success"], solver.stats()["return_status"]
    z = np.asarray(sol["x"]).ravel()
    return z[:5] * pc.X_SCALE, z[5:], -float(sol["f"])


def test_example_a_equals_casadi_native_optimum(example_a, nominal_params):
    opt = example_a["optimise"](nominal_params, solver="casadi")
    x, u, production = _native_economic_optimum(nominal_params)
    assert opt.result.status == "optimal"
    assert opt.production == pytest.approx(production, rel=1e-8)
    assert opt.result.objective == pytest.approx(production, rel=1e-8)  # maximum reported as a maximum
    np.testing.assert_allclose(opt.x, x, rtol=1e-6)
    np.testing.assert_allclose(opt.u, u, rtol=1e-6)
    assert opt.x[4] <= pc.T_MAX + 1e-5


def test_dual_of_t_max_is_the_objective_sensitivity(example_a, nominal_params):
    opt = example_a["optimise"](nominal_params, solver="casadi")
    h = 0.05
    up = example_a["optimise"](nominal_params, t_max=pc.T_MAX + h, solver="casadi").production
    down = example_a["optimise"](nominal_params, t_max=pc.T_MAX - h, solver="casadi").production
    assert opt.t_max_price > 0
    assert opt.t_max_price == pytest.approx((up - down) / (2 * h), rel=2e-5)


def _toy(sense=pyo.minimize):
    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=1.0, bounds=(0.0, 10.0))
    m.y = pyo.Var(initialize=1.0)
    m.c = pyo.Constraint(expr=m.x**2 + m.y**2 <= 2.0)
    m.o = pyo.Objective(expr=m.x + 2 * m.y if sense == pyo.maximize else (m.x - 3) ** 2 + m.y**2, sense=sense)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


def test_maximisation_and_duals_in_the_model_sense():
    m = _toy(pyo.maximize)  # max x + 2y on the disc of radius sqrt(2): x = sqrt(2/5), y = 2 sqrt(2/5)
    result = sp.solve_nlp(m, solver="casadi", options={"tol": 1e-12})
    assert result.objective == pytest.approx(np.sqrt(10.0), rel=1e-8)
    assert (m.x.value, m.y.value) == pytest.approx((np.sqrt(0.4), 2 * np.sqrt(0.4)), rel=1e-7)
    # d max / d r² for max sqrt(5) r: sqrt(5) / (2 r) at r² = 2
    assert m.dual[m.c] == pytest.approx(np.sqrt(5.0) / (2 * np.sqrt(2.0)), rel=1e-6)


def test_scaling_suffix_is_undone_on_load():
    plain, scaled = _toy(), _toy()
    scaled.scaling_factor = pyo.Suffix(direction=pyo.Suffix.EXPORT)
    scaled.scaling_factor[scaled.x] = 100.0
    scaled.scaling_factor[scaled.y] = 0.01
    scaled.scaling_factor[scaled.c] = 10.0
    scaled.scaling_factor[scaled.o] = 3.0
    for m in (plain, scaled):
        sp.solve_nlp(m, solver="casadi", options={"tol": 1e-12})
    assert (scaled.x.value, scaled.y.value) == pytest.approx((plain.x.value, plain.y.value), rel=1e-7)
    assert plain.x.value == pytest.approx(np.sqrt(2.0), rel=1e-7)  # min (x-3)² + y² on the disc
    assert scaled.dual[scaled.c] == pytest.approx(plain.dual[plain.c], rel=1e-6)


def test_failure_is_raised_and_leaves_values_alone():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=1.0)
    m.c = pyo.Constraint(expr=m.x**2 <= -1.0)
    m.o = pyo.Objective(expr=m.x)
    with pytest.raises(sp.NLPSolveError, match="infeasible") as err:
        sp.solve_nlp(m, solver="casadi")
    assert err.value.result.status == "infeasible" and not err.value.result.success
    result = sp.solve_nlp(m, solver="casadi", raise_on_failure=False)
    assert result.status == "infeasible" and m.x.value == 1.0


def test_route_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="solver must be"):
        sp.solve_nlp(_toy(), solver="gurobi")

    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=1.0)
    m.f = pyo.ExternalFunction(library="libmissing_for_test.so", function="f")
    m.o = pyo.Objective(expr=m.f(m.x) ** 2)
    with pytest.raises(ValueError, match="external functions"):
        sp.solve_nlp(m, solver="casadi")

    m = pyo.ConcreteModel()
    m.n = pyo.Var(domain=pyo.Integers, initialize=1)
    m.o = pyo.Objective(expr=(m.n - 0.3) ** 2)
    with pytest.raises(ValueError, match="integer or binary variables n"):
        sp.solve_nlp(m, solver="casadi")

    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=0.5)
    m.o = pyo.Objective(expr=sp.PYOMO.if_else(m.x >= 0, (m.x - 1) ** 2, m.x**2 + 1))
    with pytest.raises(ValueError, match="If-then-else"):
        sp.solve_nlp(m, solver="casadi")

    m = pyo.ConcreteModel()
    m.a, m.b = pyo.Var(initialize=1.0), pyo.Var(initialize=1.0)
    m.pa, m.pb = Port(initialize={"v": m.a}), Port(initialize={"v": m.b})
    m.arc = Arc(source=m.pa, destination=m.pb)
    m.o = pyo.Objective(expr=(m.a - 2) ** 2 + m.b**2)
    with pytest.raises(ValueError, match="expand_arcs"):
        sp.solve_nlp(m, solver="casadi")


@pytest.mark.skipif(sp.ipopt_executable() is not None, reason="an ipopt executable is installed")
def test_without_executable_auto_uses_casadi_and_ipopt_is_refused():
    with pytest.raises(ValueError, match="needs an ipopt executable"):
        sp.solve_nlp(_toy(), solver="ipopt")
    assert sp.solve_nlp(_toy()).solver == "casadi-ipopt"


_IPOPT_STAND_IN = """#!{python}
# Stand-in for an ipopt executable: AMPL's protocol (`ipopt model.nl -AMPL key=value ...` writes model.sol)
# around CasADi's IPOPT. Duals as IPOPT's AMPL driver writes them (AmplTNLP::finalize_solution): -lambda for
# a minimisation, +lambda for a maximisation.
import sys
import casadi as ca

args = sys.argv[1:]
if args[0] == "-v":
    print("Ipopt 3.14.0 (stand-in)")
    sys.exit(0)
nl = ca.NlpBuilder()
nl.import_nl(args[0])
options = {{"print_level": 0, "sb": "yes"}}
for arg in args[2:]:
    key, value = arg.split("=", 1)
    options[key] = float(value)
maximise = any(line.startswith("O") and line.split()[1] == "1" for line in open(args[0]))
solver = ca.nlpsol("s", "ipopt", {{"x": ca.vertcat(*nl.x), "f": nl.f, "g": ca.vertcat(*nl.g)}},
                   {{"ipopt": options, "print_time": False}})
sol = solver(x0=nl.x_init, lbx=nl.x_lb, ubx=nl.x_ub, lbg=nl.g_lb, ubg=nl.g_ub)
status = solver.stats()["return_status"]
code = {{"Solve_Succeeded": 0, "Solved_To_Acceptable_Level": 100, "Infeasible_Problem_Detected": 200}}
x, lam = sol["x"].full().ravel(), sol["lam_g"].full().ravel() * (1 if maximise else -1)
with open(args[0][:-3] + ".sol", "w") as f:
    f.write(f"Ipopt 3.14.0 (stand-in): {{status}}\\n\\nOptions\\n3\\n1\\n1\\n0\\n")
    f.write(f"{{len(lam)}}\\n{{len(lam)}}\\n{{len(x)}}\\n{{len(x)}}\\n")
    f.writelines(f"{{float(v)!r}}\\n" for v in [*lam, *x])
    f.write(f"objno 0 {{code.get(status, 500)}}\\n")
"""


@pytest.fixture
def ipopt_stand_in(tmp_path, monkeypatch):
    """An ``ipopt`` on the PATH that speaks AMPL's protocol, so the executable route runs here too."""
    exe = tmp_path / "ipopt"
    exe.write_text(_IPOPT_STAND_IN.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    Executable("ipopt").rehash()
    yield exe
    monkeypatch.undo()
    Executable("ipopt").rehash()


def test_executable_route_agrees_with_casadi(ipopt_stand_in, example_a, example_c, nominal_params):
    assert sp.ipopt_executable() == str(ipopt_stand_in)
    via_exe = example_a["optimise"](nominal_params)  # "auto" picks the executable
    via_casadi = example_a["optimise"](nominal_params, solver="casadi")
    assert via_exe.result.solver == "ipopt" and via_exe.result.status == "optimal"
    assert "Solve_Succeeded" in via_exe.result.message
    assert via_exe.result.objective == pytest.approx(via_casadi.production, rel=1e-7)
    np.testing.assert_allclose(via_exe.x, via_casadi.x, rtol=1e-6)
    assert via_exe.t_max_price == pytest.approx(via_casadi.t_max_price, rel=1e-5)
    flowsheet = example_c["design"](nominal_params, solver="ipopt")
    assert flowsheet.solvent_temperature == pytest.approx(
        example_c["design"](nominal_params, solver="casadi").solvent_temperature, rel=1e-9
    )
    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=1.0)
    m.c = pyo.Constraint(expr=m.x**2 <= -1.0)
    m.o = pyo.Objective(expr=m.x)
    result = sp.solve_nlp(m, solver="ipopt", raise_on_failure=False)
    assert result.status == "infeasible" and m.x.value == 1.0


# -- simulation ----------------------------------------------------------------------------------------


def test_simulator_equals_native_casadi_simulation(rng, nominal_params):
    """pyomo.dae.Simulator(package="casadi") vs CVODES on MODEL, interval by interval, 10 h, random inputs."""
    n = 20
    u = np.column_stack([rng.uniform(0.3, 2.5, n), rng.uniform(330, 350, n)])
    x0 = np.array([440.0, 0.0, 0.0, 0.0, 350.0])  # startup
    m = pyo.ConcreteModel()
    m.time = ContinuousSet(bounds=(0.0, n * pc.DT / 3600))
    m.reactor = sp.polycstr_block(m.time, nominal_params)
    for s, v in zip(pc.STATES, sp.to_block_units(x0)):
        m.reactor.component(s)[0.0].fix(v)
    switches = [k * pc.DT / 3600 for k in range(n)]
    sim = sp.simulate(m.reactor, {"f_I": dict(zip(switches, u[:, 0])), "T_c": dict(zip(switches, u[:, 1]))},
                      numpoints=n + 1)
    ends = [int(np.argmin(np.abs(sim.t - (k + 1) * pc.DT / 3600))) for k in range(n)]
    got = sp.to_si(sim.state_matrix()[ends])

    interval = pc.MODEL.adaptive_interval_function()
    p = pc.MODEL.param_vector(nominal_params)
    x, native = x0, []
    for k in range(n):
        x = np.asarray(interval(x, u[k], p, 0.0)).ravel()
        native.append(x)
    np.testing.assert_allclose(got, np.array(native), rtol=1e-6, atol=0)


def test_simulation_initialises_a_discretised_block(nominal_params):
    m = pyo.ConcreteModel()
    m.time = ContinuousSet(bounds=(0.0, 2.0))
    m.reactor = sp.polycstr_block(m.time, nominal_params)
    pyo.TransformationFactory("dae.collocation").apply_to(m, wrt=m.time, nfe=4, ncp=3)
    ss = pc.steady_state(*pc.LOW_GRADE, nominal_params)
    for s, v in zip(pc.STATES, sp.to_block_units(ss.x)):
        m.reactor.component(s)[0.0].fix(v)
    sim = sp.simulate(m.reactor, {"f_I": {0.0: ss.u[0], 1.0: 2.0}, "T_c": ss.u[1]})
    sim.initialize(m.reactor)
    # inputs as collocation uses them: the value in force on the interval ending at each point
    assert m.reactor.f_I[1.0].value == pytest.approx(ss.u[0]) and m.reactor.f_I[2.0].value == 2.0
    np.testing.assert_allclose(sp.to_si(_values(m.reactor, 1.0)), ss.x, rtol=1e-8)
    # derivatives are the balances' rates: every balance holds at the initial guess
    worst = max(abs(pyo.value(c.body)) for c in m.reactor.balance.values())
    assert worst < 1e-9


def test_simulate_errors(nominal_params):
    m = pyo.ConcreteModel()
    m.time = ContinuousSet(bounds=(0.0, 1.0))
    m.reactor = sp.polycstr_block(m.time, nominal_params)
    r = m.reactor
    r.A[0.0].set_value(None)
    with pytest.raises(ValueError, match="has no value for A"):
        sp.simulate(r, {"f_I": 1.0, "T_c": 340.0})
    for s, v in zip(pc.STATES, sp.to_block_units(pc.X_SCALE)):
        r.component(s)[0.0].fix(v)
    with pytest.raises(ValueError, match="unknown inputs"):
        sp.simulate(r, {"f_I": 1.0, "T_c": 340.0, "UA": 400.0})
    with pytest.raises(ValueError, match="must switch first at the start time"):
        sp.simulate(r, {"f_I": {0.5: 1.0}, "T_c": 340.0})
    with pytest.raises(ValueError, match="T_c is neither given"):
        sp.simulate(r, {"f_I": 1.0})
    r.inlet_spec["W_s", :].deactivate()
    with pytest.raises(ValueError, match="W_s is neither given"):
        sp.simulate(r, {"f_I": 1.0, "T_c": 340.0})
    steady = pyo.ConcreteModel()
    steady.reactor = sp.polycstr_block(params=nominal_params)
    with pytest.raises(ValueError, match="steady-state form"):
        sp.simulate(steady.reactor, {"f_I": 1.0, "T_c": 340.0})


# -- examples ------------------------------------------------------------------------------------------


def test_example_b_grade_change_replays_in_the_env(example_b):
    """The optimised profile, replayed in the Gymnasium env, reproduces the Pyomo prediction.

    Radau collocation (3 points, 2 elements per 30-min interval) is accurate to ~1e-6 relative in A, I,
    P, T; the radicals' 30-second transient from a perturbed start costs up to ~7e-4 relative in R at the
    end of the first interval.
    """
    scenario, seed = "grade_up", 3
    env = example_b["TaskEnv"](example_b["pc"].TASK, scenario, max_steps=example_b["HORIZON"])
    obs, info = env.reset(seed=seed)
    plan = example_b["optimise_grade_change"](info["state"], obs[5:7], env.scenario.setpoint, solver="casadi")
    assert plan.result.status == "optimal"
    states, cost = example_b["replay_in_env"](plan, scenario, seed)
    np.testing.assert_array_equal(states[0], plan.x[0])
    rel = example_b["max_relative_deviation"](plan.x, states)
    assert np.all(rel[[0, 1, 3, 4]] < 1e-5), rel
    assert rel[2] < 2e-3, rel
    assert cost == pytest.approx(plan.cost, rel=1e-4)
    assert np.all(plan.x[:, 4] <= pc.T_MAX + 1e-5)
    assert abs(plan.x[-1, 3] - env.scenario.setpoint[0]) < 0.5  # the grade change is done within 20 h


def test_example_c_flowsheet_matches_hand_calculation(example_c, nominal_params):
    """Material balances fix f_I at the grade; the energy balance and the mixing rule then fix the preheat."""
    sol = example_c["design"](nominal_params, solver="casadi")
    ss = pc.steady_state(*pc.HIGH_GRADE, nominal_params)
    p = nominal_params
    A, _, R, _, T = ss.x
    r_p = p.k0_p * np.exp(-p.E_p / (p.R_g * T)) * R * A / p.MW_A
    flow = (ss.u[0] + p.W_A + p.W_s) / (3600 * p.rho)  # m³/s
    T_feed = T + (p.UA * (T - example_c["T_C_SPEC"]) - p.dH * r_p * p.V) / (p.rho * p.c_p * flow)
    w_A, T_A = example_c["MONOMER"]
    w_s, T_i = example_c["SOLVENT_FLOW"], example_c["INITIATOR_TEMPERATURE"]
    T_solvent = (T_feed * (w_A + w_s + ss.u[0]) - w_A * T_A - ss.u[0] * T_i) / w_s
    assert sol.initiator_feed == pytest.approx(ss.u[0], rel=1e-8)
    assert sol.mixed_temperature == pytest.approx(T_feed, rel=1e-10)
    assert sol.solvent_temperature == pytest.approx(T_solvent, rel=1e-8)
    np.testing.assert_allclose(sol.reactor_state, ss.x, rtol=1e-8)


@pytest.mark.parametrize("name, expected", [
    ("pyomo_steady_state_optimisation.py", "shadow price of T <= 365 K"),
    ("pyomo_grade_change.py", "max relative deviation of the Pyomo prediction"),
    ("pyomo_flowsheet.py", "preheat the solvent to"),
])
def test_examples_run_as_scripts(name, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert expected in capsys.readouterr().out
