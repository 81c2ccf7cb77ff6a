"""Controllers of a user of ``safectrl study --controller``, outside the package (the workers import them by name)."""

from __future__ import annotations

import numpy as np

from safectrl.controllers.pi import NOMINAL_TUNING, PIController, PITuning


def detuned_pi(ctx) -> PIController:
    """The nominal PI with half its gains: a factory is a one-liner."""
    t = NOMINAL_TUNING
    return PIController(PITuning(Kp_P=t.Kp_P / 2, Ki_P=t.Ki_P / 2, Kp_T=t.Kp_T / 2, Ki_T=t.Ki_T / 2))


class ContextChecked:
    """The detuned PI, failing its episode unless it is reset with the seed its context announced."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.pi = detuned_pi(ctx)

    def reset(self, seed: int | None = None) -> None:
        if seed != self.ctx.seed:
            raise RuntimeError(f"built for seed {self.ctx.seed}, reset with {seed}")
        self.pi.reset(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.pi.act(obs)


NOT_CALLABLE = 3


def no_act(ctx) -> object:
    return object()


class ProportionalHeater:
    """A P controller of the test tree's heated tank (``heated_tank.py``): heater power from e_T, W."""

    def __init__(self, gain: float = 3000.0, bias: float = 12e3) -> None:
        self.gain, self.bias = gain, bias
        self.last = np.array([bias])

    def reset(self, seed: int | None = None) -> None:
        self.last = np.array([self.bias])

    def act(self, obs: np.ndarray) -> np.ndarray:
        if np.isfinite(obs[1]):  # a lost reading (NaN): hold the last input
            self.last = np.clip([self.bias + self.gain * obs[1]], 0.0, 30e3)
        return self.last


def tank_p(ctx) -> ProportionalHeater:
    return ProportionalHeater()


class Constant:
    """Always the same input, physical units (e.g. the reactor's most heat: f_I = 2.5 kg/h, T_c = 350 K)."""

    def __init__(self, u) -> None:
        self.u = np.asarray(u, dtype=float)

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.u.copy()

