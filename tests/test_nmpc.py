"""NMPC: the problem it solves, its discretisation, failures, and the reactor's closed loop."""

from __future__ import annotations

import faulthandler
from dataclasses import dataclass, replace

import casadi as ca
import numpy as np
import pytest

from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.acr_mpc import glucose_mpc
from safectrl.controllers.nmpc import (
    INVALID_START,
    NMPC,
    FullStateObserver,
    NMPCConfig,
    NMPCSolveError,
    StateBound,
    radau_coefficients,
)
from safectrl.controllers.polycstr_nmpc import BACKOFF, NMPC_CONFIG, polycstr_nmpc, with_backoff
from safectrl.models import glucose
from safectrl.models import polycstr as pc
from safectrl.models.core import ODEModel
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode
from safectrl.studies.metrics import episode_metrics


@dataclass(frozen=True)
class LagParams:
    tau: float = 2.0  # s, time constant
    amp: float = 0.0  # 1/s, amplitude of a time-varying drift


def lag_rhs(x, u, p, m):
    return ((u[0] - x[0]) / p.tau,)


def drift_rhs(x, u, p, m, t):
    return ((u[0] - x[0]) / p.tau + p.amp * m.sin(t),)


LAG = ODEModel(name="lag", states=("y",), inputs=("u",), params_type=LagParams, rhs=lag_rhs, dt=1.0,
               x_scale=[1.0], u_low=[-1.0], u_high=[1.0], substeps=8)
DRIFT = ODEModel(name="drift", states=("y",), inputs=("u",), params_type=LagParams, rhs=drift_rhs, dt=1.0,
                 x_scale=[1.0], u_low=[-3.0], u_high=[3.0], substeps=8, time_varying=True)
TRACK_Y = NMPCConfig(horizon=8, tracked=("y",), tracking_weights=(1.0,))


def simulate(model, x0, u_plan, params, t0=0.0):
    """The model's own interval integrator along a plan, shape (len(u_plan) + 1, nx)."""
    xs = [np.asarray(x0, dtype=float)]
    for k, u in enumerate(u_plan):
        xs.append(model.step(xs[-1], u, params, t0 + k * model.dt))
    return np.array(xs)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_radau_coefficients_integrate_polynomials_exactly(degree):
    tau, C, D = radau_coefficients(degree)
    assert tau[-1] == pytest.approx(1.0)  # Radau: the end point is a collocation point
    nodes = np.concatenate([[0.0], tau])
    for power in range(degree + 1):  # the Lagrange basis reproduces polynomials of degree <= d
        values = nodes**power
        assert D @ values == pytest.approx(1.0)
        slope = power * nodes ** max(power - 1, 0) if power else np.zeros_like(nodes)
        np.testing.assert_allclose(values @ C[:, 1:], slope[1:], atol=1e-10)


def test_reference_trajectory_is_followed_and_plan_matches_exact_solution():
    nmpc = NMPC(LAG, LagParams(), TRACK_Y)
    ref = 0.5 * np.sin(np.arange(1, 9) / 2.0)  # reachable: |u| stays within 1
    sol = nmpc.solve(np.array([0.2]), np.array([0.0]), ref[:, None])
    assert sol.success and not sol.fallback
    np.testing.assert_allclose(sol.x_plan[1:, 0], ref, atol=1e-6)
    # The inputs that hit the reference exactly: y_{k+1} = u + (y_k - u) e^{-dt/tau}.
    a = np.exp(-LAG.dt / LagParams().tau)
    y = np.concatenate([[0.2], ref])
    u_exact = (y[1:] - a * y[:-1]) / (1 - a)
    np.testing.assert_allclose(sol.u_plan[:, 0], u_exact, atol=2e-5)  # Radau 3x2 discretisation error


@pytest.mark.parametrize("discretisation", ["collocation", "shooting"])
def test_time_varying_prediction_matches_the_model_integrator(discretisation):
    params = LagParams(amp=0.8)
    cfg = replace(TRACK_Y, discretisation=discretisation)
    nmpc = NMPC(DRIFT, params, cfg)
    sol = nmpc.solve(np.array([0.0]), np.array([0.0]), np.array([1.0]), t0=3.7)
    assert sol.success
    sim = simulate(DRIFT, [0.0], sol.u_plan, params, t0=3.7)
    tol = 1e-9 if discretisation == "shooting" else 1e-4
    np.testing.assert_allclose(sol.x_plan, sim, atol=tol)
    # The same plan from t0 = 0 would predict something else: time does enter.
    assert np.abs(simulate(DRIFT, [0.0], sol.u_plan, params, t0=0.0) - sim).max() > 0.1


def test_a_given_transition_replaces_the_interval_integrator():
    # An explicit-Euler step built from the model's own right-hand side, as a plant defined that way needs.
    x, u, p = ca.SX.sym("x"), ca.SX.sym("u"), ca.SX.sym("p", LAG.n_params)
    euler = ca.Function("lag_euler", [x, u, p], [x + LAG.dt * LAG.rhs_function()(x, u, p)])
    cfg = replace(TRACK_Y, discretisation="shooting")
    nmpc = NMPC(LAG, LagParams(), cfg, transition=euler)
    sol = nmpc.solve(np.array([0.0]), np.array([0.0]), np.array([0.7]))
    y = [0.0]
    for u_k in sol.u_plan[:, 0]:
        y.append(y[-1] + LAG.dt * (u_k - y[-1]) / LagParams().tau)
    np.testing.assert_allclose(sol.x_plan[:, 0], y, atol=1e-9)


def test_reactor_prediction_matches_the_plant_integrator():
    ss = pc.steady_state(*pc.LOW_GRADE)
    nmpc = NMPC(pc.MODEL, pc.PolyCSTRParams(), NMPC_CONFIG)
    sol = nmpc.solve(ss.x, ss.u, np.array(pc.HIGH_GRADE))
    sim = simulate(pc.MODEL, ss.x, sol.u_plan, pc.PolyCSTRParams())
    assert np.abs(sol.x_plan[:, 4] - sim[:, 4]).max() < 5e-3  # K, Radau 3 points x 2 elements
    assert np.abs(sol.x_plan[:, 3] - sim[:, 3]).max() < 5e-3  # kg/m³
    assert sol.x_plan[1:, 4].max() <= pc.T_MAX - BACKOFF + 1e-6  # the back-off bound holds in the plan


def test_custom_stage_cost_equals_the_default_tracking_cost():
    def cost(x, u, r):
        return (x[0] - 0.3) ** 2

    a = NMPC(LAG, LagParams(), TRACK_Y).solve(np.array([0.9]), np.array([0.0]), np.array([0.3]))
    b = NMPC(LAG, LagParams(), TRACK_Y, stage_cost=cost, n_ref=0).solve(np.array([0.9]), np.array([0.0]))
    np.testing.assert_allclose(a.u_plan, b.u_plan, atol=1e-6)


def test_hard_state_bound_holds_in_the_plan():
    cfg = replace(TRACK_Y, state_bounds=(StateBound("y", high=0.4),))
    sol = NMPC(LAG, LagParams(), cfg).solve(np.array([0.0]), np.array([0.0]), np.array([0.9]))
    assert sol.success
    assert sol.x_plan[1:, 0].max() <= 0.4 + 1e-7
    assert sol.x_plan[-1, 0] == pytest.approx(0.4, abs=1e-5)


def test_soft_bound_is_exact_when_the_hard_problem_is_feasible():
    ss = pc.steady_state(*pc.LOW_GRADE)
    hard = replace(NMPC_CONFIG, state_bounds=(StateBound("T", high=355.0),))
    soft = replace(NMPC_CONFIG, state_bounds=(StateBound("T", high=355.0, penalty=10.0),))
    a = NMPC(pc.MODEL, pc.PolyCSTRParams(), hard).solve(ss.x, ss.u, np.array(pc.HIGH_GRADE))
    b = NMPC(pc.MODEL, pc.PolyCSTRParams(), soft).solve(ss.x, ss.u, np.array(pc.HIGH_GRADE))
    assert a.success and b.success
    assert a.x_plan[:, 4].max() == pytest.approx(355.0, abs=1e-5)  # active
    assert b.max_slack < 1e-6
    np.testing.assert_allclose(b.u_plan, a.u_plan, rtol=1e-5, atol=1e-5)
    # to the interior point's tolerance: fatrop ends with slacks of ~1e-7 K, each worth 10 x 355 per K
    assert b.objective == pytest.approx(a.objective, rel=1e-4)


def test_soft_bound_keeps_an_infeasible_start_solvable_and_a_hard_one_falls_back():
    # From y = 10 no input in [-1, 1] gets y below 5 within one interval: y_1 >= 10 e^-0.5 - (1 - e^-0.5).
    soft = replace(TRACK_Y, state_bounds=(StateBound("y", high=5.0, penalty=100.0),))
    sol = NMPC(LAG, LagParams(), soft).solve(np.array([10.0]), np.array([0.0]), np.array([0.0]))
    y1_min = 10 * np.exp(-0.5) - (1 - np.exp(-0.5))
    assert sol.success and sol.max_slack == pytest.approx(y1_min - 5.0, abs=1e-4)
    assert sol.u[0] == pytest.approx(-1.0, abs=1e-6)

    hard = NMPC(LAG, LagParams(), replace(TRACK_Y, state_bounds=(StateBound("y", high=5.0),)))
    good = hard.solve(np.array([0.0]), np.array([0.0]), np.array([0.6]))
    bad = hard.solve(np.array([10.0]), np.array([good.u[0]]), np.array([0.6]))
    assert good.success and not bad.success and bad.fallback
    np.testing.assert_allclose(bad.u_plan[:-1], good.u_plan[1:])  # the shifted previous plan
    assert hard.stats.solves == 2 and hard.stats.failures == 1 and hard.stats.fallbacks == 1
    # IPOPT names the infeasibility; fatrop only fails (its return flag is 0 or 1)
    assert ("Infeasible" if hard.config.solver == "ipopt" else "fatrop_failed") in hard.stats.records[-1].status
    assert hard.stats.records[-1].retried and hard.stats.retries == 1  # the cold retry failed too
    assert hard.episode_report() == {}  # no episode started
    hard.reset()
    assert hard.episode_report() == {"fallbacks": 0}
    hard.solve(np.array([10.0]), np.array([good.u[0]]), np.array([0.6]))
    assert hard.episode_report() == {"fallbacks": 1} and hard.stats.fallbacks == 2  # this episode's; all


def test_a_failed_warm_start_is_retried_from_the_cold_guess():
    nmpc = NMPC(LAG, LagParams(), TRACK_Y)
    first = nmpc.solve(np.array([0.0]), np.array([0.0]), np.array([0.6]))
    nmpc._warm["w"][:] = np.nan  # white box: a warm start IPOPT cannot use
    second = nmpc.solve(np.array([0.1]), first.u, np.array([0.6]))
    assert second.success and not second.fallback
    assert nmpc.stats.records[-1].retried and nmpc.stats.retries == 1 and nmpc.stats.failures == 0
    cold = NMPC(LAG, LagParams(), TRACK_Y).solve(np.array([0.1]), first.u, np.array([0.6]))
    np.testing.assert_allclose(second.u_plan, cold.u_plan, atol=1e-7)


def test_forced_solver_failure_holds_the_input_records_it_and_strict_raises():
    ss = pc.steady_state(*pc.LOW_GRADE)
    cfg = replace(NMPC_CONFIG, max_iter=1)
    nmpc = NMPC(pc.MODEL, pc.PolyCSTRParams(), cfg)
    sol = nmpc.solve(ss.x, ss.u, np.array(pc.HIGH_GRADE))
    assert not sol.success and sol.fallback and sol.status == "Maximum_Iterations_Exceeded"
    np.testing.assert_array_equal(sol.u, ss.u)  # no previous plan: hold the previous input
    rec = nmpc.stats.records[-1]
    assert (rec.success, rec.fallback) == (False, True)
    assert rec.iterations == sol.iterations <= cfg.max_iter + 1  # fatrop counts its initial iterate as well
    assert nmpc.stats.failures == 1

    strict = NMPC(pc.MODEL, pc.PolyCSTRParams(), replace(cfg, strict=True))
    with pytest.raises(NMPCSolveError, match="Maximum_Iterations_Exceeded"):
        strict.solve(ss.x, ss.u, np.array(pc.HIGH_GRADE))
    assert strict.stats.failures == 1


def test_a_state_outside_the_models_domain_falls_back_instead_of_hanging_fatrop():
    """The Glucose regulariser's risk takes log(G): a glucose reading below zero (a misled controller's) makes
    the NLP NaN at the cold start, where fatrop never returns; the attempt is refused before it runs."""
    nmpc = glucose_mpc(glucose.ESTIMATED)
    assert nmpc.config.solver == "fatrop"
    good = np.array([138.0, 0.0, 7.0])  # G mg/dL, X, I
    bad = np.array([-12.9, 1.9e-4, 7.0])
    faulthandler.dump_traceback_later(300, exit=True)  # a hang fails the run with a traceback, not a timeout
    try:
        first = nmpc.solve(bad, np.array([0.0]))  # no warm start: the cold attempt only
        assert nmpc._cold_solver is None  # refused before fatrop's cold instance was even built
        ok = nmpc.solve(good, np.array([0.0]))
        again = nmpc.solve(bad, ok.u)  # warm attempt (fatrop returns a failure), then the cold retry, refused
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert first.fallback and first.status == INVALID_START and first.iterations == 0
    assert ok.success
    assert again.fallback and again.status == INVALID_START and nmpc.stats.records[-1].retried
    np.testing.assert_allclose(again.u, ok.u_plan[1])  # the backup: the last plan's next move
    assert nmpc.stats.failures == 2


def test_warm_start_needs_fewer_iterations_than_a_cold_start():
    ss = pc.steady_state(*pc.LOW_GRADE)
    sp = np.array(pc.HIGH_GRADE)
    warm = NMPC(pc.MODEL, pc.PolyCSTRParams(), NMPC_CONFIG)
    first = warm.solve(ss.x, ss.u, sp)
    x1 = pc.MODEL.step(ss.x, first.u, pc.PolyCSTRParams())
    second = warm.solve(x1, first.u, sp)
    cold = NMPC(pc.MODEL, pc.PolyCSTRParams(), replace(NMPC_CONFIG, warm_start=False)).solve(x1, first.u, sp)
    assert second.success and cold.success
    assert second.iterations < cold.iterations / 2
    np.testing.assert_allclose(second.u, cold.u, rtol=1e-5)
    warm.reset()
    assert warm.last_solution is None
    assert warm.stats.solves == 2 and warm.stats.episode().solves == 0  # the totals outlive the episode


class _Lag:
    """A plant that is the LAG model itself, observed in full: the NMPC through a FullStateObserver."""

    def __init__(self, steps):
        self.steps = steps

    def reset(self, seed=None, options=None):
        self.x, self.k = np.array([0.5 if seed else 0.0]), 0
        return self.x.copy(), {}

    def step(self, u):
        self.x, self.k = LAG.step(self.x, u, LagParams()), self.k + 1
        return self.x.copy(), 0.0, False, self.k >= self.steps, {}


def test_stats_are_cumulative_with_a_view_per_episode_and_the_observer_sees_the_applied_input():
    observer = FullStateObserver(LAG.dt, u_init=np.array([0.25]), reference=np.array([0.6]))
    nmpc = NMPC(LAG, LagParams(), replace(TRACK_Y, du_weights=(1.0,)), observer=observer)
    assert isinstance(nmpc, DecisionMaker)
    with pytest.raises(IndexError, match="no episode has started"):
        nmpc.stats.episode()
    run_episode(_Lag(3), nmpc, seed=0)
    second = run_episode(_Lag(2), nmpc, seed=1)
    st = nmpc.stats
    assert st.solves == 5 and [e.solves for e in st.episodes] == [3, 2] and st.episode().solves == 2
    assert st.episode(0).records == st.records[:3] and st.failures == sum(e.failures for e in st.episodes)
    # the observer's previous input is the controller's own last one, and time counts intervals since reset
    x = second.observations[-2]
    u_prev = second.actions[-2]
    np.testing.assert_array_equal(observer(x).u_prev, second.actions[-1])
    assert observer(x).t0 == 2 * LAG.dt
    sol = NMPC(LAG, LagParams(), replace(TRACK_Y, du_weights=(1.0,))).solve(x, u_prev, np.array([0.6]))
    np.testing.assert_allclose(second.actions[-1], sol.u, atol=1e-6)
    observer.reset()
    assert observer(x).t0 == 0.0 and np.array_equal(observer(x).u_prev, [0.25])


@pytest.mark.parametrize("kwargs, message", [
    (dict(config=replace(TRACK_Y, tracked=("z",))), "unknown state 'z'"),
    (dict(config=replace(TRACK_Y, du_weights=(1.0, 1.0))), "2 du_weights for 1 inputs"),
    (dict(config=replace(TRACK_Y, discretisation="euler")), "discretisation must be"),
    (dict(config=replace(TRACK_Y, state_bounds=(StateBound("y", low=1.0, high=0.0),))), "must be below"),
    (dict(config=replace(TRACK_Y, state_bounds=(StateBound("y", high=1.0, penalty=0.0),))), "positive"),
    (dict(config=TRACK_Y, transition=ca.Function("f", [], [])), "needs discretisation='shooting'"),
])
def test_bad_configuration_is_rejected(kwargs, message):
    """What only the model can check; a config's own fields are checked when it is made (test_validation.py)."""
    with pytest.raises(ValueError, match=message):
        NMPC(LAG, LagParams(), **kwargs)


def test_bad_solve_input_and_act_without_observer_are_rejected():
    nmpc = NMPC(LAG, LagParams(), TRACK_Y)
    with pytest.raises(ValueError, match="reference must be finite with shape"):
        nmpc.solve(np.array([0.0]), np.array([0.0]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="reference with 1 columns is required"):
        nmpc.solve(np.array([0.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="state must be finite"):
        nmpc.solve(np.array([np.nan]), np.array([0.0]), np.array([0.0]))
    with pytest.raises(RuntimeError, match="needs an observer"):
        nmpc.act(np.zeros(3))


class _ObserverWithoutApplied:
    def reset(self, seed=None):
        pass

    def __call__(self, obs):
        raise AssertionError("never called")


def test_an_observer_without_applied_is_rejected_at_construction():
    with pytest.raises(TypeError, match="_ObserverWithoutApplied lacks applied"):
        NMPC(LAG, LagParams(), TRACK_Y, observer=_ObserverWithoutApplied())


@pytest.mark.parametrize("scenario", list(pc.SCENARIOS))
def test_oracle_closed_loop_short_episode(scenario):
    nmpc = polycstr_nmpc()
    ep = run_episode(TaskEnv(pc.TASK, scenario, max_steps=30), nmpc, seed=500_000)
    m = episode_metrics(ep)
    assert m.violations == 0 and not m.failure
    assert nmpc.stats.solves == 30 and nmpc.stats.failures == 0
    e_P, e_T = ep.infos["setpoint"][-1] - ep.infos["state"][-1, [3, 4]]
    assert abs(e_P) < 0.5 and abs(e_T) < 0.2


@pytest.mark.parametrize("model_params", [
    pc.mismatched(),  # heat balance: UA -20 %, dH +10 %
    replace(pc.PolyCSTRParams(), k0_p=0.8 * pc.PolyCSTRParams().k0_p),  # kinetics
    replace(pc.PolyCSTRParams(), k0_t=1.3 * pc.PolyCSTRParams().k0_t),
], ids=["UA-dH", "k0_p", "k0_t"])
def test_mismatched_controller_is_offset_free_through_estimated_parameters(model_params):
    nmpc = polycstr_nmpc(model_params)
    ep = run_episode(TaskEnv(pc.TASK, "grade_up", max_steps=40), nmpc, seed=500_000)
    e_P, e_T = ep.infos["setpoint"][-1] - ep.infos["state"][-1, [3, 4]]
    assert abs(e_P) < 0.05 and abs(e_T) < 0.02
    assert not ep.infos["violation"].any()


def test_with_backoff_moves_only_the_temperature_bound():
    cfg = with_backoff(2.0)
    (bound,) = cfg.state_bounds
    assert bound.high == pc.T_MAX - 2.0 and bound.penalty == NMPC_CONFIG.state_bounds[0].penalty


@pytest.mark.parametrize("scenario", ["startup", "grade_up"])
def test_the_default_solver_matches_the_previous_default_in_closed_loop(scenario):
    """fatrop on Radau 3 x 1 (the default) against IPOPT on Radau 3 x 2 (the previous one), on the true state
    of the reactor through the first 15 intervals: the same closed-loop cost within 0.5 %, the same inputs
    to 1 % of their range, no interval above T_max (docs/decisions.md#nmpc-solver)."""
    previous = replace(NMPC_CONFIG, solver="ipopt", collocation_elements=2)
    assert (NMPC_CONFIG.solver, NMPC_CONFIG.collocation_elements) == ("fatrop", 1)
    sc = pc.get_scenario(scenario)
    sp = np.array(sc.setpoint)
    runs = []
    for cfg in (NMPC_CONFIG, previous):
        nmpc = NMPC(pc.MODEL, pc.PolyCSTRParams(), cfg)
        x, u = sc.initial(np.random.default_rng(3), pc.PolyCSTRParams())
        cost, inputs, T = 0.0, [], []
        for _ in range(15):
            sol = nmpc.solve(x, u, sp)
            assert sol.success
            x, u = pc.MODEL.step(x, sol.u, pc.PolyCSTRParams()), sol.u
            cost += float(np.sum((sp - x[[3, 4]]) ** 2))
            inputs.append(u)
            T.append(x[4])
        runs.append((cost, np.array(inputs), max(T)))
    (cost, inputs, t_max), (cost0, inputs0, _) = runs
    assert cost == pytest.approx(cost0, rel=5e-3)
    np.testing.assert_allclose((inputs - inputs0) / (pc.U_HIGH - pc.U_LOW), 0.0, atol=1e-2)
    assert t_max <= pc.T_MAX
