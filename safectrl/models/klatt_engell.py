r"""The Klatt–Engell (Van de Vusse) CSTR of do-mpc's CSTR example: the "CSTR" task of RL-ACR.

A jacketed reactor with the Van de Vusse reactions A -> B -> C and 2 A -> D (Klatt & Engell, 1998), in the
form and with the parameters of do-mpc's CSTR example (Fiedler et al., Control Eng. Pract. 140, 2023;
``examples/CSTR/template_model.py``), as used by Tian et al. (NeurIPS 2024), appendix B.3. Time in hours,
temperatures in °C::

    k1 = beta K0_ab exp(-E_ab / (T_R + 273.15))
    k2 = K0_bc exp(-E_bc / (T_R + 273.15))
    k3 = K0_ad exp(-alpha E_ad / (T_R + 273.15))
    dC_a/dt = F (C_A0 - C_a) - k1 C_a - k3 C_a²
    dC_b/dt = -F C_b + k1 C_a - k2 C_b
    dT_R/dt = (k1 C_a H_ab + k2 C_b H_bc + k3 C_a² H_ad) / (-rho Cp) + F (T_in - T_R)
              + K_w A_R (T_K - T_R) / (rho Cp V_R)
    dT_K/dt = (Q_dot + K_w A_R (T_R - T_K)) / (m_k Cp_k)

``F`` is the feed per reactor volume [1/h] (do-mpc's "flow") and ``Q_dot`` the heat flow into the jacket
[kJ/h], held over intervals of 0.005 h (18 s). The uncertain kinetic factors alpha and beta are 1 in the
estimated model and (1.05, 1.1) in the actual plant (Tian et al.; do-mpc's scenario values).

The task (Tian et al.): start at do-mpc's initial state (0.8, 0.5, 134.14, 130.0), 300 intervals (1.5 h);
reward ``-(100 (C_b - 0.6))²``; C_a or C_b outside [0.1, 2] mol/L, T_R outside [50, 200] °C or T_K outside
[50, 150] °C is a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from safectrl.models.core import ODEModel
from safectrl.models.task import FailurePenalty, FixedStart, Limit, Task, measure_state, observe_measurement

STATES = ("C_a", "C_b", "T_R", "T_K")
INPUTS = ("F", "Q_dot")

DT = 0.005  # h, control interval
EPISODE_STEPS = 300  # intervals, 1.5 h
U_LOW = np.array([5.0, -8500.0])  # F [1/h], Q_dot [kJ/h]
U_HIGH = np.array([100.0, 0.0])
C_B_REF = 0.6  # mol/L, product concentration to hold
STATE_LOW = np.array([0.1, 0.1, 50.0, 50.0])  # failure below (mol/L, mol/L, °C, °C)
STATE_HIGH = np.array([2.0, 2.0, 200.0, 150.0])  # failure above
FAILURE_PENALTY = 1e4  # reward units, the failing interval's reward (Tian et al.'s code)
X_SCALE = np.array([1.0, 1.0, 100.0, 100.0])
X0 = np.array([0.8, 0.5, 134.14, 130.0])  # do-mpc's initial state


@dataclass(frozen=True)
class KlattEngellParams:
    """Parameters of do-mpc's CSTR example. Defaults: the *estimated* model (alpha = beta = 1)."""

    alpha: float = 1.0  # -, uncertain factor on the activation energy of A -> D
    beta: float = 1.0  # -, uncertain factor on the rate of A -> B
    K0_ab: float = 1.287e12  # 1/h, pre-exponential factor of A -> B
    K0_bc: float = 1.287e12  # 1/h, pre-exponential factor of B -> C
    K0_ad: float = 9.043e9  # L/(mol h), pre-exponential factor of 2 A -> D
    E_ab: float = 9758.3  # K, activation temperature of A -> B
    E_bc: float = 9758.3  # K, activation temperature of B -> C
    E_ad: float = 8560.0  # K, activation temperature of 2 A -> D
    H_ab: float = 4.2  # kJ/mol A, reaction enthalpy of A -> B
    H_bc: float = -11.0  # kJ/mol B, reaction enthalpy of B -> C (exothermic)
    H_ad: float = -41.85  # kJ/mol A, reaction enthalpy of 2 A -> D (exothermic)
    rho: float = 0.9342  # kg/L, density
    Cp: float = 3.01  # kJ/(kg K), heat capacity of the contents
    Cp_k: float = 2.0  # kJ/(kg K), heat capacity of the coolant
    A_R: float = 0.215  # m², jacket area
    V_R: float = 10.01  # L, reactor volume
    m_k: float = 5.0  # kg, coolant mass
    T_in: float = 130.0  # °C, feed temperature
    K_w: float = 4032.0  # kJ/(h m² K), jacket heat-transfer coefficient
    C_A0: float = 5.1  # mol/L, feed concentration of A ((5.7 + 4.5) / 2 in do-mpc)


ESTIMATED = KlattEngellParams()
ACTUAL = replace(ESTIMATED, alpha=1.05, beta=1.1)


def rhs(x, u, p, m):
    """dx/dt of the reactor; ``x = (C_a, C_b, T_R, T_K)``, ``u = (F, Q_dot)``."""
    C_a, C_b, T_R, T_K = x
    F, Q_dot = u
    k1 = p.beta * p.K0_ab * m.exp(-p.E_ab / (T_R + 273.15))
    k2 = p.K0_bc * m.exp(-p.E_bc / (T_R + 273.15))
    k3 = p.K0_ad * m.exp(-p.alpha * p.E_ad / (T_R + 273.15))
    return (
        F * (p.C_A0 - C_a) - k1 * C_a - k3 * C_a**2,
        -F * C_b + k1 * C_a - k2 * C_b,
        (k1 * C_a * p.H_ab + k2 * C_b * p.H_bc + k3 * C_a**2 * p.H_ad) / (-p.rho * p.Cp)
        + F * (p.T_in - T_R) + p.K_w * p.A_R * (T_K - T_R) / (p.rho * p.Cp * p.V_R),
        (Q_dot + p.K_w * p.A_R * (T_R - T_K)) / (p.m_k * p.Cp_k),
    )


#: 4 RODAS4 substeps per 18-s interval (the fastest mode, the jacket, relaxes in ~40 s).
MODEL = ODEModel(
    name="klatt_engell",
    states=STATES,
    inputs=INPUTS,
    params_type=KlattEngellParams,
    rhs=rhs,
    dt=DT,
    x_scale=X_SCALE,
    u_low=U_LOW,
    u_high=U_HIGH,
    substeps=4,
)


def initial_state(params: KlattEngellParams) -> np.ndarray:
    """do-mpc's initial state (independent of the parameters)."""
    return X0.copy()




def stage_cost(x, u, setpoint, p, m):
    """(100 (C_b - C_b,ref))² at the interval end: the reward's negative."""
    return (100.0 * (x[1] - setpoint[0])) ** 2



_UNITS = ("mol/L", "mol/L", "°C", "°C")
#: The safe set: every state inside its range.
SAFE_SET = tuple(Limit(s, low=lo, high=hi, unit=unit) for s, lo, hi, unit in zip(STATES, STATE_LOW, STATE_HIGH, _UNITS))

#: The CSTR task of RL-ACR: env ``safectrl/KlattEngellCSTR-v0``, on the actual plant by default.
TASK = Task(
    name="CSTR",
    model=MODEL,
    plants={"nominal": ESTIMATED, "actual": ACTUAL, "estimated": ESTIMATED},
    default_plant="actual",
    scenarios={"hold": FixedStart("hold", initial_state, (U_LOW[0], 0.0), setpoint=(C_B_REF,),
                                  description="hold C_b at 0.6 mol/L from do-mpc's initial state")},
    episode_steps=EPISODE_STEPS,
    observations=STATES,
    obs_low=STATE_LOW.copy(),
    obs_high=STATE_HIGH.copy(),
    measure=measure_state,
    observe=observe_measurement,
    stage_cost=stage_cost,
    failure_reward=FailurePenalty(FAILURE_PENALTY),
    limits=SAFE_SET,
    failure=SAFE_SET,
    setpoint_names=("C_b",),
    time_unit="h",
    units={"C_a": "mol/L", "C_b": "mol/L", "T_R": "°C", "T_K": "°C", "F": "1/h", "Q_dot": "kJ/h"},
    description="the Klatt-Engell (Van de Vusse) CSTR of do-mpc's example (Tian et al., 2024)",
)
