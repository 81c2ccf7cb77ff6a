"""Extended Kalman filter on the model's interval function: textbook agreement, the reactor, errors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.linalg import expm

from safectrl.controllers.estimation import EKFConfig, ExtendedKalmanFilter, quasi_steady_state
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.controllers.polycstr_nmpc import EKF_CONFIG, PolyCSTRObserver
from safectrl.models import polycstr as pc
from safectrl.models.core import ODEModel
from safectrl.rl.env import TaskEnv


@dataclass(frozen=True)
class MassSpringParams:
    k: float = 1.0  # 1/s², stiffness over mass
    c: float = 0.3  # 1/s, damping over mass


def mass_spring_rhs(x, u, p, m):
    return (x[1], -p.k * x[0] - p.c * x[1] + u[0])


MASS_SPRING = ODEModel(name="mass_spring", states=("pos", "vel"), inputs=("force",),
                       params_type=MassSpringParams, rhs=mass_spring_rhs, dt=0.5, x_scale=[1.0, 1.0],
                       u_low=[-1.0], u_high=[1.0], substeps=8)
LINEAR_CFG = EKFConfig(measured=("pos",), measurement_std=(0.1,), process_std=(0.01, 0.02),
                       initial_std=(1.0, 1.0))


def test_on_a_linear_model_the_ekf_is_the_textbook_kalman_filter(rng):
    p = MassSpringParams()
    Ac = np.array([[0.0, 1.0], [-p.k, -p.c]])
    Bc = np.array([[0.0], [1.0]])
    # Exact zero-order-hold discretisation.
    M = expm(np.block([[Ac, Bc], [np.zeros((1, 3))]]) * MASS_SPRING.dt)
    A, B = M[:2, :2], M[:2, 2:]
    H = np.array([[1.0, 0.0]])
    Q, R = np.diag([0.01, 0.02]) ** 2, np.array([[0.1**2]])
    x, P = np.array([0.5, -0.2]), np.eye(2)
    ekf = ExtendedKalmanFilter(MASS_SPRING, p, LINEAR_CFG)
    ekf.reset(x)
    for _ in range(25):
        u, y = rng.uniform(-1, 1, 1), rng.normal(0.0, 1.0, 1)
        x, P = A @ x + B @ u, A @ P @ A.T + Q
        K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
        x, P = x + K @ (y - H @ x), (np.eye(2) - K @ H) @ P
        ekf.predict(u)
        ekf.update(y)
    np.testing.assert_allclose(ekf.x, x, atol=1e-7)
    np.testing.assert_allclose(ekf.P, P, atol=1e-7)


def test_quasi_steady_state_recovers_the_steady_states_unmeasured_part():
    ss = pc.steady_state(*pc.HIGH_GRADE)
    x = ss.x.copy()
    x[[1, 2]] = 0.0
    out = quasi_steady_state(pc.MODEL, pc.PolyCSTRParams(), x, ("I", "R"), ss.u)
    np.testing.assert_allclose(out, ss.x, rtol=1e-9)


def test_reactor_filter_finds_the_unmeasured_states_under_pi_control():
    env = TaskEnv(pc.TASK, "startup", noise=True)
    obs, info = env.reset(seed=500_000)
    pi, observer = PIController(NOMINAL_TUNING), PolyCSTRObserver(pc.PolyCSTRParams())
    errors = []
    for _ in range(40):
        seen = observer(obs)
        errors.append(np.abs(seen.x - env.state) / pc.X_SCALE)
        obs, *_ = env.step(pi.act(obs))
    errors = np.array(errors)
    assert errors[0, 1] > 0.3  # the quasi-steady first guess of I is far off in an empty reactor
    assert errors[-10:, 1].max() < 0.02 and errors[-10:, 2].max() < 0.02  # I, R found within 2 %
    P = observer.ekf.P
    np.testing.assert_allclose(P, P.T, rtol=0, atol=1e-12)
    assert np.linalg.eigvalsh(P).min() > 0


def test_estimated_UA_makes_the_mismatched_model_predict_the_plant():
    plant, model = pc.PolyCSTRParams(), pc.mismatched()
    ss = pc.steady_state(*pc.HIGH_GRADE, plant)
    observer = PolyCSTRObserver(model)
    env = TaskEnv(pc.TASK, "grade_down")
    obs, _ = env.reset(seed=500_000)
    for _ in range(60):  # hold the high-grade inputs: the plant stays near its steady state
        observer(obs)
        obs, *_ = env.step(ss.u)
    observer(obs)
    # At steady state the mismatched heat balance closes with UA' = UA + 0.1 dH r_p V / (T - T_c).
    x = env.state
    r_p = plant.k0_p * np.exp(-plant.E_p / (plant.R_g * x[4])) * x[2] * x[0] / plant.MW_A
    ua_equivalent = plant.UA + (model.dH - plant.dH) * r_p * plant.V / (x[4] - ss.u[1])
    assert observer.ekf.theta[0] == pytest.approx(ua_equivalent, rel=0.02)
    assert observer.ekf.x[4] == pytest.approx(x[4], abs=0.01)


@pytest.mark.parametrize("change, message", [
    (dict(measured=("A", "X")), "unknown measured state 'X'"),
    (dict(process_std=(1.0,)), "process_std has 1 values, expected 5"),
    (dict(measurement_std=(1.0, 0.0, 1.0)), "measurement_std must be positive"),
    (dict(estimated_params=("UB",)), "unknown parameter 'UB'"),
    (dict(lower=(0.0,)), "lower has 1 values, expected 5"),
])
def test_bad_filter_configuration_is_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        ExtendedKalmanFilter(pc.MODEL, pc.PolyCSTRParams(), replace(EKF_CONFIG, **change))


def test_filter_needs_an_initial_estimate_and_checks_measurements():
    ekf = ExtendedKalmanFilter(MASS_SPRING, MassSpringParams(), LINEAR_CFG)
    with pytest.raises(RuntimeError, match="call reset"):
        ekf.predict(np.zeros(1))
    ekf.reset(np.zeros(2))
    with pytest.raises(ValueError, match="measurement must have shape"):
        ekf.update(np.zeros(2))
    with pytest.raises(ValueError, match="initial estimate must be finite"):
        ekf.reset(np.array([np.nan, 0.0]))
