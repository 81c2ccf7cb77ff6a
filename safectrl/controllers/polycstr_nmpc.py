"""NMPC of the polymerisation CSTR: the generic :class:`~safectrl.controllers.nmpc.NMPC` with this reactor's
objective, limit and observer.

* Objective: the environment's reward, scaled, ``(e_P² + e_T²) / 100`` per interval, plus a small move
  penalty, so that the reference controller optimises what the studies measure
  (``docs/decisions.md#reactor-nmpc-objective``).
* Limit: T <= T_max - back-off as a soft bound with an exact L1 penalty. The optimum of a startup rides
  the limit, so the back-off absorbs estimation and model error.
* Observer: the observation carries A, P, T (measured), the errors and the previous inputs, not the
  initiator I and the radicals R. :class:`PolyCSTRObserver` reconstructs the full state with an
  :class:`~safectrl.controllers.estimation.ExtendedKalmanFilter`, which also estimates UA and k0_p for
  offset-free control; its first estimate puts I and R at their quasi-steady state for the previous
  input, and the NMPC predicts with the estimated parameters. Oracle and realistic controllers differ
  only in the parameter object given to both the NMPC and the filter (``pc.PolyCSTRParams()`` or
  ``pc.mismatched()``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from safectrl.common.faults import FallbackWarning
from safectrl.controllers.estimation import EKFConfig, ExtendedKalmanFilter, quasi_steady_state
from safectrl.controllers.nmpc import NMPC, NMPCConfig, Observed, StateBound
from safectrl.models import polycstr as pc

_MEASURED = ("A", "P", "T")
_Y = [pc.OBSERVATIONS.index(s) for s in _MEASURED]
_ERR = [pc.OBSERVATIONS.index("e_P"), pc.OBSERVATIONS.index("e_T")]
_U_PREV = [pc.OBSERVATIONS.index("f_I_prev"), pc.OBSERVATIONS.index("T_c_prev")]
#: A reading outside the task's observation box for A, P, T is a sensor fault, not a state.
_Y_LOW, _Y_HIGH = pc.TASK.obs_low[_Y], pc.TASK.obs_high[_Y]

#: Back-off of the NMPC's temperature bound below T_max, K: the smallest tried whose worst startup peak stays
#: 0.25 K below T_max for the oracle and the mismatched NMPC, with and without measurement noise, on tuning
#: seeds (``safectrl nmpc backoff-study``; ``docs/decisions.md#nmpc-backoff``).
BACKOFF = 1.5

#: The reactor's NMPC settings: horizon 20 intervals (10 h, about two residence times), reward/100 as
#: objective, move penalty 1e-2 per full input range squared, T <= T_max - BACKOFF soft.
NMPC_CONFIG = NMPCConfig(
    horizon=20,
    tracked=("P", "T"),
    tracking_weights=(0.01, 0.01),
    du_weights=(0.01, 0.01),
    state_bounds=(StateBound("T", high=pc.T_MAX - BACKOFF, penalty=10.0),),
)

#: Filter settings: sensor noise of the later paper's values (used even for noise-free measurements, as a
#: floor on trust), small process noise, and a broad initial uncertainty on the unmeasured I and R.
#: Two parameters are estimated as random walks, one integrating disturbance per controlled output: the
#: jacket's UA (heat balance) and the propagation factor k0_p (polymer balance), so that the controller is
#: offset-free under mismatched heat transfer and kinetics (``docs/decisions.md#ekf-disturbance-model``).
EKF_CONFIG = EKFConfig(
    measured=_MEASURED,
    measurement_std=(2.0, 0.5, 0.2),
    process_std=(0.5, 0.05, 1e-8, 0.2, 0.05),
    initial_std=(2.0, 3.0, 5e-7, 0.5, 0.2),
    lower=(0.0, 0.0, 0.0, 0.0, 0.0),
    estimated_params=("UA", "k0_p"),
    param_process_std=(10.0, 400.0),  # W/K, m³/(mol s) per interval: 2 % and 1 % of nominal
    param_initial_std=(100.0, 8000.0),  # 20 % of nominal
)

#: The same filter estimating states only, no disturbance model (offsets under any mismatch).
EKF_CONFIG_STATES_ONLY = replace(EKF_CONFIG, estimated_params=(), param_process_std=(), param_initial_std=())


class PolyCSTRObserver:
    """Full state and setpoint of the reactor from its observation, through an extended Kalman filter.

    A reading of A, P or T that is NaN, inf or outside the task's observation box is not given to the
    filter (the others are; none left: prediction only), counted in :attr:`rejected_measurements` and
    warned about once per observer, so that a faulty sensor costs one update, not the controller; a
    non-finite setpoint error takes the setpoint of the last step that had one. ``strict`` raises instead.
    The first observation starts the filter and must be valid.

    Args:
        params: the parameters the filter predicts with.
        config: the filter's noise model.
        strict: raise ``ValueError`` on an invalid reading instead of leaving it out.
    """

    def __init__(self, params: pc.PolyCSTRParams, config: EKFConfig = EKF_CONFIG,
                 strict: bool = False) -> None:
        self.params = params
        self.ekf = ExtendedKalmanFilter(pc.MODEL, params, config)
        self.strict = bool(strict)
        self._estimating = bool(config.estimated_params)
        self._started = False
        self._setpoint: np.ndarray | None = None
        self._warned = False
        #: State estimates since the last reset, one (nx,) array per observation, physical units.
        self.estimates: list[np.ndarray] = []
        #: Readings (one measured entry at one interval) left out of the filter over the observer's life.
        self.rejected_measurements = 0

    def reset(self, seed: int | None = None) -> None:
        """Forget the estimate; the next observation starts the filter. ``seed`` is unused."""
        self._started = False
        self._setpoint = None
        self.estimates = []

    def _valid(self, y: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(y) & (y >= _Y_LOW) & (y <= _Y_HIGH)
        if not ok.all():
            what = "invalid reading " + ", ".join(
                f"{s} = {v} (valid: finite in [{lo:g}, {hi:g}])"
                for s, v, lo, hi, good in zip(_MEASURED, y, _Y_LOW, _Y_HIGH, ok) if not good)
            if self.strict or not self._started:
                start = "" if self._started else " in the first observation, which starts the filter"
                raise ValueError(f"{what}{start}")
            if not self._warned:
                warnings.warn(f"PolyCSTRObserver: {what}: left out of the filter update (warned once; "
                              "counted in rejected_measurements)", FallbackWarning, stacklevel=4)
                self._warned = True
        return ok

    def __call__(self, obs: np.ndarray) -> Observed:
        obs = np.asarray(obs, dtype=float)
        y = obs[_Y]
        u_prev = obs[_U_PREV]
        ok = self._valid(y)
        rejected = int(np.sum(~ok))
        if not self._started:
            x = np.zeros(pc.MODEL.nx)
            x[[pc.STATES.index(s) for s in _MEASURED]] = y
            self.ekf.reset(quasi_steady_state(pc.MODEL, self.params, x, ("I", "R"), u_prev))
            self._started = True
        else:
            self.ekf.predict(u_prev)
            self.ekf.update(np.where(ok, y, np.nan))
        self.rejected_measurements += rejected
        self.estimates.append(self.ekf.x.copy())
        setpoint = y[1:] + obs[_ERR]  # e = setpoint - measurement
        if self._setpoint is not None:
            setpoint = np.where(np.isfinite(setpoint), setpoint, self._setpoint)
        elif not np.all(np.isfinite(setpoint)):
            raise ValueError(f"the first observation gives no finite setpoint (e_P, e_T = {obs[_ERR]})")
        self._setpoint = setpoint
        return Observed(self.ekf.x.copy(), u_prev, setpoint, 0.0,
                        self.ekf.params if self._estimating else None, rejected)

    def applied(self, u: np.ndarray) -> None:
        """Nothing to remember: the next observation carries the input the plant received (the filter
        predicts with that, not with what the controller asked for)."""


def polycstr_nmpc(
    params: pc.PolyCSTRParams = pc.PolyCSTRParams(),
    config: NMPCConfig = NMPC_CONFIG,
    ekf: EKFConfig = EKF_CONFIG,
) -> NMPC:
    """The reactor's NMPC with its observer; ``params`` is both the prediction model and the filter's.

    ``polycstr_nmpc()`` is the oracle (model = plant), ``polycstr_nmpc(pc.mismatched())`` the realistic
    controller (UA -20 %, dH +10 %).
    """
    return NMPC(pc.MODEL, params, config, observer=PolyCSTRObserver(params, ekf, strict=config.strict))


def with_backoff(backoff: float, config: NMPCConfig = NMPC_CONFIG) -> NMPCConfig:
    """``config`` with the temperature bound at T_max - ``backoff`` (same penalty)."""
    bounds = tuple(replace(b, high=pc.T_MAX - backoff) if b.state == "T" else b for b in config.state_bounds)
    return replace(config, state_bounds=bounds)
