r"""State estimation for any :class:`~safectrl.models.core.ODEModel`: an extended Kalman filter.

Discrete-time EKF on the model's control interval (Simon, *Optimal State Estimation*, 2006, ch. 13)::

    predict   x⁻ = Phi(x⁺, u, p, t0)                 one interval of model.interval_function() (RODAS4)
              P⁻ = A P⁺ Aᵀ + Q,   A = dPhi/dx         Jacobian of the same CasADi graph
    update    K  = P⁻ Hᵀ (H P⁻ Hᵀ + R)⁻¹,   H selects the measured states
              x⁺ = x⁻ + K (y - H x⁻)
              P⁺ = (I - K H) P⁻ (I - K H)ᵀ + K R Kᵀ   Joseph form, symmetric and positive by construction

``Q`` and ``R`` are diagonal, from 1-sigma values in physical units. The filter runs in states scaled by
``model.x_scale`` (radical and monomer concentrations differ by eight orders of magnitude) and projects the
estimate onto optional lower bounds (concentrations cannot be negative) after each update.

Offset-free estimation: named model parameters can be estimated alongside the states as random walks
(``EKFConfig.estimated_params``). With one such parameter per measured controlled output, an integrating
disturbance model in the sense of Pannocchia & Rawlings (AIChE J. 49, 2003), a controller predicting with
the estimated parameters removes steady offsets caused by plant-model mismatch.

:func:`quasi_steady_state` gives a first estimate of unmeasured states from the measured ones: the values
at which the unmeasured states' own balances are at rest for the input last applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import casadi as ca
import numpy as np

from safectrl.common import validation
from safectrl.models.core import ODEModel


@dataclass(frozen=True)
class EKFConfig:
    """Noise model and structure of an :class:`ExtendedKalmanFilter` (all 1-sigma, physical units)."""

    measured: tuple[str, ...]  # measured states, in the order of the measurement vector
    measurement_std: tuple[float, ...]  # per measured state, sensor noise
    process_std: tuple[float, ...]  # per state, additive model error per interval
    initial_std: tuple[float, ...]  # per state, uncertainty of the first estimate
    lower: tuple[float, ...] | None = None  # per state, the estimate is projected onto x >= lower
    estimated_params: tuple[str, ...] = ()  # model parameters estimated as random-walk states
    param_process_std: tuple[float, ...] = ()  # per estimated parameter, random-walk step per interval
    param_initial_std: tuple[float, ...] = ()  # per estimated parameter, uncertainty of its first value

    def __post_init__(self) -> None:
        # kinds and ranges; the names and lengths are checked against the model by the filter
        validation.names("measured", self.measured)
        validation.reals("measurement_std", self.measurement_std, low=0.0)
        validation.reals("process_std", self.process_std, low=0.0)
        validation.reals("initial_std", self.initial_std, low=0.0)
        if self.lower is not None:
            validation.reals("lower", self.lower, allow_inf=True)
        validation.names("estimated_params", self.estimated_params)
        validation.reals("param_process_std", self.param_process_std, low=0.0)
        validation.reals("param_initial_std", self.param_initial_std, low=0.0)


def quasi_steady_state(
    model: ODEModel,
    params: Any,
    x: np.ndarray,
    unknown: Sequence[str],
    u: np.ndarray,
    guess: np.ndarray | None = None,
    t: float = 0.0,
) -> np.ndarray:
    """``x`` with the ``unknown`` states replaced by the values that put their own derivatives at zero.

    Newton's method on ``rhs(x, u)[unknown] = 0`` for ``x[unknown]``, the others held at their values in
    ``x``; the unknown states start from ``guess`` (default: ``model.x_scale``).

    Raises:
        ValueError: if Newton's method does not converge to a finite root.
    """
    idx = [model.states.index(s) for s in unknown]
    scale = model.x_scale[idx]
    z = ca.SX.sym("z", len(idx))
    x_full = ca.SX(ca.DM(np.asarray(x, dtype=float)))
    for j, i in enumerate(idx):
        x_full[i] = z[j] * scale[j]
    args = [x_full, ca.DM(u), ca.DM(model.param_vector(params))] + ([t] if model.time_varying else [])
    residual = model.rhs_function()(*args)[idx] / ca.DM(scale)
    newton = ca.rootfinder(
        f"{model.name}_qss", "newton", {"x": z, "g": residual}, {"abstol": 1e-12, "max_iter": 100,
                                                              "error_on_fail": False}
    )
    z0 = np.ones(len(idx)) if guess is None else np.asarray(guess, dtype=float)[idx] / scale
    sol = np.asarray(newton(x0=z0)["x"]).ravel()
    if not newton.stats()["success"] or not np.all(np.isfinite(sol)):
        raise ValueError(f"no quasi-steady state of {', '.join(unknown)} found at x={x}, u={u}")
    out = np.asarray(x, dtype=float).copy()
    out[idx] = sol * scale
    return out


class ExtendedKalmanFilter:
    """Extended Kalman filter on the model's control interval; see the module docstring.

    Args:
        model: the model (its interval function predicts, its CasADi Jacobian linearises).
        params: the model's parameter dataclass; estimated parameters start from its values.
        config: measured states, noise levels, bounds, estimated parameters.

    Raises:
        ValueError: on unknown names or wrong lengths in ``config``.
    """

    def __init__(self, model: ODEModel, params: Any, config: EKFConfig) -> None:
        self.model = model
        self.config = config
        self._p = model.param_vector(params)
        nx = model.nx
        self._check(config)
        self.measured = [model.states.index(s) for s in config.measured]
        self._theta_idx = [model.param_names.index(n) for n in config.estimated_params]
        nth = len(self._theta_idx)
        self.n = nx + nth
        theta0 = self._p[self._theta_idx]
        # Estimated parameters are scaled by their nominal magnitude, states by x_scale.
        self._scale = np.concatenate([model.x_scale, np.where(theta0 != 0, np.abs(theta0), 1.0)])
        self._Q = np.diag(np.concatenate([config.process_std, config.param_process_std]) ** 2) / np.outer(
            self._scale, self._scale)
        self._R = np.diag(np.asarray(config.measurement_std, dtype=float) ** 2)
        self._P0 = np.diag(np.concatenate([config.initial_std, config.param_initial_std]) ** 2) / np.outer(
            self._scale, self._scale)
        self._H = np.zeros((len(self.measured), self.n))
        self._H[np.arange(len(self.measured)), self.measured] = 1.0
        self._lower = None if config.lower is None else np.asarray(config.lower, dtype=float)
        self._predict_fn = self._build()
        self.x: np.ndarray | None = None  # (nx,) state estimate, physical units
        self.theta: np.ndarray = theta0.copy()  # (n_estimated_params,) parameter estimates
        self.P: np.ndarray | None = None  # (n, n) covariance in scaled coordinates

    def _check(self, c: EKFConfig) -> None:
        m = self.model
        for name in c.measured:
            if name not in m.states:
                raise ValueError(
                    f"unknown measured state {name!r}; {m.name} has states {', '.join(m.states)}")
        for name in c.estimated_params:
            if name not in m.param_names:
                raise ValueError(f"unknown parameter {name!r} of {m.name}")
        lengths = {
            "measurement_std": (len(c.measurement_std), len(c.measured)),
            "process_std": (len(c.process_std), m.nx),
            "initial_std": (len(c.initial_std), m.nx),
            "param_process_std": (len(c.param_process_std), len(c.estimated_params)),
            "param_initial_std": (len(c.param_initial_std), len(c.estimated_params)),
        }
        if c.lower is not None:
            lengths["lower"] = (len(c.lower), m.nx)
        for name, (got, want) in lengths.items():
            if got != want:
                raise ValueError(f"EKFConfig.{name} has {got} values, expected {want}")
        if not all(s > 0 for s in c.measurement_std):
            raise ValueError("measurement_std must be positive")

    def _build(self) -> ca.Function:
        """``(x_scaled_aug, u, p, t0) -> (x_next_scaled_aug, A)`` from the model's interval function."""
        m = self.model
        nx = m.nx
        z = ca.SX.sym("z", self.n)
        u = ca.SX.sym("u", m.nu)
        p = ca.SX.sym("p", m.n_params)
        t0 = ca.SX.sym("t0")
        s = ca.DM(self._scale)
        x_aug = z * s
        p_used = ca.SX(p)
        for j, i in enumerate(self._theta_idx):
            p_used[i] = x_aug[nx + j]
        args = [x_aug[:nx], u, p_used] + ([t0] if m.time_varying else [])
        xf = m.interval_function()(*args)[0]
        z_next = ca.vertcat(xf, x_aug[nx:]) / s
        return ca.Function(
            f"{m.name}_ekf_predict", [z, u, p, t0], [z_next, ca.jacobian(z_next, z)],
            ["z", "u", "p", "t0"], ["z_next", "A"],
        )

    @property
    def params(self) -> np.ndarray:
        """The parameter vector with the current estimates substituted, shape (n_params,)."""
        p = self._p.copy()
        p[self._theta_idx] = self.theta
        return p

    @property
    def std(self) -> np.ndarray:
        """1-sigma of the state estimate, physical units, shape (nx,)."""
        if self.P is None:
            raise RuntimeError("the filter has no estimate yet; call reset(x0)")
        return np.sqrt(np.diag(self.P))[: self.model.nx] * self.model.x_scale

    def reset(self, x0: np.ndarray) -> None:
        """Start from ``x0`` (nx,) with the configured initial uncertainty; parameters back to nominal."""
        x0 = np.asarray(x0, dtype=float)
        if x0.shape != (self.model.nx,) or not np.all(np.isfinite(x0)):
            raise ValueError(f"initial estimate must be finite with shape ({self.model.nx},), got {x0!r}")
        self.x = x0.copy()
        self.theta = self._p[self._theta_idx].copy()
        self.P = self._P0.copy()

    def _z(self) -> np.ndarray:
        return np.concatenate([self.x, self.theta]) / self._scale

    def _set(self, z: np.ndarray) -> None:
        v = z * self._scale
        self.x = v[: self.model.nx]
        if self._lower is not None:
            self.x = np.maximum(self.x, self._lower)
        self.theta = v[self.model.nx :]

    def predict(self, u: np.ndarray, t0: float = 0.0) -> None:
        """Advance the estimate over one interval with input ``u`` (nu,) held."""
        if self.x is None:
            raise RuntimeError("the filter has no estimate yet; call reset(x0)")
        z_next, A = self._predict_fn(self._z(), np.asarray(u, dtype=float), self._p, t0)
        z_next = np.asarray(z_next).ravel()
        if not np.all(np.isfinite(z_next)):
            raise FloatingPointError(f"EKF prediction left the finite range from x={self.x} with u={u}")
        A = np.asarray(A)
        self._set(z_next)
        self.P = A @ self.P @ A.T + self._Q

    def update(self, y: np.ndarray) -> int:
        """Correct the estimate with a measurement ``y`` of the measured states (physical units).

        NaN or inf entries are left out (the update uses the others; none left: prediction only), because
        one lost reading must not turn the whole estimate into NaN. Returns the number of entries left out.
        """
        if self.x is None:
            raise RuntimeError("the filter has no estimate yet; call reset(x0)")
        y = np.asarray(y, dtype=float)
        if y.shape != (len(self.measured),):
            raise ValueError(f"measurement must have shape ({len(self.measured)},), got {y.shape}")
        # Measurement in scaled coordinates: y / scale of the measured states.
        ys = self.model.x_scale[self.measured]
        H = self._H
        R = self._R / np.outer(ys, ys)
        used = np.isfinite(y)
        if not used.all():
            if not used.any():
                return len(y)
            y, ys, H, R = y[used], ys[used], H[used], R[np.ix_(used, used)]
        innovation = y / ys - H @ self._z()
        S = H @ self.P @ H.T + R
        K = np.linalg.solve(S, H @ self.P).T
        self._set(self._z() + K @ innovation)
        I_KH = np.eye(self.n) - K @ H
        self.P = I_KH @ self.P @ I_KH.T + K @ R @ K.T
        return int(np.sum(~used))
