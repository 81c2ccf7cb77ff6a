"""Bad measurements in the loop: the env's injected sensor faults, and what every decision-maker does with
them (the EKF and the NMPC observers, PI, the offline policies). The safety filter's are in test_safety.py."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from safectrl.common.faults import FallbackWarning
from safectrl.controllers.estimation import ExtendedKalmanFilter
from safectrl.controllers.nmpc import FullStateObserver
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.controllers.polycstr_nmpc import EKF_CONFIG, PolyCSTRObserver, polycstr_nmpc
from safectrl.controllers.task_nmpc import TaskObserver
from safectrl.models import polycstr as pc
from safectrl.rl.bc import BCConfig
from safectrl.rl.env import FAULT_DROPOUT, FAULT_NAN, FAULT_NONE, SensorFaults, TaskEnv, TaskVectorEnv
from safectrl.rl.offline_data import Normalisation
from safectrl.rl.policy import OfflinePolicy
from safectrl.rl.training import make_agent

from heated_tank import TASK as TANK

ENV = "safectrl/PolyCSTR-v0"
_Y = [pc.OBSERVATIONS.index(s) for s in ("A", "P", "T")]
_E_P, _E_T = pc.OBSERVATIONS.index("e_P"), pc.OBSERVATIONS.index("e_T")


def roll(env, seed, steps, actions=None):
    """Observations, rewards, states and fault codes (if any) of a fixed-action episode."""
    obs, info = env.reset(seed=seed)
    out = {"obs": [obs], "reward": [], "state": [info["state"]], "faults": []}
    for k in range(steps):
        u = pc.U_LOW + (pc.U_HIGH - pc.U_LOW) * (0.3 + 0.4 * (k % 3) / 2) if actions is None else actions[k]
        obs, reward, term, trunc, info = env.step(u)
        out["obs"].append(obs)
        out["reward"].append(reward)
        out["state"].append(info["state"])
        if "faults" in info:
            out["faults"].append(info["faults"])
        if term or trunc:
            break
    return {k: np.asarray(v) for k, v in out.items()}


# -- the env injects faults -------------------------------------------------------------------------------

@pytest.mark.parametrize("noise", [False, True])
def test_zero_rates_leave_the_trajectory_bit_identical(noise):
    clean = roll(TaskEnv(ENV, noise=noise, max_steps=25), 3, 25)
    zero = roll(TaskEnv(ENV, noise=noise, max_steps=25, faults=SensorFaults()), 3, 25)
    for k in ("obs", "reward", "state"):
        np.testing.assert_array_equal(clean[k], zero[k])
    assert zero["faults"].shape == (25, 3) and np.all(zero["faults"] == FAULT_NONE)
    # Faults on: the true states and the rewards stay those of the clean run (same actions), and so do the
    # noisy readings wherever no fault struck: the fault draws do not shift the noise stream.
    faulty = roll(TaskEnv(ENV, noise=noise, max_steps=25, faults=SensorFaults(0.3, 0.2)), 3, 25)
    np.testing.assert_array_equal(clean["state"], faulty["state"])
    np.testing.assert_array_equal(clean["reward"], faulty["reward"])
    ok = faulty["faults"] == FAULT_NONE
    np.testing.assert_array_equal(clean["obs"][1:, _Y][ok], faulty["obs"][1:, _Y][ok])
    assert (~ok).sum() > 10


def test_info_has_no_faults_key_without_faults():
    _, info = TaskEnv(ENV, max_steps=3).reset(seed=0)
    assert "faults" not in info


def test_nan_rate_is_the_fraction_of_nan_readings_and_the_observation_carries_them():
    env = TaskEnv(ENV, max_steps=400, faults=SensorFaults(nan_rate=0.1))
    out = roll(env, 0, 400, actions=np.tile((pc.U_LOW + pc.U_HIGH) / 2, (400, 1)))
    codes = out["faults"]
    y = out["obs"][1:, _Y]
    assert np.all(np.isnan(y) == (codes == FAULT_NAN)) and not np.any(codes == FAULT_DROPOUT)
    assert abs(np.mean(codes == FAULT_NAN) - 0.1) < 0.025  # 1200 draws: 4 standard deviations
    # e_P = P_sp - P and e_T = T_sp - T are NaN exactly where P, T are
    np.testing.assert_array_equal(np.isnan(out["obs"][1:, _E_P]), codes[:, 1] == FAULT_NAN)
    np.testing.assert_array_equal(np.isnan(out["obs"][1:, _E_T]), codes[:, 2] == FAULT_NAN)
    assert np.all(np.isfinite(out["obs"][0]))  # the reset observation is never faulty


def test_dropout_repeats_the_last_reading():
    env = TaskEnv(ENV, noise=True, max_steps=300, faults=SensorFaults(dropout_rate=0.2))
    out = roll(env, 1, 300)
    codes, y = out["faults"], out["obs"][:, _Y]
    assert abs(np.mean(codes == FAULT_DROPOUT) - 0.2) < 0.04 and np.all(np.isfinite(y))
    frozen = codes == FAULT_DROPOUT
    np.testing.assert_array_equal(y[1:][frozen], y[:-1][frozen])  # with noise, a true reading never repeats
    assert not np.any(y[1:][~frozen] == y[:-1][~frozen])


def test_faults_are_deterministic_per_seed_and_vector_env_equals_single():
    faults = SensorFaults(nan_rate=0.15, dropout_rate=0.15)
    a = roll(TaskEnv(ENV, noise=True, max_steps=30, faults=faults), 5, 30)
    b = roll(TaskEnv(ENV, noise=True, max_steps=30, faults=faults), 5, 30)
    c = roll(TaskEnv(ENV, noise=True, max_steps=30, faults=faults), 6, 30)
    np.testing.assert_array_equal(a["faults"], b["faults"])
    np.testing.assert_array_equal(a["obs"], b["obs"])
    assert not np.array_equal(a["faults"], c["faults"])
    other = SensorFaults(0.15, 0.15, seed_offset=3)
    offset = roll(TaskEnv(ENV, noise=True, max_steps=30, faults=other), 5, 30)
    assert not np.array_equal(a["faults"], offset["faults"])

    venv = TaskVectorEnv(ENV, num_envs=3, noise=True, max_steps=30, faults=faults)
    obs, info = venv.reset(seed=4)
    singles = [TaskEnv(ENV, noise=True, max_steps=30, faults=faults) for _ in range(3)]
    for k, env in enumerate(singles):
        o, _ = env.reset(seed=4 + k)
        np.testing.assert_array_equal(obs[k], o)
    u = np.tile((pc.U_LOW + pc.U_HIGH) / 2, (3, 1))
    for _ in range(30):
        obs, _, _, _, info = venv.step(u)
        for k, env in enumerate(singles):
            o, _, _, _, inf = env.step(u[k])
            np.testing.assert_array_equal(obs[k], o)
            np.testing.assert_array_equal(info["faults"][k], inf["faults"])


def test_gym_make_takes_faults_and_bad_faults_are_refused():
    env = gym.make(ENV, faults=SensorFaults(nan_rate=1.0), max_steps=2)
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the passive checker warns on observations outside the box
        obs, *_ = env.step((pc.U_LOW + pc.U_HIGH) / 2)
    assert np.all(np.isnan(obs[_Y]))
    with pytest.raises(ValueError, match=r"nan_rate must be a probability in \[0, 1\]"):
        SensorFaults(nan_rate=1.5)
    with pytest.raises(ValueError, match="nan_rate \\+ dropout_rate must be <= 1"):
        SensorFaults(nan_rate=0.6, dropout_rate=0.6)
    with pytest.raises(TypeError, match="faults must be None or a SensorFaults"):
        TaskEnv(ENV, faults=0.02)


# -- the EKF and the NMPC ---------------------------------------------------------------------------------

def test_ekf_leaves_out_non_finite_readings_and_uses_the_others():
    ss = pc.steady_state(*pc.HIGH_GRADE, pc.PolyCSTRParams())
    ekf = ExtendedKalmanFilter(pc.MODEL, pc.PolyCSTRParams(), EKF_CONFIG)
    ekf.reset(ss.x)
    ekf.predict(ss.u)
    before_x, before_P = ekf.x.copy(), ekf.P.copy()
    assert ekf.update(np.full(3, np.nan)) == 3  # prediction only
    np.testing.assert_array_equal(ekf.x, before_x)
    np.testing.assert_array_equal(ekf.P, before_P)
    y = ss.x[[0, 3, 4]] + np.array([0.0, 0.0, 1.0])
    assert ekf.update(np.array([np.inf, np.nan, y[2]])) == 2  # T alone moves the estimate
    assert np.all(np.isfinite(ekf.x)) and ekf.x[4] > before_x[4]


def test_nmpc_with_5_percent_nan_readings_finishes_with_finite_inputs_and_estimates():
    env = TaskEnv(ENV, max_steps=30, faults=SensorFaults(nan_rate=0.05))
    nmpc = polycstr_nmpc()
    obs, _ = env.reset(seed=2)
    nmpc.reset(seed=2)
    injected, steps, lossy = 0, 0, []
    with pytest.warns(FallbackWarning, match="invalid reading .* left out of the filter update") as caught:
        while True:
            u = nmpc.act(obs)
            assert np.all(np.isfinite(u)) and np.all(u >= pc.U_LOW) and np.all(u <= pc.U_HIGH)
            obs, _, term, trunc, info = env.step(u)
            injected += int(np.sum(info["faults"] == FAULT_NAN))
            lossy.append(bool(np.any(info["faults"] == FAULT_NAN)))
            steps += 1
            if term or trunc:
                break
    assert steps == 30 and injected >= 1
    assert sum("invalid reading" in str(w.message) for w in caught) == 1  # warned once
    assert np.all(np.isfinite(np.asarray(nmpc.observer.estimates)))
    # the last observation was not acted on; every earlier NaN reading was counted
    last = int(np.sum(info["faults"] == FAULT_NAN))
    assert nmpc.observer.rejected_measurements == injected - last
    assert nmpc.stats.rejected_measurements == injected - last
    assert nmpc.stats.episode().rejected_measurements == injected - last
    assert sum(lossy[:-1]) >= 1  # intervals acted on with a reading left out
    # they are not fallbacks (the solve ran on the prediction), and no solve failed
    assert nmpc.episode_report() == {"fallbacks": 0}


def test_after_a_nan_reading_the_next_clean_one_updates_the_estimate():
    env = TaskEnv(ENV, max_steps=10)
    observer, twin = PolyCSTRObserver(pc.PolyCSTRParams()), PolyCSTRObserver(pc.PolyCSTRParams())
    pi = PIController(NOMINAL_TUNING)
    obs, _ = env.reset(seed=0)
    history = [obs]
    for _ in range(3):
        obs, *_ = env.step(pi.act(obs))
        history.append(obs)
    lost = obs.copy()
    lost[_Y[1]] = lost[_E_P] = np.nan  # P lost: its setpoint error too
    blind = obs.copy()
    blind[_Y] = np.nan
    with pytest.warns(FallbackWarning):
        for o in history[:-1]:
            seen = observer(o)
            twin(o)
        during = observer(lost)
        twin(lost)
        predicted = twin(blind)  # the twin gets no reading at all on the next step: prediction only
    assert observer.rejected_measurements == 1 and during.rejected == 1 and twin.rejected_measurements == 4
    np.testing.assert_array_equal(during.reference, seen.reference)  # the setpoint of the last valid step
    assert np.all(np.isfinite(during.x))
    clean = observer(obs)  # the clean reading updates: P's uncertainty falls below the prediction's
    assert clean.rejected == 0 and observer.rejected_measurements == 1
    assert np.all(np.isfinite(clean.x)) and not np.array_equal(clean.x, predicted.x)
    assert observer.ekf.std[3] < 0.5 * twin.ekf.std[3]
    # an out-of-range temperature is a fault too, and strict raises on it
    hot = obs.copy()
    hot[_Y[2]] = 5000.0
    assert observer(hot).rejected == 1 and observer.rejected_measurements == 2
    strict = PolyCSTRObserver(pc.PolyCSTRParams(), strict=True)
    strict(env.reset(seed=0)[0])
    with pytest.raises(ValueError, match=r"invalid reading T = 5000.0 \(valid: finite in \[200, 700\]\)"):
        strict(hot)
    with pytest.raises(ValueError, match="in the first observation, which starts the filter"):
        PolyCSTRObserver(pc.PolyCSTRParams())(lost)


def test_strict_nmpc_raises_on_a_nan_reading():
    from dataclasses import replace

    from safectrl.controllers.polycstr_nmpc import NMPC_CONFIG

    nmpc = polycstr_nmpc(config=replace(NMPC_CONFIG, strict=True))
    env = TaskEnv(ENV, max_steps=5)
    obs, _ = env.reset(seed=0)
    nmpc.reset()
    nmpc.act(obs)
    obs[_Y[0]] = np.nan
    with pytest.raises(ValueError, match="invalid reading A = nan"):
        nmpc.act(obs)


def test_full_state_observer_predicts_a_lost_entry_with_the_model():
    from safectrl.models import klatt_engell as ke

    x0 = np.array([0.8, 0.5, 134.14, 130.0])
    u = np.array([ke.U_LOW[0] + 10.0, -1000.0])
    observer = FullStateObserver(ke.MODEL.dt, u_init=u, model=ke.MODEL, params=ke.ESTIMATED)
    holder = FullStateObserver(ke.MODEL.dt, u_init=u)
    for obs in (observer, holder):
        obs.reset()
        obs(x0)
        obs.applied(u)
    lost = x0.copy()
    lost[2] = np.nan
    with pytest.warns(FallbackWarning, match="replaced by the model's prediction"):
        seen = observer(lost)
    predicted = ke.MODEL.step(x0, u, ke.ESTIMATED)
    assert seen.x[2] == predicted[2] and np.array_equal(seen.x[[0, 1, 3]], x0[[0, 1, 3]])
    assert seen.rejected == 1 and observer.rejected_measurements == 1
    with pytest.warns(FallbackWarning, match="replaced by the last value"):
        assert holder(lost).x[2] == x0[2]
    with pytest.raises(ValueError, match="non-finite state entries .* in the first observation"):
        FullStateObserver(ke.MODEL.dt, u_init=u)(lost)
    strict = FullStateObserver(ke.MODEL.dt, u_init=u, strict=True)
    strict(x0)
    with pytest.raises(ValueError, match="FullStateObserver: non-finite state entries"):
        strict(lost)


def test_task_observer_keeps_the_last_setpoint_on_a_lost_reading():
    sc = TANK.scenario()
    observer = TaskObserver(TANK, sc)
    obs = np.array([330.0, 10.0, 500.0])  # T, e_T, Q_prev
    first = observer(obs)
    observer.applied(np.array([500.0]))
    with pytest.warns(FallbackWarning, match="TaskObserver: non-finite state entries"):
        seen = observer(np.array([np.nan, np.nan, 500.0]))
    np.testing.assert_array_equal(seen.reference, first.reference)
    expected = TANK.model.step(np.array([330.0]), np.array([500.0]), TANK.plant("nominal"))
    np.testing.assert_array_equal(seen.x, expected)
    assert seen.rejected == 1 and observer.rejected_measurements == 1


# -- PI and the offline policies --------------------------------------------------------------------------

def test_pi_holds_integral_and_output_of_the_loop_that_lost_its_reading():
    env = TaskEnv(ENV, max_steps=10)
    pi = PIController(NOMINAL_TUNING)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        u = pi.act(obs)
        obs, *_ = env.step(u)
    integral = pi.integral.copy()
    lost = obs.copy()
    lost[_Y[1]] = lost[_E_P] = np.nan
    with pytest.warns(FallbackWarning, match="PIController: non-finite setpoint error e_P = nan"):
        held = pi.act(lost)
    assert held[0] == u[0] and pi.integral[0] == integral[0]  # the P loop holds
    assert held[1] != u[1] and pi.integral[1] != integral[1]  # the T loop goes on
    assert pi.held == 1 and pi.episode_report() == {"fallbacks": 1}
    both = obs.copy()
    both[_E_P] = both[_E_T] = np.nan
    np.testing.assert_array_equal(pi.act(both), held)
    assert pi.held == 3 and pi.episode_report() == {"fallbacks": 2}  # loops held; intervals
    pi.act(obs)
    assert pi.episode_report() == {"fallbacks": 2}
    pi.reset()
    assert pi.held == 0 and pi.episode_report() == {"fallbacks": 0}


def test_pi_on_faulty_readings_finishes_the_episode():
    env = TaskEnv(ENV, max_steps=40, faults=SensorFaults(nan_rate=0.05, dropout_rate=0.05))
    pi = PIController(NOMINAL_TUNING)
    obs, _ = env.reset(seed=3)
    with pytest.warns(FallbackWarning, match="PIController"):
        for _ in range(40):
            u = pi.act(obs)
            assert np.all(np.isfinite(u))
            obs, _, term, trunc, _ = env.step(u)
            if term or trunc:
                break
    assert trunc and pi.held >= 1


def test_offline_policy_holds_its_last_action_on_a_non_finite_observation():
    norm = Normalisation(np.zeros(3), np.ones(3), np.array([-1.0, 0.0]), np.array([1.0, 2.0]))
    actor = make_agent("bc", 3, 2, BCConfig(hidden=(8,)), seed=0).actor
    policy = OfflinePolicy(actor, norm)
    with pytest.warns(FallbackWarning, match="held the last action"):
        np.testing.assert_array_equal(policy.act(np.array([np.nan, 0.0, 0.0])), [0.0, 1.0])  # the middle
    a = policy.act(np.ones(3))
    np.testing.assert_array_equal(policy.act(np.array([1.0, np.inf, 1.0])), a)
    batch = policy.act(np.array([[1.0, 1.0, 1.0], [np.nan, 0.0, 0.0]]))
    np.testing.assert_allclose(batch[0], a, rtol=1e-5)  # float32 in a batch of two
    np.testing.assert_array_equal(batch[1], a)  # the held one
    assert policy.held == 3 and policy.episode_report() == {"fallbacks": 3}
    policy.reset()
    assert policy.held == 0 and policy.episode_report() == {"fallbacks": 0}
    with pytest.raises(ValueError, match="observation is not finite"):
        OfflinePolicy(actor, norm, strict=True).act(np.array([np.nan, 0.0, 0.0]))
