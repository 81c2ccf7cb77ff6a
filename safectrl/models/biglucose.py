r"""Blood glucose under insulin and glucagon: a bihormonal Hovorka model, the "BiGlucose" task of RL-ACR.

Hovorka's glucose-insulin model (Hovorka et al., Physiol. Meas. 25, 2004) extended by the glucagon
subsystem of Herrero et al. (J. Diabetes Sci. Technol. 7, 2013), with the parameters of Kalisvaart et al.
(IEEE CCTA 2023), as used by Tian et al. (NeurIPS 2024), appendix B.2, and their public code. Time in
minutes, quantities per kg body weight as in the source::

    G     = Q1 / V_G                                             plasma glucose [mmol/L]
    F01c  = F01 if G >= 4.5 else F01 G / 4.5                     insulin-independent uptake
    F_R   = 0.003 (G - 9) V_G if G >= 9 else 0                   renal clearance
    U_G   = D_G A_g t exp(-t / t_maxG) / t_maxG²                 meal glucose appearance [g/min]
    dQ1/dt = -F01c - x1 Q1 + k12 Q2 - F_R + EGP0 (1 - x3) + 1e3 U_G / (M_g BW) + Y Q1
    dQ2/dt = x1 Q1 - (k12 + x2) Q2
    dx_j/dt = -k_aj x_j + k_bj I                                  j = 1, 2, 3 (insulin action)
    dS1/dt = u_I + u_bI - S1 / t_maxI;   dS2/dt = (S1 - S2) / t_maxI
    dI/dt  = S2 / (V_I t_maxI) - k_e I                           plasma insulin
    dZ1/dt = 1e-6 u_N + u_bN - Z1 / t_maxN;   dZ2/dt = (Z1 - Z2) / t_maxN
    dN/dt  = -k_N (N - N_b) + Z2 / (V_N t_maxN)                  plasma glucagon
    dY/dt  = -p Y + p S_N (N - N_b)                              glucagon action

``u_I`` (insulin) and ``u_N`` (glucagon) are held over 10-minute intervals on top of the basal rates
``u_bI``, ``u_bN``; ``t`` is the time since the meal (= since the episode started).

The task (Tian et al.): start at the steady state with G = 7.7 mmol/L, no glucagon (Z = 0, N = N_b, Y = 0),
the basal insulin being the one that holds that steady state (:func:`with_basal`); 200 intervals. The
measured glucose is 18 G mg/dL. Reward: -10 risk(18 G) with the Magni risk of :mod:`safectrl.models.glucose`,
and 3 more whenever ``u_I >= 0.1``; 18 G outside [10, 1000] mg/dL is a failure. The estimated model differs
from the actual patient in 15 parameters (see :data:`ACTUAL`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import casadi as ca
import numpy as np

from safectrl.models import glucose
from safectrl.models.core import ODEModel
from safectrl.models.task import FailurePenalty, FixedStart, Limit, Task

STATES = ("Q1", "Q2", "x1", "x2", "x3", "S1", "S2", "I", "Z1", "Z2", "N", "Y")
INPUTS = ("u_I", "u_N")

DT = 10.0  # min, control interval
EPISODE_STEPS = 200  # intervals, 2000 min
U_LOW = np.array([0.0, 0.0])  # insulin, glucagon (source units)
U_HIGH = np.array([1.0, 5.0])
MG_DL_PER_MMOL_L = 18.0  # measured glucose = 18 G (the source's conversion)
G_START = 7.7  # mmol/L, glucose of the initial steady state
REWARD_WEIGHT = 10.0  # the reward is -REWARD_WEIGHT * risk
ACTION_PENALTY = 3.0  # reward units, charged when u_I >= ACTION_THRESHOLD
ACTION_THRESHOLD = 0.1
FAILURE_PENALTY = 1e5  # reward units, the failing interval's reward (Tian et al.'s code)
X_SCALE = np.array([1.0, 0.5, 0.05, 0.005, 0.4, 5.0, 5.0, 5.0, 1e-4, 1e-4, 50.0, 0.01])


@dataclass(frozen=True)
class BiGlucoseParams:
    """Parameters of the bihormonal model. Defaults: the *estimated* model of Tian et al.

    ``u_bI`` and ``u_bN`` are the basal rates; :func:`with_basal` sets ``u_bI`` to the one that holds the
    initial steady state of these parameters (as the therapy of the patient would).
    """

    D_G: float = 80.0  # g, carbohydrates of the meal
    V_G: float = 0.14  # L/kg, glucose distribution volume
    k12: float = 0.0968  # 1/min, transfer from the non-accessible to the accessible glucose compartment
    F01: float = 0.0119  # mmol/(kg min), insulin-independent glucose flux
    EGP0: float = 0.0213  # mmol/(kg min), endogenous glucose production at zero insulin
    A_g: float = 0.8  # -, carbohydrate bioavailability
    t_maxG: float = 40.0  # min, time to maximum glucose appearance
    t_maxI: float = 55.0  # min, time to maximum insulin absorption
    V_I: float = 0.12  # L/kg, insulin distribution volume
    k_e: float = 0.138  # 1/min, insulin elimination
    k_a1: float = 0.0088  # 1/min, deactivation of insulin action on transport
    k_a2: float = 0.0302  # 1/min, deactivation of insulin action on disposal
    k_a3: float = 0.0118  # 1/min, deactivation of insulin action on endogenous production
    k_b1: float = 7.5768e-5  # L/(min² mU), activation of insulin action on transport
    k_b2: float = 1.4194e-5  # L/(min² mU), activation of insulin action on disposal
    k_b3: float = 8.5e-4  # L/(min mU), activation of insulin action on endogenous production
    t_maxN: float = 20.59  # min, time to maximum glucagon absorption
    k_N: float = 0.735  # 1/min, glucagon clearance
    V_N: float = 23.46  # mL/kg, glucagon distribution volume
    p: float = 0.074  # 1/min, rate of glucagon action
    S_N: float = 19800.0  # glucagon sensitivity (source units)
    M_g: float = 180.16  # g/mol, molar mass of glucose
    BW: float = 68.5  # kg, body weight
    N_b: float = 48.13  # pg/mL, basal glucagon
    u_bI: float = 0.0  # basal insulin (source units); see with_basal
    u_bN: float = 0.0  # basal glucagon (source units)


def rhs(x, u, p, m, t):
    """dx/dt of the bihormonal model; ``x`` in :data:`STATES` order, ``u = (u_I, u_N)``, ``t`` in min."""
    Q1, Q2, x1, x2, x3, S1, S2, I, Z1, Z2, N, Y = x
    u_I, u_N = u
    G = Q1 / p.V_G
    F01c = m.if_else(G >= 4.5, p.F01, p.F01 * G / 4.5)
    F_R = m.if_else(G >= 9.0, 0.003 * (G - 9.0) * p.V_G, 0.0)
    U_G = p.D_G * p.A_g * t * m.exp(-t / p.t_maxG) / p.t_maxG**2
    return (
        -F01c - x1 * Q1 + p.k12 * Q2 - F_R + p.EGP0 * (1 - x3) + 1e3 * U_G / (p.M_g * p.BW) + Y * Q1,
        x1 * Q1 - (p.k12 + x2) * Q2,
        -p.k_a1 * x1 + p.k_b1 * I,
        -p.k_a2 * x2 + p.k_b2 * I,
        -p.k_a3 * x3 + p.k_b3 * I,
        u_I + p.u_bI - S1 / p.t_maxI,
        (S1 - S2) / p.t_maxI,
        S2 / (p.V_I * p.t_maxI) - p.k_e * I,
        1e-6 * u_N + p.u_bN - Z1 / p.t_maxN,
        (Z1 - Z2) / p.t_maxN,
        -p.k_N * (N - p.N_b) + Z2 / (p.V_N * p.t_maxN),
        -p.p * Y + p.p * p.S_N * (N - p.N_b),
    )


#: 4 RODAS4 substeps per 10-min interval with QR pivoting (the 12x12 Jacobian changes sign pattern with
#: the piecewise terms); tests/test_acr_models.py checks intervals against CVODES.
MODEL = ODEModel(
    name="biglucose",
    states=STATES,
    inputs=INPUTS,
    params_type=BiGlucoseParams,
    rhs=rhs,
    dt=DT,
    x_scale=X_SCALE,
    u_low=U_LOW,
    u_high=U_HIGH,
    substeps=4,
    time_varying=True,
    pivoting=True,
)


def steady_state(params: BiGlucoseParams, G: float = G_START) -> tuple[np.ndarray, float]:
    """The fasting steady state at glucose ``G`` [mmol/L] with no glucagon, and the basal insulin holding it.

    Solves rhs = 0 at t -> infinity (no meal) for (Q2, x1, x2, x3, S1, S2, I, u_bI) by Newton's method, with
    Q1 = G V_G, Z1 = Z2 = 0, N = N_b, Y = 0 and no glucagon infusion.

    Returns:
        The state (12,) and the basal insulin rate u_bI.

    Raises:
        ValueError: if no steady state with non-negative insulin exists for these parameters.
    """
    z = ca.SX.sym("z", 8)  # Q2, x1, x2, x3, S1, S2, I, u_bI
    x = ca.vertcat(G * params.V_G, z[:7], 0.0, 0.0, params.N_b, 0.0)
    p = replace(params, u_bI=0.0, u_bN=0.0)
    # The meal term vanishes for t -> infinity; a large t evaluates it to exactly 0 in double precision.
    xdot = MODEL.rhs_function()(x, ca.vertcat(z[7], 0.0), MODEL.param_vector(p), 1e6)
    residual = xdot[:8] / ca.DM(X_SCALE[:8])
    newton = ca.rootfinder("biglucose_steady_state", "newton", {"x": z, "g": residual},
                           {"abstol": 1e-14, "max_iter": 100, "error_on_fail": False})
    guess = np.array([G * params.V_G, 0.01, 0.01, 0.1, 1.0, 1.0, 0.1, 0.01])
    sol = np.asarray(newton(x0=guess)["x"]).ravel()
    x_ss = np.concatenate([[G * params.V_G], sol[:7], [0.0, 0.0, params.N_b, 0.0]])
    res = np.abs(MODEL.rhs_numpy(x_ss, np.array([sol[7], 0.0]), p, t=1e6) / X_SCALE).max()
    if not newton.stats()["success"] or not np.all(np.isfinite(sol)) or res > 1e-10 or np.any(sol < 0):
        raise ValueError(f"no fasting steady state at G = {G} mmol/L for these parameters (residual {res:.1e})")
    return x_ss, float(sol[7])


def with_basal(params: BiGlucoseParams) -> BiGlucoseParams:
    """``params`` with ``u_bI`` set to the basal insulin of its steady state at G = 7.7 mmol/L."""
    return replace(params, u_bI=steady_state(params)[1], u_bN=0.0)


#: The regulariser's model and the patient it acts on (Tian et al., table 3 and code), each with its basal.
ESTIMATED = with_basal(BiGlucoseParams())
ACTUAL = with_basal(replace(
    BiGlucoseParams(), V_G=0.18, k12=0.0343, F01=0.0121, EGP0=0.0148, k_a1=0.0031, k_a2=0.0752, k_a3=0.0472,
    k_b1=9.114e-6, k_b2=6.768e-6, k_b3=1.89e-3, t_maxN=32.46, k_N=0.62, V_N=16.06, p=0.016, S_N=19600.0,
))


def glucose_mg_dl(x: np.ndarray, params: BiGlucoseParams) -> float:
    """Measured glucose 18 Q1 / V_G [mg/dL]."""
    return float(MG_DL_PER_MMOL_L * x[0] / params.V_G)


def initial_state(params: BiGlucoseParams) -> np.ndarray:
    """The fasting steady state at 7.7 mmol/L of these parameters."""
    return steady_state(params)[0]




def _glucose_output(x, p, m):
    return MG_DL_PER_MMOL_L * x[0] / p.V_G


def stage_cost(x, u, setpoint, p, m):
    """10 risk(18 G) at the interval end plus the insulin dosing penalty: the reward's negative."""
    return (REWARD_WEIGHT * glucose.magni_risk(_glucose_output(x, p, m), m)
            + m.if_else(u[0] >= ACTION_THRESHOLD, ACTION_PENALTY, 0.0))



#: Measured glucose 18 Q1 / V_G outside which the episode fails, mg/dL.
G_LIMIT = Limit("G", low=glucose.G_FAIL_LOW, high=glucose.G_FAIL_HIGH, unit="mg/dL", output=_glucose_output)

#: The BiGlucose task of RL-ACR: env ``safectrl/BiGlucose-v0``, on the actual patient by default.
TASK = Task(
    name="BiGlucose",
    model=MODEL,
    plants={"nominal": ESTIMATED, "actual": ACTUAL, "estimated": ESTIMATED},
    default_plant="actual",
    scenarios={"meal": FixedStart("meal", initial_state, (0.0, 0.0), description="a meal at t = 0")},
    episode_steps=EPISODE_STEPS,
    observations=("G", "dG", "step"),
    obs_low=np.array([0.0, -50.0, 0.0]),
    obs_high=np.array([1000.0, 50.0, np.inf]),
    measure=lambda x, params: (MG_DL_PER_MMOL_L * x[:, 0] / params.V_G)[:, None],
    observe=glucose.observe_glucose,
    stage_cost=stage_cost,
    failure_reward=FailurePenalty(FAILURE_PENALTY),
    limits=(G_LIMIT,),
    failure=(G_LIMIT,),
    time_unit="min",
    units={"Q1": "mmol/kg", "u_I": "-", "u_N": "-"},
    description="glucose after a meal under insulin and glucagon, a bihormonal Hovorka model (Tian et al., 2024)",
)
