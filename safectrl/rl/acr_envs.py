"""Gymnasium environments of the four RL-ACR tasks (Tian et al., NeurIPS 2024): Glucose, BiGlucose, the
Klatt–Engell CSTR and the continuous cart-pole.

Each env is one model of :mod:`safectrl.models` with its task (initial state, reward, failure set,
interval, length) and either the *actual* plant's parameters (default: what an agent trains on) or the
*estimated* model's (the simulator of the SAC-pt baseline), or any parameter dataclass of that model.
Actions and observations are in physical units; a failure ends the episode, and the failing interval's
reward is the task's failure penalty (the constants of Tian et al.'s code), so that failing never pays.
``info["state"]`` is the full plant state (what a state-feedback regulariser reads), ``info["failure"]``
marks the failing interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from safectrl.models import biglucose, cartpole, glucose, klatt_engell
from safectrl.models.core import ODEModel

INFO_KEYS = ("state", "time", "failure", "clipped")


@dataclass(frozen=True)
class _Task:
    """What an env needs from a model module."""

    model: ODEModel
    estimated: Any
    actual: Any
    episode_steps: int
    failure_penalty: float
    initial_state: Callable[[Any], np.ndarray]
    failed: Callable[[np.ndarray, Any], bool]
    reward: Callable[[np.ndarray, np.ndarray, Any], float]


class _TaskEnv(gym.Env):
    """One plant of an RL-ACR task; subclasses choose the task and what is observed."""

    metadata = {"render_modes": []}
    task: _Task
    obs_low: np.ndarray
    obs_high: np.ndarray

    def __init__(self, plant: Any = "actual", max_steps: int | None = None) -> None:
        t = self.task
        if isinstance(plant, str):
            if plant not in ("actual", "estimated"):
                raise ValueError(f"plant must be 'actual', 'estimated' or a {t.model.params_type.__name__}, "
                                 f"got {plant!r}")
            plant = t.actual if plant == "actual" else t.estimated
        self.plant = plant
        self._p = t.model.param_vector(plant)  # raises TypeError for a wrong dataclass
        self.max_steps = t.episode_steps if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.action_space = gym.spaces.Box(t.model.u_low.copy(), t.model.u_high.copy(), dtype=np.float64)
        high = self.obs_high.copy()
        if high[-1] == np.inf:  # the step counter of the glucose tasks
            high[-1] = self.max_steps
        self.observation_space = gym.spaces.Box(self.obs_low.copy(), high, dtype=np.float64)
        self._x = np.zeros(t.model.nx)
        self._steps = 0
        self._done = True

    @property
    def state(self) -> np.ndarray:
        """True plant state, physical units (a copy)."""
        return self._x.copy()

    def _observe(self, x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _info(self, clipped: bool, failure: bool) -> dict[str, Any]:
        return {"state": self._x.copy(), "time": self._steps * self.task.model.dt, "failure": failure,
                "clipped": clipped}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._x = np.asarray(self.task.initial_state(self.plant), dtype=float)
        self._steps = 0
        self._done = False
        return self._observe(self._x, self._x), self._info(False, False)

    def step(self, action: Any):
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        m = self.task.model
        try:
            a = np.asarray(action, dtype=float).reshape(-1)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be numeric with shape ({m.nu},), got {action!r}") from err
        if a.shape != (m.nu,):
            raise ValueError(f"action must have shape ({m.nu},) ({', '.join(m.inputs)}), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action has non-finite entries: {a}")
        u = np.clip(a, m.u_low, m.u_high)
        x_prev = self._x
        self._x = m.step(x_prev, u, self._p, t0=self._steps * m.dt)
        self._steps += 1
        failure = bool(self.task.failed(self._x, self.plant))
        reward = -self.task.failure_penalty if failure else self.task.reward(self._x, u, self.plant)
        truncated = not failure and self._steps >= self.max_steps
        self._done = failure or truncated
        obs = self._observe(np.nan_to_num(self._x), x_prev)
        return obs, float(reward), failure, truncated, self._info(bool(np.any(u != a)), failure)


class _GlucoseObservation:
    """Observation of the glucose tasks: measured glucose, its change over the last interval, the step."""

    def _glucose(self, x: np.ndarray) -> float:
        raise NotImplementedError

    def _observe(self, x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
        G = self._glucose(x)
        return np.array([G, G - self._glucose(x_prev), float(self._steps)])


class GlucoseEnv(_GlucoseObservation, _TaskEnv):
    """Glucose after a meal, regulated by insulin (Bergman minimal model, :mod:`safectrl.models.glucose`).

    ## Action Space

    ``Box(1,)``, float64. Finite actions outside the bounds are clipped (``info["clipped"]``).

    | Num | Action                  | Min | Max | Unit        |
    |-----|-------------------------|-----|-----|-------------|
    | 0   | u, insulin infusion     | 0   | 2   | uU/(mL min) |

    ## Observation Space

    ``Box(3,)``, float64 (the box is the networks' normalisation range; failing states may lie outside):

    | Num | Observation                         | Min | Max       | Unit  |
    |-----|-------------------------------------|-----|-----------|-------|
    | 0   | G, plasma glucose                   | 0   | 1000      | mg/dL |
    | 1   | G - G at the previous interval      | -50 | 50        | mg/dL |
    | 2   | intervals since the meal            | 0   | max_steps | -     |

    ## Rewards

    Minus the Magni risk of G at the end of the interval, minus 2 when u >= 0.1; -1e5 on failure.

    ## Starting State, Episode End

    (G, X, I) = (138, 0, 7), the meal at t = 0. Terminated when G leaves [10, 1000] mg/dL; truncated after
    ``max_steps`` 10-minute intervals (default 100).

    ## Arguments

    ``plant``: "actual" (default), "estimated" or a :class:`~safectrl.models.glucose.GlucoseParams`.
    """

    task = _Task(glucose.MODEL, glucose.ESTIMATED, glucose.ACTUAL, glucose.EPISODE_STEPS, glucose.FAILURE_PENALTY,
                 glucose.initial_state, lambda x, p: glucose.failed(x), lambda x, u, p: glucose.reward(x, u))
    obs_low = np.array([0.0, -50.0, 0.0])
    obs_high = np.array([1000.0, 50.0, np.inf])

    def _glucose(self, x: np.ndarray) -> float:
        return float(x[0])


class BiGlucoseEnv(_GlucoseObservation, _TaskEnv):
    """Glucose after a meal, regulated by insulin and glucagon (:mod:`safectrl.models.biglucose`).

    ## Action Space

    ``Box(2,)``, float64. Finite actions outside the bounds are clipped (``info["clipped"]``).

    | Num | Action               | Min | Max | Unit                    |
    |-----|----------------------|-----|-----|-------------------------|
    | 0   | u_I, insulin         | 0   | 1   | source units (per kg)   |
    | 1   | u_N, glucagon        | 0   | 5   | source units (x 1e-6)   |

    ## Observation Space

    ``Box(3,)``, float64, as :class:`GlucoseEnv` (G = 18 Q1 / V_G mg/dL; same ranges).

    ## Rewards

    -10 risk(G) at the end of the interval, minus 3 when u_I >= 0.1; -1e5 on failure.

    ## Starting State, Episode End

    The fasting steady state at 7.7 mmol/L of the plant's own parameters (its basal insulin), meal at t = 0.
    Terminated when G leaves [10, 1000] mg/dL; truncated after ``max_steps`` intervals (default 200).

    ## Arguments

    ``plant``: "actual" (default), "estimated" or a :class:`~safectrl.models.biglucose.BiGlucoseParams`.
    """

    task = _Task(biglucose.MODEL, biglucose.ESTIMATED, biglucose.ACTUAL, biglucose.EPISODE_STEPS,
                 biglucose.FAILURE_PENALTY, biglucose.initial_state, biglucose.failed, biglucose.reward)
    obs_low = np.array([0.0, -50.0, 0.0])
    obs_high = np.array([1000.0, 50.0, np.inf])

    def _glucose(self, x: np.ndarray) -> float:
        return biglucose.glucose_mg_dl(x, self.plant)


class _FullStateObservation:
    def _observe(self, x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
        return x.copy()


class KlattEngellCSTREnv(_FullStateObservation, _TaskEnv):
    """The Klatt–Engell (Van de Vusse) CSTR of do-mpc's example (:mod:`safectrl.models.klatt_engell`).

    ## Action Space

    ``Box(2,)``, float64, physical units (Tian et al.'s agents saw F / 10 and Q_dot / 1000; our networks
    normalise by the box, which is the same). Finite actions outside the bounds are clipped.

    | Num | Action                     | Min   | Max | Unit |
    |-----|----------------------------|-------|-----|------|
    | 0   | F, feed per reactor volume | 5     | 100 | 1/h  |
    | 1   | Q_dot, heat to the jacket  | -8500 | 0   | kJ/h |

    ## Observation Space

    ``Box(4,)``, float64: the full state, the box being the safe set.

    | Num | Observation            | Min | Max | Unit  |
    |-----|------------------------|-----|-----|-------|
    | 0   | C_a                    | 0.1 | 2   | mol/L |
    | 1   | C_b                    | 0.1 | 2   | mol/L |
    | 2   | T_R, reactor           | 50  | 200 | °C    |
    | 3   | T_K, jacket            | 50  | 150 | °C    |

    ## Rewards

    -(100 (C_b - 0.6))² at the end of the interval; -1e4 on failure.

    ## Starting State, Episode End

    (0.8, 0.5, 134.14, 130.0). Terminated when a state leaves the box; truncated after ``max_steps``
    intervals of 0.005 h (default 300).

    ## Arguments

    ``plant``: "actual" (default, alpha = 1.05, beta = 1.1), "estimated" or a
    :class:`~safectrl.models.klatt_engell.KlattEngellParams`.
    """

    task = _Task(klatt_engell.MODEL, klatt_engell.ESTIMATED, klatt_engell.ACTUAL, klatt_engell.EPISODE_STEPS,
                 klatt_engell.FAILURE_PENALTY, klatt_engell.initial_state,
                 lambda x, p: klatt_engell.failed(x), lambda x, u, p: klatt_engell.reward(x, u))
    obs_low = klatt_engell.STATE_LOW.copy()
    obs_high = klatt_engell.STATE_HIGH.copy()


class CartPoleContinuousEnv(_FullStateObservation, _TaskEnv):
    """Gymnasium's cart-pole driven by a continuous force (:mod:`safectrl.models.cartpole`).

    ## Action Space

    ``Box(1,)``, float64: the force F = 10 a of the paper's action a in [-1, 1].

    | Num | Action          | Min | Max | Unit |
    |-----|-----------------|-----|-----|------|
    | 0   | F, force        | -10 | 10  | N    |

    ## Observation Space

    ``Box(4,)``, float64: the full state (the box is the networks' normalisation range).

    | Num | Observation      | Min   | Max  | Unit  |
    |-----|------------------|-------|------|-------|
    | 0   | x, cart position | -4.8  | 4.8  | m     |
    | 1   | x_dot            | -3.1  | 3.1  | m/s   |
    | 2   | theta, pole      | -12°  | 12°  | rad   |
    | 3   | theta_dot        | -5    | 5    | rad/s |

    ## Rewards

    -1000 theta² - max(0, |x| - 0.25) at the end of the interval; -1e4 on failure.

    ## Starting State, Episode End

    (0, 0, 6°, 0). Terminated when |x| > 4.8 m or |theta| > 12°; truncated after ``max_steps`` explicit
    Euler steps of 0.02 s (default 250).

    ## Arguments

    ``plant``: "actual" (default: m_c 0.8, m_p 0.3, l 0.6), "estimated" (Gymnasium's) or a
    :class:`~safectrl.models.cartpole.CartPoleParams`.
    """

    task = _Task(cartpole.MODEL, cartpole.ESTIMATED, cartpole.ACTUAL, cartpole.EPISODE_STEPS,
                 cartpole.FAILURE_PENALTY, cartpole.initial_state,
                 lambda x, p: cartpole.failed(x), lambda x, u, p: cartpole.reward(x, u))
    obs_low = -np.array([cartpole.X_FAIL, 3.1, cartpole.THETA_FAIL, 5.0])
    obs_high = np.array([cartpole.X_FAIL, 3.1, cartpole.THETA_FAIL, 5.0])
