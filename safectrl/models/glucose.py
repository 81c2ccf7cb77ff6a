r"""Blood glucose after a meal: Bergman's minimal model, the "Glucose" task of RL-ACR.

The minimal model of glucose-insulin dynamics (Bergman et al., Am. J. Physiol. 236, 1979) with an
exponentially decaying meal disturbance, as used by Tian et al., "Reinforcement learning with adaptive
control regularization for safe control of critical systems" (NeurIPS 2024), appendix B.1, and their public
code. Time in minutes::

    dG/dt = -p1 (G - Gb) - G X + D0 exp(-0.01 t)      plasma glucose           [mg/dL]
    dX/dt = -p2 X + p3 (I - Ib)                       remote insulin action    [1/min]
    dI/dt = -n (I - Ib) + u                           plasma insulin           [uU/mL]

``u`` is the insulin infusion [uU/(mL min)], held over 10-minute intervals; ``t`` is the time since the meal,
which is also the time since the episode started.

The task (Tian et al.): start at (G, X, I) = (Gb, 0, Ib) = (138, 0, 7), 100 intervals (1000 min). Reward per
interval: minus the Magni risk of the glucose at the end of the interval (Fox et al., MLHC 2020),
``risk(G) = (3.35506 ((ln G)^0.8353 - 3.7932))²`` (zero near 140 mg/dL, steep towards hypoglycaemia), and
2 more whenever ``u >= 0.1``. G < 10 or G > 1000 mg/dL is a failure (hypo-/hyperglycaemia) and ends the
episode. The estimated model (the regulariser's) and the actual patient differ in n, p2 and p3.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from safectrl.models.core import ODEModel
from safectrl.models.mathns import NUMPY, MathNamespace
from safectrl.models.task import FailurePenalty, FixedStart, Limit, Task

STATES = ("G", "X", "I")
INPUTS = ("u",)

DT = 10.0  # min, control interval
EPISODE_STEPS = 100  # intervals, 1000 min
U_LOW = np.array([0.0])  # uU/(mL min)
U_HIGH = np.array([2.0])
G_FAIL_LOW = 10.0  # mg/dL, below: severe hypoglycaemia, the episode fails
G_FAIL_HIGH = 1000.0  # mg/dL, above: severe hyperglycaemia, the episode fails
ACTION_PENALTY = 2.0  # reward units, charged when u >= ACTION_THRESHOLD
ACTION_THRESHOLD = 0.1  # uU/(mL min)
FAILURE_PENALTY = 1e5  # reward units, the failing interval's reward (Tian et al.'s code)
X_SCALE = np.array([140.0, 0.01, 10.0])  # nominal magnitude of G, X, I


@dataclass(frozen=True)
class GlucoseParams:
    """Parameters of the minimal model. Defaults: the *estimated* model of Tian et al."""

    Gb: float = 138.0  # mg/dL, basal glucose
    Ib: float = 7.0  # uU/mL, basal insulin
    n: float = 0.2814  # 1/min, insulin clearance
    p1: float = 0.0  # 1/min, insulin-independent glucose uptake
    p2: float = 0.0142  # 1/min, decay of remote insulin action
    p3: float = 15e-6  # mL/(uU min²), gain of remote insulin action
    D0: float = 4.0  # mg/(dL min), meal glucose appearance at t = 0


#: The regulariser's model and the patient it acts on (Tian et al., table 2).
ESTIMATED = GlucoseParams()
ACTUAL = replace(ESTIMATED, n=0.2, p2=0.005, p3=5e-6)


def rhs(x, u, p, m, t):
    """dx/dt of the minimal model; ``x = (G, X, I)``, ``u = (u,)``, ``t`` in min since the meal."""
    G, X, I = x
    (u_ins,) = u
    return (
        -p.p1 * (G - p.Gb) - G * X + p.D0 * m.exp(-0.01 * t),
        -p.p2 * X + p.p3 * (I - p.Ib),
        -p.n * (I - p.Ib) + u_ins,
    )


#: 4 RODAS4 substeps per 10-min interval: the fastest mode (insulin clearance, 1/n = 3.6 min) is mildly
#: stiff at this step; tests/test_acr_models.py checks the interval against CVODES.
MODEL = ODEModel(
    name="glucose",
    states=STATES,
    inputs=INPUTS,
    params_type=GlucoseParams,
    rhs=rhs,
    dt=DT,
    x_scale=X_SCALE,
    u_low=U_LOW,
    u_high=U_HIGH,
    substeps=4,
    time_varying=True,
)


def magni_risk(G, m: MathNamespace = NUMPY):
    """Magni risk of glucose ``G`` [mg/dL] (Fox et al. 2020); G must be > 1. Any math namespace."""
    return (3.35506 * (m.log(G) ** 0.8353 - 3.7932)) ** 2


def initial_state(params: GlucoseParams) -> np.ndarray:
    """(G, X, I) at the start of the episode: basal glucose and insulin, no remote insulin action."""
    return np.array([params.Gb, 0.0, params.Ib])




def observe_glucose(y, y_prev, u_prev, step, setpoint) -> np.ndarray:
    """Observation of both glucose tasks: measured glucose, its change over the last interval, the step."""
    return np.column_stack([y[:, 0], y[:, 0] - y_prev[:, 0], step])


def stage_cost(x, u, setpoint, p, m):
    """Magni risk of G at the interval end plus the dosing penalty: the reward's negative."""
    return magni_risk(x[0], m) + m.if_else(u[0] >= ACTION_THRESHOLD, ACTION_PENALTY, 0.0)



#: Glucose range outside which the episode fails, mg/dL.
G_LIMIT = Limit("G", low=G_FAIL_LOW, high=G_FAIL_HIGH, unit="mg/dL")

#: The Glucose task of RL-ACR: env ``safectrl/Glucose-v0``, on the actual patient by default.
TASK = Task(
    name="Glucose",
    model=MODEL,
    plants={"nominal": ESTIMATED, "actual": ACTUAL, "estimated": ESTIMATED},
    default_plant="actual",
    scenarios={"meal": FixedStart("meal", initial_state, (0.0,), description="a meal at t = 0")},
    episode_steps=EPISODE_STEPS,
    observations=("G", "dG", "step"),
    obs_low=np.array([0.0, -50.0, 0.0]),
    obs_high=np.array([1000.0, 50.0, np.inf]),
    measure=lambda x, params: x[:, :1],
    observe=observe_glucose,
    stage_cost=stage_cost,
    failure_reward=FailurePenalty(FAILURE_PENALTY),
    limits=(G_LIMIT,),
    failure=(G_LIMIT,),
    time_unit="min",
    units={"G": "mg/dL", "X": "1/min", "I": "uU/mL", "u": "uU/(mL min)"},
    description="glucose after a meal under insulin, Bergman's minimal model (Tian et al., 2024)",
)
