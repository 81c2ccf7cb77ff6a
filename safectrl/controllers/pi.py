"""Decentralised PI control of the polymerisation CSTR: P -> f_I and T -> T_c.

Each loop computes ``u = bias + Kp e + Ki ∫e dt`` with ``e = setpoint - measurement`` (time in seconds),
clips ``u`` to the input bounds and integrates conditionally for anti-windup: a loop's integral advances
only in an interval where its raw output was inside the bounds. The bias is the input applied before the
controller took over (read from the first observation), which makes every switch-over bumpless: for the
startup that is (1.0 kg/h, 345 K), for a grade change the steady inputs of the starting grade.

The nominal tuning is derived, not guessed: :func:`simc_tuning` identifies a first-order-plus-dead-time
model of each loop from open-loop step tests on the model at the high-grade steady state and applies
Skogestad's SIMC rules; the closed-loop time constant was chosen by closed-loop cost (see
:data:`NOMINAL_TUNING`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from safectrl.common.faults import FallbackWarning
from safectrl.models import polycstr as pc

_E_P = pc.OBSERVATIONS.index("e_P")
_E_T = pc.OBSERVATIONS.index("e_T")
_U_PREV = [pc.OBSERVATIONS.index("f_I_prev"), pc.OBSERVATIONS.index("T_c_prev")]


@dataclass(frozen=True)
class PITuning:
    """Gains of the two loops."""

    Kp_P: float  # (kg/h)/(kg/m³), P -> f_I proportional gain
    Ki_P: float  # (kg/h)/(kg/m³ s), P -> f_I integral gain
    Kp_T: float  # K/K, T -> T_c proportional gain
    Ki_T: float  # 1/s, T -> T_c integral gain

    def as_dict(self) -> dict[str, float]:
        return {"Kp_P": self.Kp_P, "Ki_P": self.Ki_P, "Kp_T": self.Kp_T, "Ki_T": self.Ki_T}


#: Ranges from which dataset tunings are drawn uniformly (the randomly tuned PI data of Durkin et al., 2025).
TUNING_RANGES: dict[str, tuple[float, float]] = {
    "Kp_P": (2e-4, 5e-3),
    "Ki_P": (6e-8, 1.5e-6),
    "Kp_T": (8e-3, 0.2),
    "Ki_T": (2e-6, 5e-5),
}


def sample_tuning(rng: np.random.Generator) -> PITuning:
    """A tuning with every gain drawn uniformly from :data:`TUNING_RANGES` (fixed draw order)."""
    return PITuning(**{name: float(rng.uniform(lo, hi)) for name, (lo, hi) in TUNING_RANGES.items()})


@dataclass(frozen=True)
class FOPDT:
    """First-order-plus-dead-time fit of one loop: y(s)/u(s) = k exp(-theta s) / (tau s + 1)."""

    k: float  # process gain, output unit per input unit
    tau: float  # s, time constant
    theta: float  # s, effective dead time


def identify_fopdt(loop: str, du: float, params: pc.PolyCSTRParams = pc.PolyCSTRParams()) -> FOPDT:
    """Open-loop step test at the high-grade steady state, fitted by the two-point (28.3 %, 63.2 %) method.

    Args:
        loop: "P" (step in f_I, response of P) or "T" (step in T_c, response of T).
        du: step size, kg/h or K.
        params: model parameters.

    The zero-order hold adds half an interval of effective dead time, so theta is at least dt/2.
    """
    if loop not in ("P", "T"):
        raise ValueError(f"loop must be 'P' or 'T', got {loop!r}")
    ss = pc.steady_state(*pc.HIGH_GRADE, params)
    j_u, j_y = (0, 3) if loop == "P" else (1, 4)
    u = ss.u.copy()
    u[j_u] += du
    n = 400
    x = np.tile(ss.x, (n + 1, 1))
    p = pc.MODEL.param_vector(params)
    for k in range(n):
        x[k + 1] = pc.MODEL.step(x[k], u, p)
    y = x[:, j_y] - ss.x[j_y]
    t = np.arange(n + 1) * pc.DT
    gain = y[-1] / du
    frac = y / y[-1]
    t28 = float(np.interp(0.283, frac[: np.argmax(frac >= 0.632) + 1], t[: np.argmax(frac >= 0.632) + 1]))
    t63 = float(np.interp(0.632, frac[: np.argmax(frac >= 0.632) + 1], t[: np.argmax(frac >= 0.632) + 1]))
    tau = 1.5 * (t63 - t28)
    theta = max(t63 - tau, 0.0) + pc.DT / 2
    return FOPDT(k=float(gain), tau=tau, theta=theta)


def simc_tuning(tau_c_P: float, tau_c_T: float, params: pc.PolyCSTRParams = pc.PolyCSTRParams()) -> PITuning:
    """SIMC PI gains (Skogestad 2003): Kc = tau / (k (tau_c + theta)), tau_I = min(tau, 4 (tau_c + theta)).

    Args:
        tau_c_P: desired closed-loop time constant of the P loop, s.
        tau_c_T: desired closed-loop time constant of the T loop, s.
    """
    gains = {}
    for loop, tau_c, du in (("P", tau_c_P, 0.05), ("T", tau_c_T, 0.5)):
        m = identify_fopdt(loop, du, params)
        kc = m.tau / (m.k * (tau_c + m.theta))
        tau_i = min(m.tau, 4 * (tau_c + m.theta))
        gains[f"Kp_{loop}"] = kc
        gains[f"Ki_{loop}"] = kc / tau_i
    return PITuning(**gains)


#: Nominal tuning: SIMC with closed-loop time constants of 0.5 h (P loop) and 2 h (T loop), rounded to two
#: significant figures. The time constants are the admissible pair of lowest closed-loop cost on nominal
#: and mismatched plants (no violation, no runaway); a slower T loop runs away on the mismatched plant.
#: ``safectrl pi-tuning`` reproduces the derivation and the choice (``docs/decisions.md#pi-nominal-tuning``).
#: The gains lie above :data:`TUNING_RANGES`: the datasets are deliberately detuned.
NOMINAL_TUNING = PITuning(Kp_P=0.037, Ki_P=1.4e-06, Kp_T=0.39, Ki_T=6.4e-05)


class PIController:
    """Two decentralised PI loops with conditional-integration anti-windup.

    A loop whose error is NaN or inf (a lost reading) holds its integral and its last output for that
    interval, counted in :attr:`held` and warned about once: acting on a reading that is not there would
    be a guess. The first observation sets the bias from the previous inputs, which must be finite.

    Args:
        tuning: the loop gains.
        dt: control interval, s.
    """

    def __init__(self, tuning: PITuning = NOMINAL_TUNING, dt: float = pc.DT) -> None:
        self.tuning = tuning
        self.dt = float(dt)
        self._kp = np.array([tuning.Kp_P, tuning.Kp_T])
        self._ki = np.array([tuning.Ki_P, tuning.Ki_T])
        self._warned = False
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the integral and the bias; the next observation sets the bias. ``seed`` is unused."""
        self.integral = np.zeros(2)  # (kg/m³ s, K s)
        self.bias: np.ndarray | None = None
        self._u: np.ndarray | None = None  # the last output, (f_I kg/h, T_c K)
        #: Loop-intervals held on a non-finite error since the last reset.
        self.held = 0
        #: Intervals since the last reset on which at least one loop held (``held`` counts loops).
        self.held_intervals = 0

    def episode_report(self) -> dict[str, int]:
        """The episode's fallbacks as a study column: ``fallbacks``, the intervals since the last reset on
        which a loop held its integral and output (:attr:`held_intervals`)."""
        return {"fallbacks": int(self.held_intervals)}

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Inputs (f_I kg/h, T_c K) for the next interval from an observation laid out as OBSERVATIONS."""
        obs = np.asarray(obs, dtype=float)
        if self.bias is None:
            self.bias = obs[_U_PREV].copy()
            if not np.all(np.isfinite(self.bias)):
                raise ValueError(f"the first observation sets the PI's bias: f_I_prev, T_c_prev must be "
                                 f"finite, got {self.bias}")
            self._u = np.clip(self.bias, pc.U_LOW, pc.U_HIGH)
        e = np.array([obs[_E_P], obs[_E_T]])
        lost = ~np.isfinite(e)
        if lost.any():
            self.held += int(lost.sum())
            self.held_intervals += 1
            if not self._warned:
                bad = ", ".join(f"{n} = {v}" for n, v, gone in zip(("e_P", "e_T"), e, lost) if gone)
                warnings.warn(f"PIController: non-finite setpoint error {bad}: the loop holds its integral "
                              "and output (warned once; counted in held)", FallbackWarning, stacklevel=2)
                self._warned = True
            e = np.where(lost, 0.0, e)
        candidate = self.integral + e * self.dt
        raw = self.bias + self._kp * e + self._ki * candidate
        u = np.clip(raw, pc.U_LOW, pc.U_HIGH)
        inside = (u == raw) & ~lost
        self.integral = np.where(inside, candidate, self.integral)
        if lost.any():
            u = np.where(lost, self._u, u)
        self._u = u
        return u


def tuning_rng(episode_seed: int) -> np.random.Generator:
    """The generator of an episode's PI gains: a stream separate from the env's initial-state stream."""
    return np.random.default_rng((episode_seed, 1))


class DatasetPI:
    """PI with gains drawn from :data:`TUNING_RANGES` per episode seed: the behaviour policy of the datasets.

    The gains of episode seed s are those the dataset episode of env seed s was recorded with.
    """

    def __init__(self, dt: float = pc.DT) -> None:
        self.dt = float(dt)
        self._pi = PIController(dt=self.dt)

    def reset(self, seed: int | None = None) -> None:
        """Draw this episode's gains from ``seed`` (None: seed 0)."""
        self._pi = PIController(sample_tuning(tuning_rng(0 if seed is None else seed)), self.dt)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._pi.act(obs)

    def episode_report(self) -> dict[str, int]:
        """This episode's PI's :meth:`PIController.episode_report`."""
        return self._pi.episode_report()
