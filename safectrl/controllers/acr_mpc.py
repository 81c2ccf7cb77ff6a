"""The MPC regularisers of RL-ACR's four tasks: the generic :class:`~safectrl.controllers.nmpc.NMPC` on the
*estimated* model, with each task's objective, hard state bounds and horizon (Tian et al., NeurIPS 2024, and
their public code, which builds them in do-mpc):

| task      | stage cost                          | move penalty (do-mpc rterm)     | hard state bounds           | N   |
|-----------|-------------------------------------|---------------------------------|-----------------------------|-----|
| Glucose   | 10 risk(G) + 50 u²                  | -                               | G in [50, 800] mg/dL        | 20  |
| BiGlucose | 10 risk(18 G) + 100 u_I² + u_N²     | -                               | 18 G in [50, 800] mg/dL     | 20  |
| CSTR      | (C_b - 0.6)²                        | 1e-3 (ΔF/10)² + 2.5e-4 (ΔQ/1e3)² | C in [0.1, 2], T_R in [50, 200], T_K in [50, 140] | 20 |
| CartPole  | 100 x² + 100 theta²                 | 100 (ΔF/10)²                    | |theta| <= 12°              | 100 |

The move penalties are the authors' do-mpc weights on their scaled inputs, rewritten as the NMPC's weights
on (Δu / input range)². The glucose bound on 18 Q1 / V_G is a bound on Q1 with the model's V_G.

:func:`glucose_mpc` and the others return plain :class:`~safectrl.controllers.nmpc.NMPC` objects, whose
``act(obs)`` goes through an observer. The CSTR and the cart-pole observe their full state:
:class:`~safectrl.controllers.nmpc.FullStateObserver` (the move penalty refers to the controller's own
previous input, as in do-mpc; the time of a time-varying model counts intervals since reset). The glucose
tasks observe glucose only: :class:`MeasuredGlucoseObserver` completes the state with the estimated model run
open loop, as Tian et al.'s MPCs do. Failed solves are in ``nmpc.stats`` (over all episodes; per episode:
``nmpc.stats.episode()``).
"""

from __future__ import annotations

from typing import Any, Callable

import casadi as ca
import numpy as np

from safectrl.controllers.nmpc import NMPC, FullStateObserver, NMPCConfig, Observed, StateBound
from safectrl.models import biglucose, cartpole, glucose, klatt_engell
from safectrl.models.core import ODEModel
from safectrl.models.mathns import CASADI

#: Glucose range the regulariser keeps as hard constraints (mg/dL), both glucose tasks.
G_SAFE = (50.0, 800.0)


class MeasuredGlucoseObserver(FullStateObserver):
    """The observer of a glucose task's NMPC: only glucose is measured.

    The unmeasured states come from the estimated model run open loop on the controller's own inputs, and
    the measured glucose replaces the model's (Tian et al.'s glucose MPCs: "the closed loop is maintained
    only for the observed G"). Full-state feedback from the actual plant would hand the MPC states of a
    different body (e.g. Q1 of another distribution volume V_G), which it cannot interpret.

    Args:
        model: the NMPC's model.
        params: its parameters (the open-loop prediction uses the same as the NMPC).
        u_init: the "previous input" of the first interval, shape (nu,).
        x_init: the model's initial state (its own fasting steady state), shape (nx,).
        glucose_to_state: maps the measured glucose [mg/dL] (observation 0) to the value of state 0.
    """

    def __init__(self, model: ODEModel, params: Any, u_init: np.ndarray, x_init: np.ndarray,
                 glucose_to_state: Callable[[float], float]) -> None:
        super().__init__(model.dt, u_init)
        self.model = model
        self.x_init = np.asarray(x_init, dtype=float)
        self.glucose_to_state = glucose_to_state
        self._x = self.x_init.copy()
        self._p = model.param_vector(params)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._x = self.x_init.copy()

    def __call__(self, obs: np.ndarray) -> Observed:
        if self._k > 0:  # predict over the last interval with the input the controller applied
            self._x = self.model.step(self._x, self._u_prev, self._p, t0=(self._k - 1) * self.dt)
        self._x[0] = self.glucose_to_state(float(obs[0]))
        return Observed(self._x.copy(), self._u_prev, None, self._k * self.dt)


def _risk(G_mg_dl: ca.SX) -> ca.SX:
    return glucose.magni_risk(G_mg_dl, CASADI)


def glucose_observer(params: glucose.GlucoseParams = glucose.ESTIMATED) -> MeasuredGlucoseObserver:
    """The Glucose task's observer predicting with ``params``."""
    return MeasuredGlucoseObserver(glucose.MODEL, params, np.zeros(1), glucose.initial_state(params), lambda G: G)


def biglucose_observer(params: biglucose.BiGlucoseParams = biglucose.ESTIMATED) -> MeasuredGlucoseObserver:
    """The BiGlucose task's observer predicting with ``params`` (glucose in mg/dL to Q1 with its V_G)."""
    q1_per_mg_dl = params.V_G / biglucose.MG_DL_PER_MMOL_L
    return MeasuredGlucoseObserver(biglucose.MODEL, params, np.zeros(2), biglucose.initial_state(params),
                                   lambda G: G * q1_per_mg_dl)


def klatt_engell_observer() -> FullStateObserver:
    """The CSTR's observer: full state, C_b's reference, the first input at its lower bound."""
    return FullStateObserver(klatt_engell.MODEL.dt, u_init=np.array([klatt_engell.U_LOW[0], 0.0]),
                             reference=np.array([klatt_engell.C_B_REF]))


def cartpole_observer() -> FullStateObserver:
    """The cart-pole's observer: full state, reference x = theta = 0."""
    return FullStateObserver(cartpole.MODEL.dt, u_init=np.zeros(1), reference=np.zeros(2))


def glucose_mpc(params: glucose.GlucoseParams = glucose.ESTIMATED, horizon: int = 20) -> NMPC:
    """The Glucose regulariser: 10 risk + 50 u², G in [50, 800] mg/dL hard (the authors' code weighs the
    risk by 10 here, unlike the reward)."""
    config = NMPCConfig(horizon=horizon, collocation_degree=2, collocation_elements=1,
                        state_bounds=(StateBound("G", low=G_SAFE[0], high=G_SAFE[1]),))
    observer = glucose_observer(params)
    return NMPC(glucose.MODEL, params, config, n_ref=0, observer=observer,
                stage_cost=lambda x, u, r: 10.0 * _risk(x[0]) + 50.0 * u[0] ** 2)


def biglucose_mpc(params: biglucose.BiGlucoseParams = biglucose.ESTIMATED, horizon: int = 20) -> NMPC:
    """The BiGlucose regulariser: 10 risk + 100 u_I² + u_N², 18 Q1 / V_G in [50, 800] mg/dL hard."""
    q1_per_mg_dl = params.V_G / biglucose.MG_DL_PER_MMOL_L
    # IPOPT: fatrop ran into its iteration limit on 60 of 60 solves along an actual-plant episode (the model's
    # piecewise terms), IPOPT none (docs/decisions.md#nmpc-solver)
    config = NMPCConfig(horizon=horizon, collocation_degree=2, collocation_elements=1, solver="ipopt", state_bounds=(
        StateBound("Q1", low=G_SAFE[0] * q1_per_mg_dl, high=G_SAFE[1] * q1_per_mg_dl),))
    observer = biglucose_observer(params)
    return NMPC(biglucose.MODEL, params, config, n_ref=0, observer=observer,
                stage_cost=lambda x, u, r: biglucose.REWARD_WEIGHT * _risk(x[0] / q1_per_mg_dl)
                + 100.0 * u[0] ** 2 + u[1] ** 2)


def klatt_engell_mpc(params: klatt_engell.KlattEngellParams = klatt_engell.ESTIMATED,
                     horizon: int = 20) -> NMPC:
    """The CSTR regulariser: (C_b - 0.6)² with do-mpc's move penalty, the safe set (T_K <= 140) hard."""
    u_range = klatt_engell.U_HIGH - klatt_engell.U_LOW
    # do-mpc rterm weights on the authors' scaled inputs (F / 10, Q_dot / 1000), per (Δu / range)²
    du = (1e-3 * (u_range[0] / 10.0) ** 2, 2.5e-4 * (u_range[1] / 1000.0) ** 2)
    low, high = klatt_engell.STATE_LOW, klatt_engell.STATE_HIGH.copy()
    high[3] = 140.0  # the authors' MPC keeps the jacket 10 K inside the failure limit
    config = NMPCConfig(horizon=horizon, collocation_degree=2, collocation_elements=1, tracked=("C_b",), tracking_weights=(1.0,), du_weights=du,
                        state_bounds=tuple(StateBound(s, low=lo, high=hi)
                                           for s, lo, hi in zip(klatt_engell.STATES, low, high)))
    return NMPC(klatt_engell.MODEL, params, config, observer=klatt_engell_observer())


def cartpole_mpc(params: cartpole.CartPoleParams = cartpole.ESTIMATED, horizon: int = 100) -> NMPC:
    """The CartPole regulariser: 100 x² + 100 theta², do-mpc's move penalty, |theta| <= 12° hard.

    Multiple shooting through the model's own interval (one explicit Euler step: the plant's definition).
    """
    u_range = float(cartpole.U_HIGH[0] - cartpole.U_LOW[0])
    config = NMPCConfig(horizon=horizon, discretisation="shooting", tracked=("x", "theta"),
                        tracking_weights=(100.0, 100.0), du_weights=(100.0 * (u_range / 10.0) ** 2,),
                        state_bounds=(StateBound("theta", low=-cartpole.THETA_FAIL, high=cartpole.THETA_FAIL),))
    return NMPC(cartpole.MODEL, params, config, observer=cartpole_observer())


#: Builders of the regularisers by env id.
REGULARISERS = {
    "safectrl/Glucose-v0": glucose_mpc,
    "safectrl/BiGlucose-v0": biglucose_mpc,
    "safectrl/KlattEngellCSTR-v0": klatt_engell_mpc,
    "safectrl/CartPoleContinuous-v0": cartpole_mpc,
}

#: The observers of the four tasks by env id, ``params -> Observer`` (the CSTR and the cart-pole observe their
#: state and need no parameters).
OBSERVERS = {
    "safectrl/Glucose-v0": glucose_observer,
    "safectrl/BiGlucose-v0": biglucose_observer,
    "safectrl/KlattEngellCSTR-v0": lambda params: klatt_engell_observer(),
    "safectrl/CartPoleContinuous-v0": lambda params: cartpole_observer(),
}
