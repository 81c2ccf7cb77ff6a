"""Physics of the polymerisation CSTR and the generic interval integrator."""

from __future__ import annotations

from dataclasses import dataclass

import casadi as ca
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import compiled
from safectrl.models import polycstr as pc
from safectrl.models.core import ODEModel
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

# Steady states (with the -D R term) found independently by solving the balances: P, T -> f_I, T_c, A, I, R
PUBLISHED_STEADY_STATES = [
    ((100.0, 350.0), (1.794, 339.90, 450.1, 9.87, 1.510e-6)),
    ((70.0, 350.0), (0.750, 342.97, 483.2, 4.15, 9.79e-7)),
    ((80.0, 350.0), (1.030, 341.95, 472.4, 5.69, 1.146e-6)),
]


@pytest.mark.parametrize("target, expected", PUBLISHED_STEADY_STATES)
def test_steady_states_match_the_published_ones(target, expected, nominal_params):
    ss = pc.steady_state(*target, nominal_params)
    got = (ss.u[0], ss.u[1], ss.x[0], ss.x[1], ss.x[2])
    np.testing.assert_allclose(got, expected, rtol=5e-3)
    residual = pc.MODEL.rhs_numpy(ss.x, ss.u, nominal_params)
    assert np.all(np.abs(residual) / pc.X_SCALE < 1e-12)


def test_unreachable_steady_state_names_the_bounds(nominal_params):
    with pytest.raises(ValueError, match="outside the input bounds"):
        pc.steady_state(130.0, 350.0, nominal_params)


def test_open_loop_settles_where_spec_says(nominal_params):
    x = np.array([440.0, 0.0, 0.0, 0.0, 350.0])
    for _ in range(pc.EPISODE_STEPS):
        x = pc.MODEL.step(x, np.array([1.0, 345.0]), nominal_params)
    assert abs(x[3] - 109.0) < 1.5 and abs(x[4] - 355.0) < 0.5


def test_rhs_numpy_equals_casadi(reactor_points, nominal_params):
    n = 200
    x, u = reactor_points(n)
    p = pc.MODEL.param_vector(nominal_params)
    f = pc.MODEL.rhs_function()
    cas = np.asarray(f.map(n)(x.T, u.T, np.tile(p, (n, 1)).T)).T
    np.testing.assert_allclose(pc.MODEL.rhs_numpy(x, u, nominal_params), cas, rtol=1e-13, atol=0)


def test_startup_episode_matches_scipy_bdf(nominal_params):
    """The env's integrator against scipy BDF at rtol 1e-10, interval by interval, on a PI startup."""
    env = TaskEnv(pc.TASK, "startup")
    ep = run_episode(env, PIController(NOMINAL_TUNING), seed=3)
    states = ep.infos["state"]
    u = np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)
    x = states[0].copy()
    worst = 0.0
    for k in range(ep.length):
        sol = solve_ivp(lambda t, y: pc.MODEL.rhs_numpy(y, u[k], nominal_params), (0.0, pc.DT), x,
                        method="BDF", rtol=1e-10, atol=1e-12 * pc.X_SCALE)
        assert sol.success
        x = sol.y[:, -1]
        worst = max(worst, float(np.max(np.abs(states[k + 1] - x) / np.abs(x))))
    print(f"worst relative error {worst:.2e}")
    assert worst < 1e-5, worst


def test_batch_equals_single_steps_with_different_params(rng, nominal_params):
    n = 7
    plants = [pc.mismatched(nominal_params, UA=rng.uniform(0.7, 1.1), dH=rng.uniform(0.9, 1.2)) for _ in range(n)]
    p = np.stack([pc.MODEL.param_vector(q) for q in plants])
    x = np.tile(pc.steady_state(100.0, 350.0).x, (n, 1)) * rng.uniform(0.95, 1.05, (n, 5))
    u = np.column_stack([rng.uniform(0, 2.5, n), rng.uniform(300, 350, n)])
    batch = pc.MODEL.step_batch(x, u, p)
    for k in range(n):
        np.testing.assert_array_equal(batch[k], pc.MODEL.step(x[k], u[k], plants[k]))


def test_compiled_equals_virtual_machine(rng, nominal_params):
    fn = pc.MODEL.interval_function()
    comp = compiled.compile_function(fn)
    p = pc.MODEL.param_vector(nominal_params)
    for _ in range(5):
        x = pc.steady_state(70.0, 350.0).x * rng.uniform(0.9, 1.1, 5)
        u = np.array([rng.uniform(0, 2.5), rng.uniform(300, 350)])
        a, b = fn(x, u, p), comp(x, u, p)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_runaway_interval_is_recomputed_by_cvodes(nominal_params):
    """A violent interval exceeds the RODAS4 error estimate; CVODES recomputes it, and it is counted."""
    hot = np.array([450.0, 12.0, 2e-6, 100.0, 385.0])
    u = np.array([2.5, 350.0])
    p = pc.MODEL.param_vector(nominal_params)
    _, err = pc.MODEL.interval_function()(hot, u, p)
    assert float(err) > pc.MODEL.err_tol
    before = pc.MODEL.fallbacks
    got = pc.MODEL.step(hot, u, p)
    assert pc.MODEL.fallbacks == before + 1
    ref = solve_ivp(lambda t, y: pc.MODEL.rhs_numpy(y, u, nominal_params), (0.0, pc.DT), hot, method="BDF",
                    rtol=1e-10, atol=1e-12 * pc.X_SCALE)
    np.testing.assert_allclose(got, ref.y[:, -1], rtol=1e-5)


@dataclass(frozen=True)
class _DecayParams:
    k: float = 0.5  # 1/s


def _forced_decay(x, u, p, m, t):
    return (-p.k * x[0] + u[0] * m.sin(t),)


def test_time_varying_model_matches_analytic_solution():
    """Generic core: dx/dt = -k x + u sin t, exact solution known in closed form."""
    model = ODEModel(name="decay", states=("x",), inputs=("u",), params_type=_DecayParams, rhs=_forced_decay,
                     dt=0.7, x_scale=[1.0], u_low=[-1.0], u_high=[1.0], substeps=8, time_varying=True)
    k, u, x0, t0 = 0.5, 0.8, 1.3, 2.0

    def exact(t):
        # particular solution u (k sin t - cos t) / (k² + 1) plus homogeneous part matching x(t0) = x0
        part = lambda s: u * (k * np.sin(s) - np.cos(s)) / (k**2 + 1)  # noqa: E731
        return part(t) + (x0 - part(t0)) * np.exp(-k * (t - t0))

    got = model.step(np.array([x0]), np.array([u]), _DecayParams(k=k), t0=t0)
    np.testing.assert_allclose(got[0], exact(t0 + 0.7), rtol=1e-7)


def test_parameter_vector_rejects_wrong_type():
    with pytest.raises(TypeError, match="PolyCSTRParams"):
        pc.MODEL.param_vector(_DecayParams())


def test_interval_function_is_built_once():
    assert pc.MODEL.interval_function() is pc.MODEL.interval_function()
    assert isinstance(pc.MODEL.interval_function(), ca.Function)
    assert pc.MODEL.interval_function().name_in() == ["x0", "u", "p"]


def test_direct_call_equals_casadi_and_checks_sizes(rng, nominal_params):
    fn = pc.MODEL.interval_function()
    direct = compiled.DirectCall(fn)
    p = pc.MODEL.param_vector(nominal_params)
    x = pc.steady_state(100.0, 350.0).x * rng.uniform(0.9, 1.1, 5)
    u = np.array([1.2, 338.0])
    xf, err = direct(x, u, p)
    ref = fn(x, u, p)
    np.testing.assert_array_equal(xf, np.asarray(ref[0]).ravel())
    assert err[0] == float(ref[1])
    with pytest.raises(ValueError, match=r"input 1 needs 2 numbers, got \(3,\)"):
        direct(x, np.ones(3), p)
    with pytest.raises(ValueError, match=r"input 0 needs 5 numbers, got \(\)"):
        direct(1.0, u, p)  # one number is not broadcast into the state
    with pytest.raises(TypeError, match="takes 3 arguments"):
        direct(x, u)
    xf_row, _ = direct(x[None, :], u[None, :], p)  # a row works as a vector
    np.testing.assert_array_equal(xf_row, xf)


def test_one_row_call_equals_the_batch_and_keeps_its_results(rng, nominal_params):
    fn = pc.MODEL.interval_function()
    rows = compiled.Rows(fn)
    p = pc.MODEL.param_vector(nominal_params)[None, :]
    xs = pc.steady_state(100.0, 350.0).x * rng.uniform(0.9, 1.1, (2, 5))
    u = np.array([[1.2, 338.0]])
    first = rows(xs[:1], u, p)  # Rows' one-row case: DirectCall.row
    assert [o.shape for o in first] == [(1, 5), (1, 1)]
    kept = [o.copy() for o in first]
    rows(xs[1:], u, p)  # a later call must not overwrite the results handed out before
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)
    batch = rows(np.vstack([xs[:1]] * 40), np.repeat(u, 40, axis=0), np.repeat(p, 40, axis=0))
    np.testing.assert_array_equal(first[0][0], batch[0][17])
    np.testing.assert_array_equal(first[0][0], np.asarray(fn(xs[0], u[0], p[0])[0]).ravel())
    with pytest.raises(ValueError, match=r"input 1 needs one row of 2 numbers, got \(1, 3\)"):
        compiled.DirectCall(fn).row((xs[:1], np.ones((1, 3)), p))


# -- the coarse rung: 4 substeps, retaken in 16 where the error estimate is too large ------------------------


def _episode_intervals(scenario, controller, plant, seed):
    ep = run_episode(TaskEnv(pc.TASK, scenario, plant=plant), controller, seed=seed)
    return ep.infos["state"][:-1], np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)


class _RandomInputs:
    """An adversary: a uniformly random input every interval (a step change at every interval start)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self, seed=None):
        pass

    def act(self, obs):
        return self.rng.uniform(pc.U_LOW, pc.U_HIGH)


def test_coarse_rung_is_as_accurate_as_the_fine_interval(nominal_params):
    """Interval by interval against CVODES at rtol 1e-9 (the model's own reference), on PI episodes of every
    scenario, on the mismatched plant, and behind random inputs: where the coarse interval is kept its error
    is within that of the fixed 16 substeps (at most 2x it or 1e-6), and everywhere below 1e-5."""
    from safectrl.controllers.pi import DatasetPI

    m = pc.MODEL
    fine, coarse = compiled.Rows(m.interval_function()), compiled.Rows(m.coarse_interval_function())
    mismatch = pc.mismatched(nominal_params, UA=0.8, dH=1.1)
    cases = [("startup", PIController(NOMINAL_TUNING), nominal_params, 0),
             ("grade_up", DatasetPI(), mismatch, 1), ("grade_down", DatasetPI(), nominal_params, 2),
             ("grade_up", _RandomInputs(3), nominal_params, 3)]
    kept = total = 0
    for scenario, controller, plant, seed in cases:
        X, U = _episode_intervals(scenario, controller, plant, seed)
        p = np.tile(m.param_vector(plant), (len(X), 1))
        truth = np.array([np.asarray(m.adaptive_interval_function()(x, u, q, 0.0)).ravel()
                          for x, u, q in zip(X, U, p)])
        xf_fine, err_fine = fine(X, U, p)
        xf_coarse, err_coarse = coarse(X, U, p)
        xf, _, refined, unsettled = m._interval_rows()(X, U, p)
        keep = err_coarse[:, 0] <= m.coarse_tol
        np.testing.assert_array_equal(xf[keep], xf_coarse[keep])
        np.testing.assert_array_equal(xf[~keep], xf_fine[~keep])
        np.testing.assert_array_equal(refined[:, 0], (~keep).astype(float))  # the Switch's flag
        err = np.where(keep, err_coarse[:, 0], err_fine[:, 0])  # the kept rung's: CVODES above err_tol
        np.testing.assert_array_equal(unsettled[:, 0], (~(err <= m.err_tol)).astype(float))
        r, r_fine = (np.max(np.abs(a - truth) / np.abs(truth), axis=1) for a in (xf, xf_fine))
        assert np.all(r <= np.maximum(2 * r_fine, 1e-6)), (scenario, r.max(), r_fine.max())
        assert r.max() < 1e-5, (scenario, r.max())
        kept += int(keep.sum())
        total += len(keep)
    assert 0.5 * total < kept < total  # both rungs exercised


def test_batch_with_both_rungs_equals_single_steps(rng, nominal_params, monkeypatch):
    """140 reactors (four full chunks of 32 and a short one, so split between two threads and padded), some
    of them in a transient that the coarse rung rejects: each row bit for bit its own single step, in the
    env's transition as in step_batch."""
    m, task = pc.MODEL, pc.TASK
    X, U = _episode_intervals("startup", PIController(NOMINAL_TUNING), nominal_params, 4)
    at = rng.integers(0, len(X), 140)
    at[:5] = np.arange(5)  # the start-up's first intervals: the coarse estimate is too large there
    x, u = X[at], U[at]
    p = m.param_vector(nominal_params)
    before = m.refined
    monkeypatch.setenv("SAFECTRL_THREADS", "2")
    batch = m.step_batch(x, u, p)
    assert m.refined > before
    assert m._interval_rows()._pool is not None  # the chunks went through two threads
    sp = np.tile(pc.SCENARIOS["startup"].setpoint, (len(x), 1))
    tr = task.transition(x, u, p, sp)
    for k in range(len(x)):
        np.testing.assert_array_equal(batch[k], m.step(x[k], u[k], p))
        one = task.transition(x[k], u[k], p, sp[k])
        np.testing.assert_array_equal(tr.x[k], one.x[0])
        assert tr.stage_cost[k] == one.stage_cost[0] and tr.exceedance[k] == one.exceedance[0]
    np.testing.assert_array_equal(tr.x, batch)


@pytest.mark.parametrize("fn", ["interval", "rung"])
def test_rows_without_a_compiler_gives_the_same_numbers(monkeypatch, reactor_points, nominal_params, fn):
    """The fixed-step interval, and the two-rung Switch simulation runs (both rungs taken among these rows):
    CasADi's virtual machine gives the compiled numbers, for a batch and for one row."""
    x, u = reactor_points(40)
    p = np.tile(pc.MODEL.param_vector(nominal_params), (40, 1))
    f = pc.MODEL.interval_function() if fn == "interval" else pc.MODEL._interval_rows().fn
    compiled_out = compiled.Rows(f)(x, u, p)
    compiled_one = compiled.Rows(f)(x[:1], u[:1], p[:1])
    if fn == "rung":
        assert 0 < compiled_out[2].sum() < 40  # some rows kept coarse, some retaken
    monkeypatch.setenv("SAFECTRL_NO_COMPILE", "1")
    monkeypatch.setattr(compiled, "_warned", True)  # its one-time warning is not what this test is about
    rows = compiled.Rows(f)
    vm_out, vm_one = rows(x, u, p), rows(x[:1], u[:1], p[:1])
    assert rows._chunk_callers(1)[0]._c is None  # the virtual machine's map did the work
    for a, b in zip(compiled_out + compiled_one, vm_out + vm_one):
        np.testing.assert_array_equal(a, b)


def test_coarse_substeps_must_be_fewer_than_substeps():
    with pytest.raises(ValueError, match="coarse_substeps must be 0"):
        ODEModel(name="decay", states=("x",), inputs=("u",), params_type=_DecayParams, rhs=_forced_decay,
                 dt=0.7, x_scale=[1.0], u_low=[-1.0], u_high=[1.0], substeps=8, coarse_substeps=8,
                 time_varying=True)


def test_time_varying_model_with_a_coarse_rung_takes_each_row_on_its_own_clock():
    """The Switch passes each row's t0 to the rung it takes: a batch of intervals at different times, some
    kept coarse and some retaken (the tolerance set between their estimates), equals each rung's own
    interval function row by row, and both stay close to the closed-form solution."""
    model = ODEModel(name="decay_rung", states=("x",), inputs=("u",), params_type=_DecayParams,
                     rhs=_forced_decay, dt=0.7, x_scale=[1.0], u_low=[-1.0], u_high=[1.0], substeps=8,
                     coarse_substeps=2, time_varying=True)
    k = 0.5
    t0 = np.linspace(0.0, 6.0, 9)
    x0, u = np.full((9, 1), 1.3), np.full((9, 1), 0.8)
    p = np.array([k])
    fine, coarse = model.interval_function(), model.interval_function(2)
    err2 = np.array([float(coarse(x0[i], u[i], p, t0[i])[1]) for i in range(9)])
    model.coarse_tol = float(np.median(err2))  # about half the rows retaken
    before = model.refined
    got = model.step_batch(x0, u, p, t0)
    keep = err2 <= model.coarse_tol
    assert 0 < keep.sum() < 9 and model.refined - before == (~keep).sum()
    for i in range(9):
        want = (coarse if keep[i] else fine)(x0[i], u[i], p, t0[i])[0]
        assert got[i, 0] == float(want)
        np.testing.assert_array_equal(model.step(x0[i], u[i], p, t0[i]), got[i])

    def exact(t, s):
        part = lambda r: 0.8 * (k * np.sin(r) - np.cos(r)) / (k**2 + 1)  # noqa: E731
        return part(t) + (1.3 - part(s)) * np.exp(-k * (t - s))

    np.testing.assert_allclose(got[:, 0], exact(t0 + 0.7, t0), rtol=1e-4)
