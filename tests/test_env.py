"""The Gymnasium environment: API conformance, determinism, vector/single agreement, error paths."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import polycstr as pc
from safectrl.rl.env import INFO_KEYS, TaskEnv, TaskVectorEnv
from safectrl.rl.rollout import run_episode

SCENARIOS = list(pc.SCENARIOS)
# Gymnasium recommends a [-1, 1] action box; ours is in physical units by design (control engineers read
# kg/h and K). This is the only warning check_env may raise.
WHITELISTED = "symmetric and normalized space"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_check_env_passes(scenario):
    env = gym.make("safectrl/PolyCSTR-v0", scenario=scenario)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if WHITELISTED not in str(w.message)]
    assert unexpected == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_same_actions_same_trajectory(scenario, rng):
    actions = np.column_stack([rng.uniform(0, 2.5, 30), rng.uniform(330, 350, 30)])

    def roll():
        env = gym.make("safectrl/PolyCSTR-v0", scenario=scenario, noise=True)
        obs, _ = env.reset(seed=11)
        out = [obs]
        for a in actions:
            obs, r, term, trunc, info = env.step(a)
            out.append(np.r_[obs, r, info["state"]])
        return out

    a, b = roll(), roll()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_differ():
    env = TaskEnv(pc.TASK, "startup")
    o1, _ = env.reset(seed=1)
    o2, _ = env.reset(seed=2)
    assert not np.array_equal(o1, o2)


@pytest.mark.parametrize("noise", [False, True])
def test_vector_env_equals_single_envs(noise, rng):
    n, steps = 4, 210  # longer than an episode: covers autoreset
    venv = gym.make_vec("safectrl/PolyCSTR-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        scenario="grade_up", noise=noise, max_steps=100)
    singles = [TaskEnv(pc.TASK, "grade_up", noise=noise, max_steps=100) for _ in range(n)]
    vobs, _ = venv.reset(seed=40)
    sobs = [env.reset(seed=40 + k)[0] for k, env in enumerate(singles)]
    np.testing.assert_array_equal(vobs, np.stack(sobs))
    pending_reset = np.zeros(n, dtype=bool)
    resets = 0
    for _ in range(steps):
        a = np.column_stack([rng.uniform(0, 2.5, n), rng.uniform(335, 345, n)])
        vobs, vr, vterm, vtrunc, vinfo = venv.step(a)
        for k, env in enumerate(singles):
            if pending_reset[k]:  # next-step autoreset: the vector env reset this reactor
                o, info = env.reset()
                r, term, trunc = 0.0, False, False
                resets += 1
            else:
                o, r, term, trunc, info = env.step(a[k])
            np.testing.assert_array_equal(vobs[k], o)
            assert vr[k] == r and vterm[k] == term and vtrunc[k] == trunc
            np.testing.assert_array_equal(vinfo["state"][k], info["state"])
        pending_reset = vterm | vtrunc
    assert resets == 2 * n


def test_vector_env_autoresets_after_truncation():
    venv = TaskVectorEnv(pc.TASK, num_envs=2, scenario="startup", max_steps=3)
    venv.reset(seed=0)
    a = np.tile([1.0, 345.0], (2, 1))
    for _ in range(2):
        _, _, _, trunc, _ = venv.step(a)
        assert not trunc.any()
    _, _, _, trunc, _ = venv.step(a)
    assert trunc.all()
    obs, rew, _, _, info = venv.step(a)
    np.testing.assert_array_equal(rew, 0.0)
    np.testing.assert_array_equal(info["state"][:, 3], 0.0)  # a fresh startup: no polymer yet


def test_info_carries_state_setpoint_and_constraint_signal():
    env = TaskEnv(pc.TASK, "grade_down")
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) <= set(info)
    _, reward, _, _, info = env.step(pc.steady_state(100.0, 350.0).u)
    assert info["state"].shape == (5,)
    np.testing.assert_array_equal(info["setpoint"], [70.0, 350.0])
    e = info["setpoint"] - info["state"][[3, 4]]
    assert reward == pytest.approx(-(e**2).sum())
    assert info["cost"] == max(0.0, info["state"][4] - pc.T_MAX)
    assert info["violation"] is False and info["failure"] is False


def test_non_finite_action_raises_naming_the_input():
    env = TaskEnv(pc.TASK)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite f_I"):
        env.step([np.nan, 340.0])
    with pytest.raises(ValueError, match="non-finite T_c"):
        env.step([1.0, np.inf])


def test_wrong_shape_raises():
    env = TaskEnv(pc.TASK)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step([1.0, 340.0, 3.0])
    venv = TaskVectorEnv(pc.TASK, num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        venv.step(np.ones((2, 2)))
    with pytest.raises(ValueError, match="env 1 has non-finite T_c"):
        venv.step(np.array([[1.0, 340.0], [1.0, np.nan], [1.0, 340.0]]))


def test_out_of_bounds_action_is_clipped_and_reported():
    env = TaskEnv(pc.TASK)
    env.reset(seed=0)
    obs, _, _, _, info = env.step([9.0, 290.0])
    assert info["clipped"] is True
    np.testing.assert_array_equal(obs[5:7], [2.5, 300.0])
    _, _, _, _, info = env.step([1.0, 340.0])
    assert info["clipped"] is False
    venv = TaskVectorEnv(pc.TASK, num_envs=4)
    venv.reset(seed=0)
    # inside, above one bound, on both bounds exactly (not clipped), below the other
    obs, _, _, _, info = venv.step(np.array([[1.0, 340.0], [1.0, 401.0], [0.0, 300.0], [-1e-12, 340.0]]))
    np.testing.assert_array_equal(info["clipped"], [False, True, False, True])
    np.testing.assert_array_equal(obs[:, 5:7],
                                  [[1.0, 340.0], [1.0, pc.U_HIGH[1]], [0.0, 300.0], [0.0, 340.0]])


def test_unknown_scenario_lists_valid_ones():
    with pytest.raises(ValueError, match="startup, grade_down, grade_up"):
        gym.make("safectrl/PolyCSTR-v0", scenario="shutdown")


def test_step_after_end_raises():
    env = TaskEnv(pc.TASK, max_steps=1)
    env.reset(seed=0)
    env.step([1.0, 340.0])
    with pytest.raises(RuntimeError, match="reset"):
        env.step([1.0, 340.0])


def test_runaway_terminates_with_failure_and_is_charged():
    """A weakly cooled plant at full initiator runs away; the episode ends with failure, no exception."""
    env = TaskEnv(pc.TASK, "startup", plant=pc.mismatched(UA=0.3, dH=1.5))
    env.reset(seed=0)
    done, k = False, 0
    while not done:
        obs, reward, term, trunc, info = env.step([2.5, 350.0])
        done, k = term or trunc, k + 1
    assert term and info["failure"] and info["violation"]
    assert info["state"][4] >= pc.T_RUNAWAY
    assert reward <= -(pc.T_RUNAWAY - 350.0) ** 2 * (pc.EPISODE_STEPS - k + 1)
    assert env.observation_space.contains(obs)


def test_noise_changes_observation_not_state_or_reward():
    clean, noisy = TaskEnv(pc.TASK, "grade_up"), TaskEnv(pc.TASK, "grade_up", noise=True)
    o1, _ = clean.reset(seed=5)
    o2, _ = noisy.reset(seed=5)
    assert not np.array_equal(o1[:3], o2[:3])
    np.testing.assert_array_equal(clean.state, noisy.state)
    a = pc.steady_state(70.0, 350.0).u
    _, r1, _, _, i1 = clean.step(a)
    _, r2, _, _, i2 = noisy.step(a)
    assert r1 == r2
    np.testing.assert_array_equal(i1["state"], i2["state"])


def test_plant_change_through_reset_options():
    env = TaskEnv(pc.TASK, "grade_down")
    env.reset(seed=0, options={"plant": pc.mismatched()})
    assert env.plant == pc.mismatched()
    with pytest.raises(TypeError, match="PolyCSTRParams"):
        env.reset(seed=0, options={"plant": {"UA": 400}})


def test_nominal_pi_episode_runs_to_truncation():
    ep = run_episode(TaskEnv(pc.TASK, "grade_up"), PIController(NOMINAL_TUNING), seed=0)
    assert ep.length == pc.EPISODE_STEPS and ep.truncations[-1] and not ep.terminations.any()


def test_non_finite_state_terminates_with_failure_instead_of_raising():
    """Absurd kinetics make the integration break down: CVODES gives up, the env reports a failure."""
    from dataclasses import replace

    env = TaskEnv(pc.TASK, "startup", plant=replace(pc.PolyCSTRParams(), k0_p=1e30))
    first, _ = env.reset(seed=0)
    obs, reward, term, trunc, info = env.step([1.0, 340.0])
    assert term and not trunc and info["failure"]
    assert np.isnan(info["state"]).all() and info["cost"] == np.inf
    np.testing.assert_array_equal(obs, first)  # the last finite observation is repeated
    assert reward == -(pc.T_RUNAWAY - 350.0) ** 2 * pc.EPISODE_STEPS
