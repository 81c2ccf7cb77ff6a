r"""Exothermic free-radical solution polymerisation in a 1 m³ jacketed CSTR.

Monomer and initiator molecular weights match methyl methacrylate and AIBN. Equations and nominal values
are those of the public precursor environment of Durkin et al., "Safe deployment of offline RL via input
convex action correction" (arXiv:2507.22640, 2025), with one correction: the radical balance keeps the
outflow term -D R. SI units, time in seconds::

    F   = (f_I + W_A + W_s) / (3600 rho)              volumetric throughput        [m³/s]
    D   = F / V                                       dilution rate                [1/s]
    k_j = k0_j exp(-E_j / (R_g T)),  j in {d, p, t}
    r_d = k_d I / MW_I                                initiator decomposition      [mol/(m³ s)]
    r_p = k_p R A / MW_A                              propagation                  [mol/(m³ s)]
    r_t = k_t R²                                      termination                  [mol/(m³ s)]

    dA/dt = W_A / (3600 V) - D A - MW_A r_p
    dI/dt = f_I / (3600 V) - D I - MW_I r_d
    dR/dt = 2 r_d - 2 r_t - D R
    dP/dt = MW_A r_p - D P
    dT/dt = (dH r_p V - UA (T - T_c) + rho c_p F (T_feed - T)) / (rho c_p V)

Inputs are held over a control interval of 1800 s; F uses the input applied during the interval.

The radicals are the stiff mode (they relax in 1/(4 k_t R + D), ~30 s at the operating point). Their
quasi-steady-state form, :data:`DAE`, keeps these lines and makes R algebraic, an index-1 DAE::

    0 = 2 r_d - 2 r_t - D R                           R algebraic; A, I, P, T differential

Its one positive root is what Newton's method reaches from any R >= 0 (the residual is concave and
decreasing in R >= 0). The reduction is accurate only while R relaxes fast against the changes of its
quasi-steady value: through a grade change it is 1e-3 off on P; in a startup from an empty reactor (R = 0,
so the relaxation time starts at 1/D ~ 5.5 h) it over-predicts the radicals of the first hours and with
them P, by 22 % after the first interval (``docs/decisions.md#reactor-dae``).

The operating scenarios (startup, grade changes between P = 100 and 70 kg/m³ at T = 350 K) and the operating
limits (T <= 365 K, runaway at 400 K) are defined at the end of this module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import casadi as ca
import numpy as np

from safectrl.models.core import ODEModel
from safectrl.models.task import Limit, Task

STATES = ("A", "I", "R", "P", "T")
INPUTS = ("f_I", "T_c")
#: Observation layout of the environment and of every controller that reads it (physical units).
OBSERVATIONS = ("A", "P", "T", "e_P", "e_T", "f_I_prev", "T_c_prev")

DT = 1800.0  # s, control interval
EPISODE_STEPS = 200  # intervals, 100 h
U_LOW = np.array([0.0, 300.0])  # f_I [kg/h], T_c [K]
U_HIGH = np.array([2.5, 350.0])
T_MAX = 365.0  # K, hard operating limit: an interval ending above it is a violation
T_RUNAWAY = 400.0  # K, thermal runaway: the episode fails
X_SCALE = np.array([500.0, 10.0, 1e-6, 100.0, 350.0])  # nominal magnitude of A, I, R, P, T


@dataclass(frozen=True)
class PolyCSTRParams:
    """Physical parameters of the reactor. Mismatch is a visible ``replace(plant, UA=0.8 * plant.UA)``."""

    R_g: float = 8.314  # J/(mol K), gas constant
    rho: float = 1000.0  # kg/m³, density (constant)
    c_p: float = 2000.0  # J/(kg K), heat capacity
    UA: float = 500.0  # W/K, jacket heat-transfer coefficient times area
    V: float = 1.0  # m³, reactor volume
    W_A: float = 100.0  # kg/h, monomer feed
    W_s: float = 80.0  # kg/h, solvent feed
    T_feed: float = 350.0  # K, feed temperature
    dH: float = 100e3  # J/mol, heat released per mol propagated (exothermic, enters as +)
    MW_A: float = 0.100  # kg/mol, monomer molecular weight
    MW_I: float = 0.165  # kg/mol, initiator molecular weight
    k0_d: float = 1e9  # 1/s, initiator decomposition pre-exponential factor
    E_d: float = 125e3  # J/mol, initiator decomposition activation energy
    k0_p: float = 4e4  # m³/(mol s), propagation pre-exponential factor
    E_p: float = 25e3  # J/mol, propagation activation energy
    k0_t: float = 1e6  # m³/(mol s), termination pre-exponential factor
    E_t: float = 15e3  # J/mol, termination activation energy


def rhs(x, u, p, m):
    """dx/dt of the reactor; ``x = (A, I, R, P, T)``, ``u = (f_I, T_c)``, ``m`` a math namespace."""
    A, I, R, P, T = x
    f_I, T_c = u
    F = (f_I + p.W_A + p.W_s) / (3600 * p.rho)
    D = F / p.V
    k_d = p.k0_d * m.exp(-p.E_d / (p.R_g * T))
    k_p = p.k0_p * m.exp(-p.E_p / (p.R_g * T))
    k_t = p.k0_t * m.exp(-p.E_t / (p.R_g * T))
    r_d = k_d * I / p.MW_I
    r_p = k_p * R * A / p.MW_A
    r_t = k_t * R**2
    return (
        p.W_A / (3600 * p.V) - D * A - p.MW_A * r_p,
        f_I / (3600 * p.V) - D * I - p.MW_I * r_d,
        2 * r_d - 2 * r_t - D * R,
        p.MW_A * r_p - D * P,
        (p.dH * r_p * p.V - p.UA * (T - T_c) + p.rho * p.c_p * F * (p.T_feed - T)) / (p.rho * p.c_p * p.V),
    )


#: The reactor as an :class:`~safectrl.models.core.ODEModel`: 16 RODAS4 substeps per 1800 s interval, and
#: in simulation 4 first, kept where their error estimate is at most 3e-6 (accuracy and cost:
#: ``docs/decisions.md#integrator``).
MODEL = ODEModel(
    name="polycstr",
    states=STATES,
    inputs=INPUTS,
    params_type=PolyCSTRParams,
    rhs=rhs,
    dt=DT,
    x_scale=X_SCALE,
    u_low=U_LOW,
    u_high=U_HIGH,
    substeps=16,
    coarse_substeps=4,
    coarse_tol=3e-6,
)

#: The reactor with the radicals in quasi-steady state (R algebraic): a
#: :class:`~safectrl.models.core.DAEModel` of :data:`MODEL`'s rhs, integrated by IDAS or collocation.
#: The env, vector env and NMPC use :data:`MODEL`; ODE against DAE: ``docs/decisions.md#reactor-dae``.
DAE = MODEL.dae(("R",))


def mismatched(plant: PolyCSTRParams = PolyCSTRParams(), UA: float = 0.8, dH: float = 1.1) -> PolyCSTRParams:
    """``plant`` with UA and dH multiplied by the given factors (default: UA -20 %, dH +10 %)."""
    return replace(plant, UA=UA * plant.UA, dH=dH * plant.dH)


@dataclass(frozen=True)
class SteadyState:
    """An operating point: full state and the inputs that hold it."""

    x: np.ndarray  # (A, I, R, P, T), physical units
    u: np.ndarray  # (f_I, T_c)


@functools.lru_cache(maxsize=64)
def steady_state(P: float, T: float, params: PolyCSTRParams = PolyCSTRParams()) -> SteadyState:
    """The inputs and full state that hold the reactor at polymer concentration ``P`` and temperature ``T``.

    Solves rhs(x, u) = 0 for (A, I, R, f_I, T_c) by Newton's method on the CasADi right-hand side.

    Args:
        P: polymer concentration, kg/m³.
        T: reactor temperature, K.
        params: reactor parameters.

    Raises:
        ValueError: if Newton's method fails or the inputs needed lie outside their bounds.
    """
    unknown_scale = np.array([X_SCALE[0], X_SCALE[1], X_SCALE[2], 1.0, 350.0])
    z = ca.SX.sym("z", 5)  # scaled (A, I, R, f_I, T_c)
    v = z * ca.DM(unknown_scale)
    x = ca.vertcat(v[0], v[1], v[2], P, T)
    u = ca.vertcat(v[3], v[4])
    residual = MODEL.rhs_function()(x, u, MODEL.param_vector(params)) / ca.DM(X_SCALE)
    newton = ca.rootfinder(
        "polycstr_steady_state", "newton", {"x": z, "g": residual}, {"abstol": 1e-14, "max_iter": 100,
                                                                      "error_on_fail": False}
    )
    guess = np.array([450.0, 5.0, 1.2e-6, 1.0, 340.0]) / unknown_scale
    sol = np.asarray(newton(x0=guess)["x"]).ravel() * unknown_scale
    res = np.abs(np.asarray(ca.Function("r", [z], [residual])(sol / unknown_scale))).max()
    if not newton.stats()["success"] or not np.all(np.isfinite(sol)) or res > 1e-9 or np.any(sol[:3] < 0):
        raise ValueError(f"no steady state found at P={P} kg/m³, T={T} K (Newton residual {res:.2e})")
    x_ss = np.array([sol[0], sol[1], sol[2], P, T])
    u_ss = sol[3:]
    if np.any(u_ss < U_LOW - 1e-9) or np.any(u_ss > U_HIGH + 1e-9):
        raise ValueError(
            f"steady state at P={P} kg/m³, T={T} K needs f_I={u_ss[0]:.3f} kg/h, T_c={u_ss[1]:.2f} K, "
            f"outside the input bounds f_I in [{U_LOW[0]}, {U_HIGH[0]}], T_c in [{U_LOW[1]}, {U_HIGH[1]}]"
        )
    x_ss.flags.writeable = False
    u_ss.flags.writeable = False
    return SteadyState(x=x_ss, u=u_ss)


# -- operating scenarios ---------------------------------------------------------------------------------

HIGH_GRADE = (100.0, 350.0)  # (P kg/m³, T K)
LOW_GRADE = (70.0, 350.0)


@dataclass(frozen=True)
class MeasurementNoise:
    """1-sigma measurement noise on the observed A, P, T (the values of the authors' later paper)."""

    A: float = 2.0  # kg/m³
    P: float = 0.5  # kg/m³
    T: float = 0.2  # K


@dataclass(frozen=True)
class Scenario:
    """An operating task: where the reactor starts, where it must go, and what was applied before.

    ``start_grade`` is None for the startup from an empty reactor; otherwise the reactor starts at the
    (perturbed) steady state of that grade and the previous input is that steady state's input.
    """

    name: str
    setpoint: tuple[float, float]  # (P_sp kg/m³, T_sp K)
    start_grade: tuple[float, float] | None
    description: str = field(default="", compare=False)

    def initial(self, rng: np.random.Generator, params: PolyCSTRParams) -> tuple[np.ndarray, np.ndarray]:
        """Sample the initial state and the previous input, both in physical units.

        The draws happen in a fixed order so that the same generator state gives the same start.
        """
        if self.start_grade is None:
            A0 = 440.0 * rng.uniform(0.75, 1.25)
            T0 = 350.0 + rng.uniform(-5.0, 5.0)
            return np.array([A0, 0.0, 0.0, 0.0, T0]), np.array([1.0, 345.0])
        ss = steady_state(*self.start_grade, params)
        x0 = ss.x.copy()
        x0[0] *= rng.uniform(0.98, 1.02)
        x0[1] *= rng.uniform(0.98, 1.02)
        x0[4] += rng.uniform(-1.0, 1.0)
        return x0, ss.u.copy()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("startup", HIGH_GRADE, None, "empty reactor (no polymer) to the high grade"),
        Scenario("grade_down", LOW_GRADE, HIGH_GRADE, "high grade (P=100) to low grade (P=70)"),
        Scenario("grade_up", HIGH_GRADE, LOW_GRADE, "low grade (P=70) to high grade (P=100)"),
    )
}


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; a ValueError lists the valid names otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid scenarios: {', '.join(SCENARIOS)}") from None


# -- the task ------------------------------------------------------------------------------------------------

#: Indices of the measured states, an array (``take`` converts a list on every call).
_MEASURED = np.array([STATES.index(s) for s in ("A", "P", "T")])


def measure(x: np.ndarray, params: PolyCSTRParams) -> np.ndarray:
    """What the sensors read: A, P, T, shape (n, 3)."""
    return x.take(_MEASURED, axis=1)


def observe(y, y_prev, u_prev, step, setpoint) -> np.ndarray:
    """Observation :data:`OBSERVATIONS` from the measured A, P, T, the setpoint and the previous input."""
    return np.concatenate([y, setpoint - y[:, 1:3], u_prev], axis=1)


def stage_cost(x, u, setpoint, p, m):
    """(P_sp - P)² + (T_sp - T)² at the end of an interval: the reward's negative."""
    return (setpoint[0] - x[3]) ** 2 + (setpoint[1] - x[4]) ** 2


def failure_reward(cost: np.ndarray, remaining: np.ndarray, setpoint: np.ndarray) -> np.ndarray:
    """A runaway is charged every remaining interval at least the runaway's tracking cost (T_runaway -
    T_sp)², so that failing early can never pay off against staying in operation."""
    floor = (T_RUNAWAY - setpoint[:, 1]) ** 2
    stage = np.where(np.isfinite(cost), np.maximum(cost, floor), floor)
    return -stage * remaining


#: The polymerisation CSTR as a task: env ``safectrl/PolyCSTR-v0``; the actual plant is :func:`mismatched`.
TASK = Task(
    name="PolyCSTR",
    model=MODEL,
    plants={"nominal": PolyCSTRParams(), "actual": mismatched(), "mismatch": mismatched()},
    scenarios=SCENARIOS,
    episode_steps=EPISODE_STEPS,
    observations=OBSERVATIONS,
    obs_low=np.array([-50.0, -50.0, 200.0, -1000.0, -500.0, U_LOW[0], U_LOW[1]]),
    obs_high=np.array([1000.0, 1000.0, 700.0, 1000.0, 500.0, U_HIGH[0], U_HIGH[1]]),
    measure=measure,
    measurement_std=(MeasurementNoise().A, MeasurementNoise().P, MeasurementNoise().T),
    observe=observe,
    stage_cost=stage_cost,
    failure_reward=failure_reward,
    limits=(Limit("T", high=T_MAX, unit="K"),),
    failure=(Limit("T", high=T_RUNAWAY, unit="K"),),
    setpoint_names=("P", "T"),
    time_unit="s",
    units={"A": "kg/m³", "I": "kg/m³", "R": "mol/m³", "P": "kg/m³", "T": "K", "f_I": "kg/h", "T_c": "K"},
    description="exothermic free-radical polymerisation in a jacketed CSTR (Durkin et al., 2025)",
)
