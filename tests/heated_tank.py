r"""A sixth plant, defined outside the package: a stirred tank heated electrically, cooled by its surroundings.

The extension path of safectrl in one file (README, "Extending"): a parameter dataclass, one right-hand
side, an :class:`~safectrl.models.core.ODEModel` and a :class:`~safectrl.models.task.Task`; one line,
``safectrl.register_task("tests/HeatedTank-v0", "heated_tank:TASK")``, then gives it an env, an NMPC and rows
in a study. Time in seconds::

    dT/dt = Q / (m c_p) - UA (T - T_amb) / (m c_p) + (T_in - T) / tau_flow
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from safectrl.models.core import ODEModel
from safectrl.models.task import FixedStart, Limit, Task

STATES = ("T",)
INPUTS = ("Q",)
T_MAX = 360.0  # K, operating limit
T_FAIL = 380.0  # K, the tank boils dry


@dataclass(frozen=True)
class TankParams:
    m: float = 100.0  # kg, liquid in the tank
    c_p: float = 4180.0  # J/(kg K)
    UA: float = 50.0  # W/K, loss to the surroundings
    T_amb: float = 293.0  # K
    T_in: float = 293.0  # K, feed temperature
    tau_flow: float = 2000.0  # s, residence time


def rhs(x, u, p, m):
    (T,) = x
    (Q,) = u
    return ((Q - p.UA * (T - p.T_amb)) / (p.m * p.c_p) + (p.T_in - T) / p.tau_flow,)


MODEL = ODEModel(name="heated_tank", states=STATES, inputs=INPUTS, params_type=TankParams, rhs=rhs, dt=60.0,
                 x_scale=[300.0], u_low=[0.0], u_high=[30e3], substeps=2)


def stage_cost(x, u, setpoint, p, m):
    return (setpoint[0] - x[0]) ** 2


TASK = Task(
    name="HeatedTank",
    model=MODEL,
    plants={"nominal": TankParams(), "actual": replace(TankParams(), UA=80.0, m=80.0)},
    scenarios={"heat_up": FixedStart("heat_up", lambda p: np.array([300.0]), (0.0,), setpoint=(340.0,))},
    episode_steps=40,
    observations=("T", "e_T", "Q_prev"),
    obs_low=np.array([200.0, -200.0, 0.0]),
    obs_high=np.array([500.0, 200.0, 30e3]),
    measure=lambda x, params: x.copy(),
    measurement_std=(0.5,),
    observe=lambda y, y_prev, u_prev, step, sp: np.column_stack([y[:, 0], sp[:, 0] - y[:, 0], u_prev]),
    stage_cost=stage_cost,
    failure_reward=lambda cost, remaining, sp: -1e4 * remaining,
    limits=(Limit("T", high=T_MAX, unit="K"),),
    failure=(Limit("T", high=T_FAIL, unit="K"),),
    setpoint_names=("T",),
    units={"T": "K", "Q": "W"},
)
