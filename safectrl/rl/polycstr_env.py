"""Gymnasium environments of the polymerisation CSTR: one reactor, and N reactors stepped in one call.

Both classes share :class:`_Reactors`, which holds N reactors as arrays and advances them through the
batched model (:meth:`safectrl.models.core.ODEModel.step_batch`), so the single and the vector env give
identical trajectories for the same seeds and actions.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from safectrl.models import polycstr as pc

_OBS_LOW = np.array([-50.0, -50.0, 200.0, -1000.0, -500.0, pc.U_LOW[0], pc.U_LOW[1]])
_OBS_HIGH = np.array([1000.0, 1000.0, 700.0, 1000.0, 500.0, pc.U_HIGH[0], pc.U_HIGH[1]])
INFO_KEYS = ("state", "setpoint", "cost", "violation", "failure", "clipped")


def observation_space() -> gym.spaces.Box:
    """Observation box, physical units, layout :data:`safectrl.models.polycstr.OBSERVATIONS`."""
    return gym.spaces.Box(_OBS_LOW, _OBS_HIGH, dtype=np.float64)


def action_space() -> gym.spaces.Box:
    """Action box (f_I kg/h, T_c K)."""
    return gym.spaces.Box(pc.U_LOW.copy(), pc.U_HIGH.copy(), dtype=np.float64)


def _noise_sigma(noise: bool | pc.MeasurementNoise) -> np.ndarray | None:
    if noise is False or noise is None:
        return None
    spec = pc.MeasurementNoise() if noise is True else noise
    if not isinstance(spec, pc.MeasurementNoise):
        raise TypeError(f"noise must be a bool or a MeasurementNoise, got {type(noise).__name__}")
    return np.array([spec.A, spec.P, spec.T])


class _Reactors:
    """N reactors of one scenario as arrays: the physics, reward and flags both envs share."""

    def __init__(
        self,
        n: int,
        scenario: str,
        plant: pc.PolyCSTRParams,
        noise: bool | pc.MeasurementNoise,
        max_steps: int,
    ) -> None:
        if not isinstance(plant, pc.PolyCSTRParams):
            raise TypeError(f"plant must be a PolyCSTRParams, got {type(plant).__name__}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.n = n
        self.scenario = pc.get_scenario(scenario)
        self.plant = plant
        self.p = pc.MODEL.param_vector(plant)
        self.sigma = _noise_sigma(noise)
        self.max_steps = int(max_steps)
        self.setpoint = np.array(self.scenario.setpoint, dtype=float)
        self.x = np.zeros((n, pc.MODEL.nx))
        self.u_prev = np.zeros((n, pc.MODEL.nu))
        self.steps = np.zeros(n, dtype=np.int64)
        self.obs = np.zeros((n, len(pc.OBSERVATIONS)))

    def set_plant(self, plant: pc.PolyCSTRParams) -> None:
        if not isinstance(plant, pc.PolyCSTRParams):
            raise TypeError(f"options['plant'] must be a PolyCSTRParams, got {type(plant).__name__}")
        self.plant = plant
        self.p = pc.MODEL.param_vector(plant)

    def _observe(self, i: np.ndarray, rngs: list[np.random.Generator]) -> None:
        measured = self.x[i][:, [0, 3, 4]].copy()  # A, P, T
        if self.sigma is not None:
            for row, k in enumerate(i):
                measured[row] += self.sigma * rngs[k].standard_normal(3)
        self.obs[i, 0:3] = measured
        self.obs[i, 3] = self.setpoint[0] - measured[:, 1]
        self.obs[i, 4] = self.setpoint[1] - measured[:, 2]
        self.obs[i, 5:7] = self.u_prev[i]

    def reset(self, i: np.ndarray, rngs: list[np.random.Generator]) -> None:
        """Start reactors ``i`` afresh, drawing from their generators in a fixed order."""
        for k in i:
            self.x[k], self.u_prev[k] = self.scenario.initial(rngs[k], self.plant)
        self.steps[i] = 0
        self._observe(i, rngs)

    def info(self, i: np.ndarray, clipped: np.ndarray, failure: np.ndarray) -> dict[str, np.ndarray]:
        T = self.x[i, 4]
        return {
            "state": self.x[i].copy(),
            "setpoint": np.tile(self.setpoint, (len(i), 1)),
            "cost": np.where(np.isfinite(T), np.maximum(0.0, T - pc.T_MAX), np.inf),
            "violation": ~(T <= pc.T_MAX),
            "failure": failure,
            "clipped": clipped,
        }

    @staticmethod
    def check_actions(actions: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Validate actions; clip finite out-of-bound ones. Returns (actions (n, 2), clipped (n,))."""
        try:
            a = np.asarray(actions, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be numeric with shape {shape}, got {actions!r}") from err
        if a.shape != shape:
            raise ValueError(f"action must have shape {shape} (f_I kg/h, T_c K), got shape {a.shape}")
        a = a.reshape(-1, pc.MODEL.nu)
        bad = ~np.isfinite(a)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            where = f" in reactor {row}" if len(shape) == 2 else ""
            raise ValueError(f"action{where} has non-finite {pc.INPUTS[col]} = {a[row, col]}")
        clipped_a = np.clip(a, pc.U_LOW, pc.U_HIGH)
        return clipped_a, np.any(clipped_a != a, axis=1)

    def step(
        self, i: np.ndarray, u: np.ndarray, clipped: np.ndarray, rngs: list[np.random.Generator]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Advance reactors ``i`` one interval with inputs ``u``; returns reward, terminated, truncated, info."""
        x_next = pc.MODEL.step_batch(self.x[i], u, self.p)
        finite = np.all(np.isfinite(x_next), axis=1)
        failure = ~finite | ~(x_next[:, 4] < pc.T_RUNAWAY)
        self.x[i] = x_next
        self.u_prev[i] = u
        self.steps[i] += 1
        ok = i[finite]
        if len(ok):
            self._observe(ok, rngs)  # a non-finite state keeps the last finite observation
        e_P = self.setpoint[0] - x_next[:, 3]
        e_T = self.setpoint[1] - x_next[:, 4]
        reward = -(e_P**2 + e_T**2)
        if failure.any():
            # Failure ends the episode; charge every remaining interval at least the runaway's tracking
            # cost, so that failing early can never pay off against staying in operation.
            floor = (pc.T_RUNAWAY - self.setpoint[1]) ** 2
            stage = np.where(np.isfinite(reward), np.maximum(-reward, floor), floor)
            remaining = self.max_steps - self.steps[i] + 1
            reward = np.where(failure, -stage * remaining, reward)
        truncated = ~failure & (self.steps[i] >= self.max_steps)
        return reward, failure, truncated, self.info(i, clipped, failure)


class PolyCSTREnv(gym.Env):
    """Exothermic free-radical polymerisation in a jacketed CSTR (Durkin et al., 2025).

    The reactor is driven from its initial state to a setpoint in polymer concentration P and temperature
    T by the initiator feed f_I and the coolant temperature T_c, held over 30-minute intervals for 100 h.
    Exceeding T_max = 365 K is an operating-limit violation (reported in ``info``, not hidden in the
    reward); reaching 400 K is a thermal runaway and ends the episode. The model, its parameters and the
    scenarios are in :mod:`safectrl.models.polycstr`.

    ## Action Space

    ``Box(2,)``, float64, physical units. Finite actions outside the bounds are clipped and
    ``info["clipped"]`` is True; NaN, inf or a wrong shape raise ``ValueError``.

    | Num | Action                    | Min | Max | Unit |
    |-----|---------------------------|-----|-----|------|
    | 0   | f_I, initiator feed       | 0   | 2.5 | kg/h |
    | 1   | T_c, coolant temperature  | 300 | 350 | K    |

    ## Observation Space

    ``Box(7,)``, float64, physical units (A, P, T measured, with noise if enabled):

    | Num | Observation                   | Min   | Max  | Unit  |
    |-----|-------------------------------|-------|------|-------|
    | 0   | A, monomer concentration      | -50   | 1000 | kg/m³ |
    | 1   | P, polymer concentration      | -50   | 1000 | kg/m³ |
    | 2   | T, reactor temperature        | 200   | 700  | K     |
    | 3   | e_P = P_sp - P                | -1000 | 1000 | kg/m³ |
    | 4   | e_T = T_sp - T                | -500  | 500  | K     |
    | 5   | f_I applied last interval     | 0     | 2.5  | kg/h  |
    | 6   | T_c applied last interval     | 300   | 350  | K     |

    ## Rewards

    ``-(e_P² + e_T²)`` at the end of each interval, from the true (noise-free) state. If the episode fails,
    the last reward charges every remaining interval at least ``(400 - T_sp)²``.

    ## Starting State

    Per scenario (``scenario=``): ``startup`` — empty reactor, A = 440·U(0.75, 1.25) kg/m³,
    T = 350 + U(-5, 5) K, setpoint (100, 350); ``grade_down`` — steady state at P = 100 with A, I scaled
    by U(0.98, 1.02) and T + U(-1, 1), setpoint (70, 350); ``grade_up`` — the same from P = 70 to 100.

    ## Episode End

    Terminated on failure: T >= 400 K or a non-finite state (the observation then repeats the last finite
    one). Truncated after ``max_steps`` intervals (200 = 100 h).

    ## Info

    ``state`` (A, I, R, P, T) true state; ``setpoint`` (P_sp, T_sp); ``cost`` = max(0, T - 365) K, the
    separate constraint signal; ``violation`` (T > 365 K); ``failure``; ``clipped``.

    ## Arguments

    ``scenario``: "startup" | "grade_down" | "grade_up". ``plant``: a
    :class:`~safectrl.models.polycstr.PolyCSTRParams` (plant-model mismatch; can also be changed per
    episode with ``reset(options={"plant": ...})``). ``noise``: False, True (nominal sigma) or a
    :class:`~safectrl.models.polycstr.MeasurementNoise`. ``max_steps``: episode length in intervals.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        scenario: str = "startup",
        plant: pc.PolyCSTRParams | None = None,
        noise: bool | pc.MeasurementNoise = False,
        max_steps: int = pc.EPISODE_STEPS,
    ) -> None:
        self._core = _Reactors(1, scenario, plant or pc.PolyCSTRParams(), noise, max_steps)
        self.observation_space = observation_space()
        self.action_space = action_space()
        self._all = np.arange(1)
        self._done = True

    @property
    def scenario(self) -> pc.Scenario:
        return self._core.scenario

    @property
    def plant(self) -> pc.PolyCSTRParams:
        return self._core.plant

    @property
    def state(self) -> np.ndarray:
        """True state (A, I, R, P, T), physical units (a copy)."""
        return self._core.x[0].copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "plant" in options:
            self._core.set_plant(options["plant"])
        self._core.reset(self._all, [self.np_random])
        self._done = False
        info = self._core.info(self._all, np.zeros(1, bool), np.zeros(1, bool))
        return self._core.obs[0].copy(), _unbatch(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        u, clipped = _Reactors.check_actions(action, (pc.MODEL.nu,))
        reward, term, trunc, info = self._core.step(self._all, u, clipped, [self.np_random])
        self._done = bool(term[0] or trunc[0])
        return self._core.obs[0].copy(), float(reward[0]), bool(term[0]), bool(trunc[0]), _unbatch(info)


def _unbatch(info: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in info.items():
        out[k] = v[0] if v.ndim > 1 else v[0].item()
    return out


class PolyCSTRVectorEnv(VectorEnv):
    """N polymerisation reactors advanced in one batched, compiled call (Gymnasium vector API).

    Same arguments as :class:`PolyCSTREnv` plus ``num_envs``. Sub-env ``k`` seeded with ``seed + k``
    reproduces :class:`PolyCSTREnv` seeded with ``seed + k`` exactly. Autoreset is Gymnasium's default
    next-step mode: the step after an episode ends resets that reactor (its action is ignored, reward 0).
    Info values are arrays over reactors, each with its ``_key`` mask.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        scenario: str = "startup",
        plant: pc.PolyCSTRParams | None = None,
        noise: bool | pc.MeasurementNoise = False,
        max_steps: int = pc.EPISODE_STEPS,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self._core = _Reactors(self.num_envs, scenario, plant or pc.PolyCSTRParams(), noise, max_steps)
        self.single_observation_space = observation_space()
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] = []
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._all = np.arange(self.num_envs)

    @property
    def states(self) -> np.ndarray:
        """True states, shape (num_envs, 5) (a copy)."""
        return self._core.x.copy()

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + k for k in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} environments")
            seeds = list(seed)
        if seed is not None or not self._rngs:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        if options and "plant" in options:
            self._core.set_plant(options["plant"])
        self._core.reset(self._all, self._rngs)
        self._autoreset[:] = False
        info = self._core.info(self._all, np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool))
        return self._core.obs.copy(), _with_masks(info)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._rngs:
            raise RuntimeError("step() called before reset()")
        u, clipped = _Reactors.check_actions(actions, (self.num_envs, pc.MODEL.nu))
        reward = np.zeros(self.num_envs)
        term = np.zeros(self.num_envs, dtype=bool)
        trunc = np.zeros(self.num_envs, dtype=bool)
        failure = np.zeros(self.num_envs, dtype=bool)
        restart = np.flatnonzero(self._autoreset)
        live = np.flatnonzero(~self._autoreset)
        if len(restart):
            self._core.reset(restart, self._rngs)
        if len(live):
            r, te, tr, inf = self._core.step(live, u[live], clipped[live], self._rngs)
            reward[live], term[live], trunc[live], failure[live] = r, te, tr, inf["failure"]
        clipped[restart] = False
        info = self._core.info(self._all, clipped, failure)
        self._autoreset = term | trunc
        return self._core.obs.copy(), reward, term, trunc, _with_masks(info)


def _with_masks(info: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = dict(info)
    for k, v in info.items():
        out[f"_{k}"] = np.ones(len(v), dtype=bool)
    return out
