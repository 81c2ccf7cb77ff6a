"""Every registered task through the one env: Gymnasium's checks, determinism, vector = single, and the task
functions written once (their CasADi and NumPy forms agree). A sixth plant from the test tree joins by one
registry line."""

from __future__ import annotations

import warnings

import casadi as ca
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import safectrl
from safectrl.models import registry
from safectrl.models.mathns import CASADI
from safectrl.rl.env import TaskEnv, TaskVectorEnv

TANK = "tests/HeatedTank-v0"
safectrl.register_task(TANK, "heated_tank:TASK")  # the one registry line of a plant defined outside safectrl

ENV_IDS = list(registry.TASKS)
WHITELISTED = "symmetric and normalized space"  # physical-unit action boxes, by design
# A box that is the safe set (the Klatt-Engell CSTR) is left by the last observation of a failing step.
OUTSIDE_ON_FAILURE = "obs returned by the `step()` method is not within the observation space"


def test_the_test_plant_is_registered():
    assert TANK in ENV_IDS and registry.get_task(TANK).name == "HeatedTank"
    with pytest.raises(ValueError, match="already registered"):
        safectrl.register_task(TANK, "heated_tank:OTHER")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        registry.get_task("nope")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    allowed = (WHITELISTED, OUTSIDE_ON_FAILURE)
    assert [str(w.message) for w in caught if not any(a in str(w.message) for a in allowed)] == []


def _actions(env: gym.Env, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    return low + (high - low) * rng.random((n, len(low)))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_trajectory_and_vector_equals_single(env_id):
    task = registry.get_task(env_id)
    noise = task.measurement_std is not None
    env = TaskEnv(env_id, noise=noise, max_steps=12)
    actions = _actions(env, 12, 0)

    def roll(e, seed):
        obs, info = e.reset(seed=seed)
        out = [np.r_[obs, info["state"]]]
        for a in actions:
            obs, r, term, trunc, info = e.step(a)
            out.append(np.r_[obs, r, info["state"], info["cost"]])
            if term or trunc:
                break
        return out

    first, again = roll(env, 5), roll(TaskEnv(env_id, noise=noise, max_steps=12), 5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    venv = TaskVectorEnv(env_id, num_envs=2, noise=noise, max_steps=12)
    obs, info = venv.reset(seed=[5, 6])
    np.testing.assert_array_equal(obs[0], first[0][: len(obs[0])])
    for k, a in enumerate(actions[: len(first) - 1]):
        obs, r, term, trunc, info = venv.step(np.stack([a, a]))
        np.testing.assert_array_equal(np.r_[obs[0], r[0], info["state"][0], info["cost"][0]], first[k + 1])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_task_functions_agree_in_casadi_and_numpy(env_id):
    """The stage cost and the limits are written once; the CasADi form an NMPC or a safety filter optimises
    is the NumPy form the env charges."""
    task = registry.get_task(env_id)
    m = task.model
    rng = np.random.default_rng(1)
    env = TaskEnv(env_id)
    env.reset(seed=0)
    x0 = env.state
    x = x0 * (1 + 0.05 * rng.standard_normal((8, m.nx))) + 1e-3 * rng.standard_normal((8, m.nx))
    u = m.u_low + (m.u_high - m.u_low) * rng.random((8, m.nu))
    sp = np.tile(np.asarray(env.scenario.setpoint, dtype=float), (8, 1))
    p = task.nominal
    xs, us, sps = ca.SX.sym("x", m.nx), ca.SX.sym("u", m.nu), ca.SX.sym("sp", sp.shape[1])
    cost = ca.Function("cost", [xs, us, sps], [task.stage_cost(ca.vertsplit(xs), ca.vertsplit(us),
                                                               ca.vertsplit(sps), p, CASADI)])
    with np.errstate(all="ignore"):
        numpy_cost = task.stage_cost_numpy(x, u, sp, p)
    for k in range(8):
        if np.isfinite(numpy_cost[k]):
            np.testing.assert_allclose(float(cost(x[k], u[k], sp[k])), numpy_cost[k], rtol=1e-12)
    for limit in (*task.limits, *task.failure):
        out = ca.Function("out", [xs], [limit.value(ca.vertsplit(xs), p, task.states, CASADI)])
        np.testing.assert_allclose(np.array([float(out(xk)) for xk in x]), limit.value(x, p, task.states),
                                   rtol=1e-12)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_compiled_transition_equals_the_numpy_pieces(env_id):
    """The env's one compiled call per interval (Task.transition) against what it replaces: step_batch, then
    the stage cost, the operating limits' exceedance and the failure test in NumPy, on one plant and on a
    batch with inputs at both bounds, a state far outside the failure set and one that is not finite (for
    the reactor also rows whose interval CVODES recomputes)."""
    task = registry.get_task(env_id)
    m = task.model
    rng = np.random.default_rng(3)
    env = TaskEnv(env_id)
    env.reset(seed=0)
    n = 8
    x = env.state * (1 + 0.05 * rng.standard_normal((n, m.nx))) + 1e-3 * rng.standard_normal((n, m.nx))
    x[6] = 3.0 * env.state + 10.0  # far away: outside the failure set (a runaway, for the reactor)
    x[7, 0] = np.nan
    u = m.u_low + (m.u_high - m.u_low) * rng.random((n, m.nu))
    u[0], u[1] = m.u_low, m.u_high
    sp = np.tile(np.asarray(env.scenario.setpoint, dtype=float), (n, 1))
    p = m.param_vector(task.actual)
    t0 = np.arange(n) * m.dt
    for rows in (slice(None), slice(0, 1), slice(6, 7)):
        before = m.fallbacks
        x_ref = m.step_batch(x[rows], u[rows], p, t0[rows])
        redone = m.fallbacks - before
        with np.errstate(all="ignore"):
            cost_ref = task.stage_cost_numpy(x_ref, u[rows], sp[rows], task.actual)
            exceed_ref = task.exceedance(x_ref, task.actual)
        failed_ref = task.failed(x_ref, task.actual)
        before = m.fallbacks
        step = task.transition(x[rows], u[rows], p, sp[rows], t0[rows])
        assert m.fallbacks - before == redone  # the same intervals recomputed by CVODES
        np.testing.assert_array_equal(step.x, x_ref)
        np.testing.assert_allclose(step.stage_cost, cost_ref, rtol=1e-13)  # NumPy's log vs libm's: an ulp
        np.testing.assert_allclose(step.exceedance, exceed_ref, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(step.failed, failed_ref)
        if rows == slice(None):
            assert failed_ref[6:].all() and not np.isfinite(step.x[7]).all()
            assert np.isinf(step.exceedance[7])
            if env_id == "safectrl/PolyCSTR-v0":
                assert redone >= 2


def test_task_definitions_are_checked():
    task = registry.get_task(TANK)
    from dataclasses import replace

    with pytest.raises(ValueError, match="plants must include"):
        replace(task, plants={"nominal": task.nominal})
    with pytest.raises(TypeError, match="not a TankParams"):
        replace(task, plants={"nominal": task.nominal, "actual": 3.0})
    with pytest.raises(ValueError, match="limit 'Tx' is no state"):
        replace(task, limits=(type(task.limits[0])("Tx", high=1.0),))
    with pytest.raises(ValueError, match="unknown scenario 'cool'"):
        TaskEnv(TANK, scenario="cool")
    with pytest.raises(ValueError, match="defines no measurement noise"):
        TaskEnv("safectrl/Glucose-v0", noise=True)


def test_limits_and_failure_of_the_test_plant():
    """Full heating crosses the operating limit (violations, with the exceedance as cost) before the tank
    fails, and the failing interval is charged every remaining interval."""
    env = TaskEnv(TANK, max_steps=400)
    env.reset(seed=0)
    violations = 0
    for _ in range(400):
        obs, reward, term, trunc, info = env.step([30e3])
        if info["violation"]:
            violations += 1
            assert info["cost"] == pytest.approx(info["state"][0] - 360.0)
        if term:
            break
    assert term and info["failure"] and info["state"][0] > 380.0 and violations >= 1
    assert reward == pytest.approx(-1e4 * (400 - env._core.steps[0] + 1))
