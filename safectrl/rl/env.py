"""The one Gymnasium environment of safectrl, built from a :class:`~safectrl.models.task.Task`: one plant, and N
plants stepped in one call.

Both classes share :class:`_Plants`, which holds N plants of one task as arrays and advances them through the
task's compiled transition (:meth:`safectrl.models.task.Task.transition`: the model's interval, the stage
cost and the limits in one C call), so the single and the vector env give identical trajectories for the
same seeds and actions. Every registered id (``safectrl/PolyCSTR-v0``,
``safectrl/Glucose-v0``, ...; :data:`safectrl.models.registry.TASKS`) is this env on its task; the tables of
actions, observations, rewards and limits of each are in the task's model module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from safectrl.models.core import all_true, any_true
from safectrl.models.registry import get_task
from safectrl.models.task import Task

#: Keys of every step's ``info`` (arrays over plants in the vector env).
INFO_KEYS = ("state", "time", "setpoint", "cost", "violation", "failure", "clipped")


#: Codes of ``info["faults"]``, one per measured entry: the reading is true, NaN, or the sensor's last one.
FAULT_NONE, FAULT_NAN, FAULT_DROPOUT = 0, 1, 2


@dataclass(frozen=True)
class SensorFaults:
    """Sensor faults the env injects, independently per measured entry and interval (not at reset).

    Each entry draws one uniform number u per interval: u < ``nan_rate`` reads NaN (a lost reading),
    otherwise u < ``nan_rate + dropout_rate`` repeats the sensor's last finite reading (a frozen sensor).
    The draws come from a generator of their own, seeded from the env's seed and ``seed_offset``, so that
    the initial states and the noise are those of the same seed without faults.
    """

    nan_rate: float = 0.0  # probability per entry and interval that the reading is NaN
    dropout_rate: float = 0.0  # probability per entry and interval that the reading repeats the last one
    seed_offset: int = 17  # the fault generator's seed is (env seed, seed_offset)

    def __post_init__(self) -> None:
        for name in ("nan_rate", "dropout_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"SensorFaults.{name} must be a probability in [0, 1], got {rate!r}")
        if self.nan_rate + self.dropout_rate > 1.0:
            raise ValueError(f"SensorFaults.nan_rate + dropout_rate must be <= 1, got "
                             f"{self.nan_rate} + {self.dropout_rate}")
        if not isinstance(self.seed_offset, (int, np.integer)) or self.seed_offset < 0:
            raise ValueError(f"SensorFaults.seed_offset must be an integer >= 0, got {self.seed_offset!r}")

    @property
    def active(self) -> bool:
        return self.nan_rate > 0 or self.dropout_rate > 0

    def generator(self, seed: int) -> np.random.Generator:
        """The fault generator of an env seeded with ``seed`` (the seed Gymnasium's seeding used)."""
        # -1 is Gymnasium's seed of a generator set directly; SeedSequence takes non-negative words only.
        return np.random.default_rng([int(seed) % (1 << 128), int(self.seed_offset)])


def _faults(faults: Any) -> SensorFaults | None:
    if faults is None or isinstance(faults, SensorFaults):
        return faults
    raise TypeError(f"faults must be None or a SensorFaults, got {faults!r}")


def _task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def _noise_sigma(task: Task, noise: Any) -> np.ndarray | None:
    """Noise standard deviations per measured entry: False/None none, True the task's, or one per entry."""
    if noise is False or noise is None:
        return None
    if noise is True:
        if task.measurement_std is None:
            raise ValueError(f"{task.name} defines no measurement noise; pass noise=<one std per measured entry>")
        return np.asarray(task.measurement_std, dtype=float)
    values = [getattr(noise, f.name) for f in fields(noise)] if is_dataclass(noise) else noise
    try:
        sigma = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"noise must be a bool, a dataclass of std values or a sequence, got {noise!r}") from None
    if task.measurement_std is not None and len(sigma) != len(task.measurement_std):
        raise ValueError(f"noise needs {len(task.measurement_std)} std values for {task.name}, got {len(sigma)}")
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError(f"noise std values must be finite and >= 0, got {sigma}")
    return sigma


class _Plants:
    """N plants of one task and scenario as arrays: the physics, reward and flags both envs share."""

    def __init__(self, n: int, task: Task, scenario: str | None, plant: Any, noise: Any,
                 max_steps: int | None, faults: Any = None):
        self.task = task
        self.faults = _faults(faults)
        self.fault_rngs: list[np.random.Generator] = []  # one per plant, set by seed_faults
        self.n = n
        self.scenario = task.scenario(scenario)
        self.set_plant(plant)
        self.sigma = _noise_sigma(task, noise)
        self.max_steps = task.episode_steps if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        m = task.model
        # bounds as (1, nu) rows: NumPy broadcasts arrays of equal ndim about twice as fast
        self._u_low, self._u_high = m.u_low[None, :], m.u_high[None, :]
        self.setpoint = np.array(self.scenario.setpoint, dtype=float)
        self._sp_rows = np.zeros((0, len(self.setpoint)))
        self.x = np.zeros((n, m.nx))
        self.u_prev = np.zeros((n, m.nu))
        self.steps = np.zeros(n, dtype=np.int64)
        self.obs = np.zeros((n, len(task.observations)))
        self.y: np.ndarray | None = None  # (n, ny) the readings delivered last
        self.y_held: np.ndarray | None = None  # (n, ny) each sensor's last finite reading (dropout's)
        self.fault_codes: np.ndarray | None = None  # (n, ny) FAULT_* of the last readings

    def seed_faults(self, seeds: Sequence[int]) -> None:
        """One fault generator per plant from the seeds the plants' generators were made with."""
        if self.faults is not None:
            self.fault_rngs = [self.faults.generator(s) for s in seeds]

    def set_plant(self, plant: Any) -> None:
        self.plant = self.task.plant(plant)
        self.p = self.task.model.param_vector(self.plant)

    def _sp(self, k: int) -> np.ndarray:
        """The setpoint of ``k`` plants (k, n_sp), read-only: shared by every call; copy before handing out."""
        if self._sp_rows.shape[0] != k:
            self._sp_rows = np.tile(self.setpoint, (k, 1))
            self._sp_rows.flags.writeable = False
        return self._sp_rows

    def _rows(self, i: np.ndarray) -> np.ndarray | slice:
        """An index of plants ``i`` (ascending, distinct) into the arrays: a slice when they are all of them,
        which NumPy reads and writes several microseconds faster than an index array."""
        return slice(None) if len(i) == self.n else i

    def _observe(self, i: np.ndarray, rngs: list[np.random.Generator], first: bool = False) -> None:
        at = self._rows(i)
        y = np.array(self.task.measure(self.x[at], self.plant), dtype=float).reshape(len(i), -1)
        if self.sigma is not None:
            for row, k in enumerate(i):
                y[row] += self.sigma * rngs[k].standard_normal(len(self.sigma))
        if self.y is None:
            self.y = np.zeros((self.n, y.shape[1]))
            self.y_held = np.zeros((self.n, y.shape[1]))
            self.fault_codes = np.zeros((self.n, y.shape[1]), dtype=np.int8)
        faulty = self.faults is not None and self.faults.active
        if not first and faulty:
            f = self.faults
            codes = np.zeros(y.shape, dtype=np.int8)
            draw = np.stack([self.fault_rngs[k].random(y.shape[1]) for k in i])
            codes[draw < f.nan_rate] = FAULT_NAN
            codes[(draw >= f.nan_rate) & (draw < f.nan_rate + f.dropout_rate)] = FAULT_DROPOUT
            y = np.where(codes == FAULT_DROPOUT, self.y_held[at], y)
            y[codes == FAULT_NAN] = np.nan
            self.fault_codes[at] = codes
        elif faulty:
            self.fault_codes[at] = FAULT_NONE
        y_prev = y if first else self.y[at]
        self.obs[at] = self.task.observe(y, y_prev, self.u_prev[at], self.steps[at].astype(float),
                                         self._sp(len(i)))
        self.y[at] = y
        if faulty:  # only a frozen sensor reads the last finite reading
            self.y_held[at] = np.where(np.isfinite(y), y, self.y_held[at])

    def reset(self, i: np.ndarray, rngs: list[np.random.Generator]) -> None:
        """Start plants ``i`` afresh, drawing from their generators in a fixed order."""
        for k in i:
            self.x[k], self.u_prev[k] = self.scenario.initial(rngs[k], self.plant)
        self.steps[i] = 0
        self._observe(i, rngs, first=True)

    def info(self, i: np.ndarray, clipped: np.ndarray, failure: np.ndarray, cost: np.ndarray | None = None,
             one: bool = False) -> dict[str, Any]:
        """The info of plants ``i``; ``cost`` their operating limits' exceedance if already known. ``one``:
        the info of the single plant ``i[0]`` as the single env returns it, plain numbers (its state,
        setpoint and faults 1-d arrays), built directly rather than from the batch's arrays."""
        at = self._rows(i)
        if cost is None:
            cost = self.task.exceedance(self.x[at], self.plant)
        if one:
            k, c = i[0], float(cost[0])
            values = (self.x[k].copy(), float(self.steps[k]) * self.task.model.dt, self.setpoint.copy(), c,
                      not c <= 0, bool(failure[0]), bool(clipped[0]))
        else:
            values = (self.x[at].copy(), self.steps[at] * self.task.model.dt, self._sp(len(i)).copy(), cost,
                      ~(cost <= 0), failure, clipped)
        out: dict[str, Any] = dict(zip(INFO_KEYS, values))
        if self.faults is not None:
            out["faults"] = self.fault_codes[i[0] if one else at].copy()
        return out

    def check_actions(self, actions: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Validate actions; clip finite out-of-bound ones. Returns (actions (n, nu), clipped (n,))."""
        m = self.task.model
        try:
            a = np.asarray(actions, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be numeric with shape {shape}, got {actions!r}") from err
        if a.shape != shape:
            raise ValueError(f"action must have shape {shape} ({', '.join(m.inputs)}), got shape {a.shape}")
        a = a.reshape(-1, m.nu)
        clipped_a = np.maximum(a, self._u_low)
        np.minimum(clipped_a, self._u_high, out=clipped_a)
        inside = clipped_a == a  # NaN compares unequal: only finite actions inside the bounds are equal
        if all_true(inside):
            return clipped_a, np.zeros(len(a), dtype=bool)
        finite = np.isfinite(a)
        if not all_true(finite):
            row, col = np.argwhere(~finite)[0]
            where = f" in env {row}" if len(shape) == 2 else ""
            raise ValueError(f"action{where} has non-finite {m.inputs[col]} = {a[row, col]}")
        return clipped_a, ~inside.all(axis=1)

    def step(self, i: np.ndarray, u: np.ndarray, clipped: np.ndarray, rngs: list[np.random.Generator],
             one: bool = False):
        """Advance plants ``i`` one interval with inputs ``u``; returns reward, terminated, truncated, info
        (that of :meth:`info` with ``one``)."""
        sp, at = self._sp(len(i)), self._rows(i)
        # failed states may lie outside the cost's domain (NaN, inf); their reward is replaced below
        m = self.task.model
        step = self.task.transition(self.x[at], u, self.p, sp, self.steps[at] * m.dt if m.time_varying else 0.0)
        x_next, cost, failure = step.x, step.stage_cost, step.failed
        self.x[at] = x_next
        self.u_prev[at] = u
        steps = self.steps[at] + 1
        self.steps[at] = steps
        failing = any_true(failure)
        ok = i[np.isfinite(x_next).all(axis=1)] if failing else i
        if len(ok):
            self._observe(ok, rngs)  # a non-finite state keeps the last finite observation
        reward = -cost
        if failing:
            remaining = (self.max_steps - steps + 1).astype(float)
            reward = np.where(failure, self.task.failure_reward(cost, remaining, sp), reward)
        truncated = ~failure & (steps >= self.max_steps)
        return reward, failure, truncated, self.info(i, clipped, failure, step.exceedance, one)


class TaskEnv(gym.Env):
    """One plant of a :class:`~safectrl.models.task.Task` (Gymnasium API, physical units throughout).

    The task's inputs are held over each control interval. An interval ending outside the task's operating
    limits is a *violation*, reported in ``info`` beside the reward (``cost`` = how far outside), not hidden
    in it; leaving the failure set, or a non-finite state, ends the episode and is charged the task's
    failure reward.

    ## Action Space

    ``Box(nu,)``, float64, the model's input bounds. Finite actions outside the bounds are clipped and
    ``info["clipped"]`` is True; NaN, inf or a wrong shape raise ``ValueError``.

    ## Observation Space

    ``Box(n_obs,)``, float64: the task's observations, built from the measurements (with noise if enabled).
    After a non-finite state the observation repeats the last finite one. With ``faults``, an entry of the
    observation built from a NaN reading is NaN (e.g. e_P = P_sp - NaN), so it may leave the box.

    ## Rewards

    Minus the task's stage cost at the end of each interval, from the true (noise-free) state; the failing
    interval gets the task's failure reward instead.

    ## Starting State

    The scenario's (``scenario=``), drawn from the env's generator.

    ## Episode End

    Terminated on failure; truncated after ``max_steps`` intervals (default: the task's episode length).

    ## Info

    ``state`` true state; ``time`` since the episode started (model time unit); ``setpoint``; ``cost``,
    the summed exceedance of the operating limits (the separate constraint signal); ``violation``;
    ``failure``; ``clipped``; with ``faults`` only, ``faults``: int8 (ny,), per measured entry
    :data:`FAULT_NONE`, :data:`FAULT_NAN` or :data:`FAULT_DROPOUT` (left out without ``faults`` so that
    clean runs record what they always did).

    ## Arguments

    ``task``: a Task or a registered id. ``scenario``: a scenario name (default: the task's first).
    ``plant``: a plant name of the task (e.g. "nominal", "actual") or a parameter dataclass of its model
    (plant-model mismatch; also ``reset(options={"plant": ...})``); default: the task's default plant.
    ``noise``: False, True (the task's sensor noise) or one standard deviation per measured entry (a
    sequence or a dataclass). ``max_steps``: episode length in intervals. ``faults``: None or a
    :class:`SensorFaults` (NaN or frozen readings at given rates, e.g.
    ``gym.make(id, faults=SensorFaults(nan_rate=0.02))``); rates of 0 leave every trajectory as without
    faults.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task | str, scenario: str | None = None, plant: Any = None, noise: Any = False,
                 max_steps: int | None = None, faults: SensorFaults | None = None) -> None:
        self.task = _task(task)
        self._core = _Plants(1, self.task, scenario, plant, noise, max_steps, faults)
        low, high = self.task.observation_box(self._core.max_steps)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float64)
        m = self.task.model
        self.action_space = gym.spaces.Box(m.u_low.copy(), m.u_high.copy(), dtype=np.float64)
        self._all = np.arange(1)
        self._done = True

    @property
    def scenario(self):
        return self._core.scenario

    @property
    def plant(self) -> Any:
        return self._core.plant

    @property
    def max_steps(self) -> int:
        return self._core.max_steps

    @property
    def state(self) -> np.ndarray:
        """True state, physical units (a copy)."""
        return self._core.x[0].copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._core.fault_rngs:
            self._core.seed_faults([self.np_random_seed])
        if options and "plant" in options:
            self._core.set_plant(options["plant"])
        self._core.reset(self._all, [self.np_random])
        self._done = False
        info = self._core.info(self._all, np.zeros(1, bool), np.zeros(1, bool), one=True)
        return self._core.obs[0].copy(), info

    def rng_state(self) -> dict[str, Any]:
        """The env's random generators (initial states and noise, faults) as JSON, for a training run to
        continue the same streams after a restart (:mod:`safectrl.rl.resume`)."""
        return {"np_random": self.np_random.bit_generator.state,
                "faults": [g.bit_generator.state for g in self._core.fault_rngs]}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Put the generators into a state given by :meth:`rng_state` (after a seeded :meth:`reset`)."""
        from safectrl.rl.resume import set_generator_state

        faults = list(state.get("faults", []))
        if len(faults) != len(self._core.fault_rngs):
            raise ValueError(f"the stored env state has {len(faults)} fault generator(s), this env "
                             f"{len(self._core.fault_rngs)}: it was made with other faults")
        set_generator_state(self.np_random, state["np_random"])
        for g, s in zip(self._core.fault_rngs, faults):
            set_generator_state(g, s)

    def step(self, action: Any):
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        u, clipped = self._core.check_actions(action, (self.task.model.nu,))
        reward, term, trunc, info = self._core.step(self._all, u, clipped, [self.np_random], one=True)
        self._done = bool(term[0] or trunc[0])
        return self._core.obs[0].copy(), float(reward[0]), bool(term[0]), bool(trunc[0]), info


class TaskVectorEnv(VectorEnv):
    """N plants of one task advanced in one batched, compiled call (Gymnasium vector API).

    Same arguments as :class:`TaskEnv` plus ``num_envs``. Sub-env ``k`` seeded with ``seed + k`` reproduces
    :class:`TaskEnv` seeded with ``seed + k`` exactly. Autoreset is Gymnasium's default next-step mode: the
    step after an episode ends resets that plant (its action is ignored, reward 0). Info values are arrays
    over plants, each with its ``_key`` mask.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, task: Task | str, num_envs: int = 1, scenario: str | None = None, plant: Any = None,
                 noise: Any = False, max_steps: int | None = None,
                 faults: SensorFaults | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task = _task(task)
        self.num_envs = int(num_envs)
        self._core = _Plants(self.num_envs, self.task, scenario, plant, noise, max_steps, faults)
        low, high = self.task.observation_box(self._core.max_steps)
        m = self.task.model
        self.single_observation_space = gym.spaces.Box(low, high, dtype=np.float64)
        self.single_action_space = gym.spaces.Box(m.u_low.copy(), m.u_high.copy(), dtype=np.float64)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] = []
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._all = np.arange(self.num_envs)

    @property
    def states(self) -> np.ndarray:
        """True states, shape (num_envs, nx) (a copy)."""
        return self._core.x.copy()

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + k for k in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} environments")
            seeds = list(seed)
        if seed is not None or not self._rngs:
            made = [seeding.np_random(s) for s in seeds]
            self._rngs = [rng for rng, _ in made]
            self._core.seed_faults([s for _, s in made])
        if options and "plant" in options:
            self._core.set_plant(options["plant"])
        self._core.reset(self._all, self._rngs)
        self._autoreset[:] = False
        info = self._core.info(self._all, np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool))
        return self._core.obs.copy(), _with_masks(info)

    def step(self, actions: Any):
        if not self._rngs:
            raise RuntimeError("step() called before reset()")
        u, clipped = self._core.check_actions(actions, (self.num_envs, self.task.model.nu))
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


def make_env(env_id: str, **kwargs: Any) -> TaskEnv:
    """The env of a registered id without Gymnasium's checking wrappers (what studies and tests step)."""
    return TaskEnv(env_id, **kwargs)
