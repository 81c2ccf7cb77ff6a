r"""The cart-pole with a continuous force: the "Cart Pole" task of RL-ACR.

The classic equations of Gymnasium's ``CartPoleEnv`` (Barto, Sutton & Anderson, 1983, as corrected by
Florian, 2007), driven by a continuous force instead of ±10 N, as in Tian et al. (NeurIPS 2024),
appendix B.4. Time in seconds::

    temp     = (F + m_p l theta_dot² sin theta) / (m_c + m_p)
    theta_dd = (g sin theta - cos theta temp) / (l (4/3 - m_p cos² theta / (m_c + m_p)))
    x_dd     = temp - m_p l theta_dd cos theta / (m_c + m_p)

``l`` is half the pole's length. The plant *is* its discretisation: one explicit Euler step of 0.02 s per
interval, in the order of Gymnasium's ``kinematics_integrator="euler"`` (positions advance with the old
velocities). The force ``F`` = 10 a N for the paper's action a in [-1, 1].

The task (Tian et al.): start at (x, x_dot, theta, theta_dot) = (0, 0, 6°, 0), 250 intervals (5 s). Reward
``-1000 theta² - max(0, |x| - 0.25)``; |x| > 4.8 m or |theta| > 12° is a failure. The estimated model has
Gymnasium's masses and length, the actual plant a lighter cart and a heavier, longer pole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from safectrl.models.core import ODEModel
from safectrl.models.task import FailurePenalty, FixedStart, Limit, Task, measure_state, observe_measurement

STATES = ("x", "x_dot", "theta", "theta_dot")
INPUTS = ("F",)

DT = 0.02  # s, control interval (Gymnasium's tau)
EPISODE_STEPS = 250  # intervals, 5 s
FORCE_MAX = 10.0  # N, Gymnasium's force_mag
U_LOW = np.array([-FORCE_MAX])  # N
U_HIGH = np.array([FORCE_MAX])
X_FAIL = 4.8  # m, the cart leaves its rail beyond
THETA_FAIL = 12.0 * math.pi / 180.0  # rad, the pole has fallen beyond
FAILURE_PENALTY = 1e4  # reward units, the failing interval's reward (Tian et al.'s code)
X_SCALE = np.array([1.0, 1.0, 0.1, 1.0])
X0 = np.array([0.0, 0.0, 6.0 * math.pi / 180.0, 0.0])


@dataclass(frozen=True)
class CartPoleParams:
    """Masses and length of the cart-pole. Defaults: Gymnasium's, the *estimated* model."""

    gravity: float = 9.8  # m/s²
    masscart: float = 1.0  # kg
    masspole: float = 0.1  # kg
    length: float = 0.5  # m, half the pole's length


ESTIMATED = CartPoleParams()
ACTUAL = replace(ESTIMATED, masscart=0.8, masspole=0.3, length=0.6)


def rhs(x, u, p, m):
    """dx/dt of the cart-pole; ``x = (x, x_dot, theta, theta_dot)``, ``u = (F,)`` in N."""
    _, x_dot, theta, theta_dot = x
    (force,) = u
    total_mass = p.masscart + p.masspole
    polemass_length = p.masspole * p.length
    cos_t, sin_t = m.cos(theta), m.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin_t) / total_mass
    theta_acc = (p.gravity * sin_t - cos_t * temp) / (
        p.length * (4.0 / 3.0 - p.masspole * cos_t**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos_t / total_mass
    return (x_dot, x_acc, theta_dot, theta_acc)


#: One explicit Euler step per interval: the plant's own definition (Gymnasium's integrator).
MODEL = ODEModel(
    name="cartpole",
    states=STATES,
    inputs=INPUTS,
    params_type=CartPoleParams,
    rhs=rhs,
    dt=DT,
    x_scale=X_SCALE,
    u_low=U_LOW,
    u_high=U_HIGH,
    substeps=1,
    integrator="euler",
)


def initial_state(params: CartPoleParams) -> np.ndarray:
    """The pole tilted by 6°, everything at rest (independent of the parameters)."""
    return X0.copy()




def stage_cost(x, u, setpoint, p, m):
    """1000 theta² + max(0, |x| - 0.25) at the interval end: the reward's negative."""
    return 1000.0 * x[2] ** 2 + m.fmax(0.0, m.fabs(x[0]) - 0.25)



#: The cart on its rail and the pole up.
SAFE_SET = (Limit("x", low=-X_FAIL, high=X_FAIL, unit="m"), Limit("theta", low=-THETA_FAIL, high=THETA_FAIL, unit="rad"))

#: The Cart Pole task of RL-ACR: env ``safectrl/CartPoleContinuous-v0``, on the actual plant by default.
TASK = Task(
    name="CartPole",
    model=MODEL,
    plants={"nominal": ESTIMATED, "actual": ACTUAL, "estimated": ESTIMATED},
    default_plant="actual",
    scenarios={"balance": FixedStart("balance", initial_state, (0.0,), description="the pole tilted by 6°")},
    episode_steps=EPISODE_STEPS,
    observations=STATES,
    obs_low=-np.array([X_FAIL, 3.1, THETA_FAIL, 5.0]),
    obs_high=np.array([X_FAIL, 3.1, THETA_FAIL, 5.0]),
    measure=measure_state,
    observe=observe_measurement,
    stage_cost=stage_cost,
    failure_reward=FailurePenalty(FAILURE_PENALTY),
    limits=SAFE_SET,
    failure=SAFE_SET,
    time_unit="s",
    units={"x": "m", "x_dot": "m/s", "theta": "rad", "theta_dot": "rad/s", "F": "N"},
    description="the cart-pole driven by a continuous force (Tian et al., 2024)",
)
