"""A control task: one plant filled in the same way for every model, so that one env, one NMPC builder and one
study serve them all.

A :class:`Task` says everything an environment, a controller designer or a study needs to know about a plant
besides its equations (which live in the task's :class:`~safectrl.models.core.ODEModel`):

* **names**: states and inputs (from the model), observations;
* **parameters**: the nominal ones (the model a controller is designed with; RL-ACR's "estimated" model) and
  the actual plant's (the plant that is not the model: the reactor's mismatch, RL-ACR's "actual" plants),
  plus any other named plant;
* **scenarios**: where an episode starts (from a ``np.random.Generator``) and the setpoint it tracks;
* **measurement and observation**: what the sensors measure of the state, their noise, and the observation
  built from the measurements;
* **reward** as a stage cost written once against a math namespace (so NumPy gives the env's reward and
  CasADi an NMPC's objective), and what a failing interval is charged;
* **limits**: hard operating limits (an interval ending outside is a *violation*, reported beside the reward
  as a separate cost signal) and the *failure* set (leaving it ends the episode);
* the control interval (the model's ``dt``) and the episode length.

The functions of a task work on a batch: states ``x`` (n, nx), inputs ``u`` (n, nu), measurements ``y``
(n, ny), setpoints (n, n_sp), all in physical units; the math-namespace functions (stage cost, limit
outputs) get sequences of columns, like a right-hand side.

Every decision-maker that acts on a task follows :class:`safectrl.common.protocol.DecisionMaker`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import casadi as ca
import numpy as np

from safectrl.models import compiled
from safectrl.models.core import ODEModel, all_true
from safectrl.models.mathns import CASADI, NUMPY, MathNamespace

#: The two plant names every task defines (others are aliases or further variants).
NOMINAL, ACTUAL = "nominal", "actual"


class Scenario(Protocol):
    """Where an episode starts and what it tracks."""

    name: str
    setpoint: tuple[float, ...]  # physical units, the task's `setpoint_names` order; () if none

    def initial(self, rng: np.random.Generator, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """The initial state (nx,) and the input applied before the episode (nu,), physical units."""
        ...


@dataclass(frozen=True)
class FixedStart:
    """A scenario that starts from the same state every episode (it may depend on the plant's parameters)."""

    name: str
    state: Callable[[Any], np.ndarray]  # params -> initial state (nx,)
    u_prev: tuple[float, ...]  # input before the episode, physical units
    setpoint: tuple[float, ...] = ()
    description: str = field(default="", compare=False)

    def initial(self, rng: np.random.Generator, params: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.state(params), dtype=float), np.array(self.u_prev, dtype=float)


@dataclass(frozen=True)
class Limit:
    """``low <= output(x) <= high`` for one named output of the state (physical units).

    ``output`` is written against a math namespace, ``output(x, p, m)`` with ``x`` a sequence of state
    columns and ``p`` the parameters, so an NMPC or a safety filter gets the same bound as a CasADi
    expression; None means the state called ``name``.
    """

    name: str
    low: float = -math.inf
    high: float = math.inf
    unit: str = ""
    output: Callable[..., Any] | None = None

    def value(self, x: np.ndarray, params: Any, states: Sequence[str], m: MathNamespace = NUMPY):
        """The output at states ``x`` (n, nx) as (n,), or an expression for a sequence of symbols."""
        cols = [x[..., i] for i in range(len(states))] if isinstance(x, np.ndarray) else list(x)
        if self.output is None:
            return cols[states.index(self.name)]
        return self.output(cols, params, m)

    def excess(self, v: Any, m: MathNamespace = NUMPY) -> Any:
        """max(0, low - v, v - high): how far a finite ``v`` lies outside [low, high], in namespace ``m``."""
        return m.fmax(0.0, m.fmax(self.low - v, v - self.high))

    def exceedance(self, v: np.ndarray) -> np.ndarray:
        """How far ``v`` lies outside [low, high], >= 0; inf where ``v`` is not finite."""
        return np.where(np.isfinite(v), self.excess(v), np.inf)


class Transition(NamedTuple):
    """One interval of ``n`` plants, as :meth:`Task.transition` returns it."""

    x: np.ndarray  # (n, nx) states at the interval end; NaN where even CVODES failed
    stage_cost: np.ndarray  # (n,) the task's stage cost there (the reward's negative)
    exceedance: np.ndarray  # (n,) summed exceedance of the operating limits there, inf if not finite
    failed: np.ndarray  # (n,) bool: outside the failure set, or not finite


@dataclass(frozen=True)
class Task:
    """One plant as every part of safectrl sees it; see the module docstring.

    Args:
        name: short label used in tables ("PolyCSTR", "Glucose", ...).
        model: the equations, names of states and inputs, interval ``dt``, input bounds.
        plants: named parameter sets; must contain ``"nominal"`` (the controllers' model) and ``"actual"``
            (the plant that differs from it); further names are aliases or variants.
        default_plant: the plant an env runs when none is given.
        scenarios: by name; the first is the default.
        episode_steps: intervals per episode.
        observations: observation names, in vector order.
        obs_low, obs_high: the observation box (an observation called ``"step"`` gets ``high = max_steps``).
        measure: ``(x (n, nx), params) -> y (n, ny)``, what the sensors read, noise-free.
        measurement_std: 1-sigma noise per measured entry for ``noise=True``; None if the task defines none.
        observe: ``(y, y_prev, u_prev, step, setpoint) -> obs (n, n_obs)``: the observation from the
            measurement, the previous measurement, the input applied last interval, the intervals done and
            the setpoint.
        stage_cost: ``(x, u, setpoint, p, m) -> cost``, the reward's negative at the interval end ``x`` after
            input ``u``; columns and a math namespace, as a right-hand side.
        failure_reward: ``(stage_cost (n,), remaining intervals (n,), setpoint (n, n_sp)) -> reward (n,)``,
            what the failing interval is charged (so that failing never pays).
        limits: hard operating limits: an interval ending outside is a violation (info ``violation``,
            ``cost`` = summed exceedance).
        failure: the failure set: an interval ending outside it (or a non-finite state) ends the episode.
        setpoint_names: what the scenarios' setpoints are (e.g. ``("P", "T")``); their states are tracked.
        time_unit: the model's time unit ("s", "min" or "h").
        units: unit of each state and input, by name (for tables and figures).
    """

    name: str
    model: ODEModel
    plants: Mapping[str, Any]
    scenarios: Mapping[str, Scenario]
    episode_steps: int
    observations: tuple[str, ...]
    obs_low: np.ndarray
    obs_high: np.ndarray
    measure: Callable[[np.ndarray, Any], np.ndarray]
    observe: Callable[..., np.ndarray]
    stage_cost: Callable[..., Any]
    failure_reward: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    limits: tuple[Limit, ...]
    failure: tuple[Limit, ...]
    default_plant: str = NOMINAL
    measurement_std: tuple[float, ...] | None = None
    setpoint_names: tuple[str, ...] = ()
    time_unit: str = "s"  # of the model's time and dt: "s", "min" or "h"
    units: Mapping[str, str] = field(default_factory=dict)  # state or input name -> unit, for tables and plots
    description: str = field(default="", compare=False)
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [k for k in (NOMINAL, ACTUAL) if k not in self.plants]
        if missing:
            raise ValueError(f"task {self.name}: plants must include {missing}")
        for name, params in self.plants.items():
            if not isinstance(params, self.model.params_type):
                raise TypeError(f"task {self.name}: plant {name!r} is a {type(params).__name__}, "
                                f"not a {self.model.params_type.__name__}")
        if self.default_plant not in self.plants:
            raise ValueError(f"task {self.name}: default_plant {self.default_plant!r} is not one of "
                             f"{list(self.plants)}")
        if self.time_unit not in ("s", "min", "h"):
            raise ValueError(f"task {self.name}: time_unit must be 's', 'min' or 'h', got {self.time_unit!r}")
        if not self.scenarios:
            raise ValueError(f"task {self.name}: needs at least one scenario")
        if self.episode_steps < 1:
            raise ValueError(f"task {self.name}: episode_steps must be >= 1")
        low, high = np.asarray(self.obs_low, dtype=float), np.asarray(self.obs_high, dtype=float)
        if low.shape != (len(self.observations),) or high.shape != low.shape or np.any(low >= high):
            raise ValueError(f"task {self.name}: obs_low/obs_high must be {len(self.observations)} values "
                             "with low < high")
        object.__setattr__(self, "obs_low", low)
        object.__setattr__(self, "obs_high", high)
        for limit in (*self.limits, *self.failure):
            if limit.output is None and limit.name not in self.model.states:
                raise ValueError(f"task {self.name}: limit {limit.name!r} is no state and has no output")
        for s in self.setpoint_names:
            if s not in self.model.states:
                raise ValueError(f"task {self.name}: setpoint {s!r} is not a state of {self.model.states}")
        for sc in self.scenarios.values():
            if len(sc.setpoint) != len(self.setpoint_names):
                raise ValueError(f"task {self.name}: scenario {sc.name!r} has {len(sc.setpoint)} setpoint "
                                 f"values for {self.setpoint_names}")

    # -- names and parameters ------------------------------------------------------------------------

    @property
    def states(self) -> tuple[str, ...]:
        return self.model.states

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.model.inputs

    @property
    def nominal(self) -> Any:
        """The parameters a controller is designed with."""
        return self.plants[NOMINAL]

    @property
    def actual(self) -> Any:
        """The plant that differs from the nominal model."""
        return self.plants[ACTUAL]

    def plant(self, plant: Any = None) -> Any:
        """Parameters from a plant name, a parameter dataclass of the model, or None (the default plant)."""
        if plant is None:
            return self.plants[self.default_plant]
        if isinstance(plant, str):
            if plant not in self.plants:
                raise ValueError(f"unknown plant {plant!r} for {self.name}; valid: {', '.join(self.plants)} "
                                 f"or a {self.model.params_type.__name__}")
            return self.plants[plant]
        if not isinstance(plant, self.model.params_type):
            raise TypeError(f"plant must be a {self.model.params_type.__name__} or one of "
                            f"{list(self.plants)}, got {type(plant).__name__}")
        return plant

    def scenario(self, name: str | None = None) -> Scenario:
        """The scenario called ``name`` (None: the first); a ValueError lists the valid names otherwise."""
        if name is None:
            return next(iter(self.scenarios.values()))
        try:
            return self.scenarios[name]
        except KeyError:
            raise ValueError(f"unknown scenario {name!r} for {self.name}; valid scenarios: "
                             f"{', '.join(self.scenarios)}") from None

    def observation_box(self, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the observations; an observation called "step" ends at ``max_steps``."""
        high = self.obs_high.copy()
        if "step" in self.observations:
            high[self.observations.index("step")] = self.episode_steps if max_steps is None else max_steps
        return self.obs_low.copy(), high

    # -- what the env evaluates, on batches ----------------------------------------------------------

    def stage_cost_numpy(self, x: np.ndarray, u: np.ndarray, setpoint: np.ndarray, params: Any) -> np.ndarray:
        """The stage cost at interval ends ``x`` (n, nx) after inputs ``u`` (n, nu), shape (n,)."""
        x, u, sp = np.atleast_2d(x), np.atleast_2d(u), np.atleast_2d(setpoint)
        out = self.stage_cost([x[:, i] for i in range(x.shape[1])], [u[:, i] for i in range(u.shape[1])],
                              [sp[:, i] for i in range(sp.shape[1])], params, NUMPY)
        return np.broadcast_to(np.asarray(out, dtype=float), (len(x),)).copy()

    def exceedance(self, x: np.ndarray, params: Any, limits: Sequence[Limit] | None = None) -> np.ndarray:
        """Summed exceedance of ``limits`` (default: the operating limits) at states (n, nx), shape (n,)."""
        x = np.atleast_2d(x)
        total = np.zeros(len(x))
        for limit in self.limits if limits is None else limits:
            total = total + limit.exceedance(np.asarray(limit.value(x, params, self.states), dtype=float))
        return total

    def failed(self, x: np.ndarray, params: Any) -> np.ndarray:
        """Whether states (n, nx) lie outside the failure set or are not finite, shape (n,)."""
        x = np.atleast_2d(x)
        bad = ~np.all(np.isfinite(x), axis=1)
        with np.errstate(invalid="ignore"):
            return bad | (self.exceedance(x, params, self.failure) > 0)

    # -- one interval with everything the env reads from it, as one compiled call -----------------------

    def transition(self, x: np.ndarray, u: np.ndarray, p: np.ndarray, setpoint: np.ndarray,
                   t0: np.ndarray | float = 0.0) -> Transition:
        """One interval of ``n`` plants and what the env needs of its end: the same numbers as
        :meth:`ODEModel.step_batch` followed by :meth:`stage_cost_numpy`, :meth:`exceedance` and
        :meth:`failed`, from one compiled function (for a model with a coarse rung, the transitions on both
        intervals behind a Switch that runs the fine one only where the coarse estimate is too large:
        :meth:`ODEModel.rung_function`).

        The stage cost and the limits' outputs are written against a math namespace, so their CasADi form
        is appended to the interval's graph and compiled with it (:meth:`transition_function`): for one
        plant this is a single C call instead of some forty NumPy calls on arrays of five numbers, most of
        an env step's time. Rows that CVODES recomputes (see :meth:`ODEModel.recompute_inaccurate`) have
        their outputs evaluated again at the recomputed states; the compiled code flags them, and
        non-finite ends, so that Python looks at nothing else on the common path.

        Args:
            x, u: states (n, nx) and inputs held over the interval (n, nu), physical units.
            p: parameter vector of the plant (n_params,) or one per plant (n, n_params).
            setpoint: (n, n_sp) in the order of :attr:`setpoint_names`.
            t0: interval start times (time-varying models only).
        """
        m = self.model
        x, u, p, t0 = m.batch_args(x, u, p, t0)
        n = len(x)
        sp = np.asarray(setpoint, dtype=float).reshape(n, len(self.setpoint_names))
        args = (x, u, p, sp) + ((t0[:, None],) if m.time_varying else ())
        (xf, err, cost, exceedance, outside), unsettled = m.simulate_rows(self._transition_rows(), *args)
        cost, exceedance, outside = cost[:, 0], exceedance[:, 0], outside[:, 0]
        if not len(unsettled):  # every row accurate and finite: the common case
            return Transition(xf, cost, exceedance, outside > 0)
        fns = self._transition_functions()
        for k in m.recompute_inaccurate(xf, err, x, u, p, t0):
            cost[k], exceedance[k], outside[k] = (float(o) for o in fns["outputs"](xf[k], u[k], p[k], sp[k]))
        if all_true(np.isfinite(xf)):
            return Transition(xf, cost, exceedance, outside > 0)
        finite = np.isfinite(xf).all(axis=1)
        for k in np.flatnonzero(~finite):  # NumPy's NaN semantics here (C's fmax and if_else drop a NaN)
            params = m._params_namespace(p[k])
            with np.errstate(all="ignore"):
                cost[k] = self.stage_cost_numpy(xf[k:k + 1], u[k:k + 1], sp[k:k + 1], params)[0]
                exceedance[k] = self.exceedance(xf[k:k + 1], params)[0]
        return Transition(xf, cost, exceedance, (outside > 0) | ~finite)

    def transition_function(self) -> ca.Function:
        """CasADi Function ``(x0, u, p, sp(, t0)) -> (xf, err, stage_cost, exceedance, outside)``, built
        once: the model's interval (:meth:`ODEModel.interval_function`), then at its end the stage cost, the
        summed exceedance of the operating limits and that of the failure set's limits (> 0: failed).
        Exact for finite states; :meth:`transition` treats the others."""
        return self._transition_functions()["transition"]

    def _transition_functions(self) -> dict:
        fns = self._compiled
        if "transition" not in fns:
            m = self.model
            x0, u = ca.SX.sym("x0", m.nx), ca.SX.sym("u", m.nu)
            p, sp, t0 = ca.SX.sym("p", m.n_params), ca.SX.sym("sp", len(self.setpoint_names)), ca.SX.sym("t0")
            xe = ca.SX.sym("xf", m.nx)
            cols = ca.vertsplit(xe)
            named = m._params_namespace(ca.vertsplit(p))

            def exceedance(limits: Sequence[Limit]) -> ca.SX:
                total = ca.SX(0.0)  # summed in the order of Task.exceedance, from 0
                for limit in limits:
                    total = total + limit.excess(limit.value(cols, named, self.states, CASADI), CASADI)
                return total

            cost = self.stage_cost(cols, ca.vertsplit(u), ca.vertsplit(sp), named, CASADI)
            outputs = ca.Function(f"{self.name}_interval_outputs", [xe, u, p, sp],
                                  [cost, exceedance(self.limits), exceedance(self.failure)],
                                  ["xf", "u", "p", "sp"], ["stage_cost", "exceedance", "outside"])
            args = [x0, u, p] + ([t0] if m.time_varying else [])
            names = ["x0", "u", "p", "sp"] + (["t0"] if m.time_varying else [])

            def transition(interval: ca.Function, name: str) -> ca.Function:
                xf, err = interval(*args)
                return ca.Function(name, [x0, u, p, sp] + args[3:], [xf, err, *outputs(xf, u, p, sp)],
                                   names, ["xf", "err", "stage_cost", "exceedance", "outside"])

            fns["transition"] = transition(m.interval_function(), f"{self.name}_transition")
            fns["outputs"] = outputs
            fns["build"] = transition
        return fns

    def _transition_rows(self) -> compiled.Rows:
        """The transition as simulation takes it, compiled: :meth:`ODEModel.rung_function` of the
        transitions on the model's fine and coarse intervals (the same outputs plus its two flags)."""
        m, fns = self.model, self._transition_functions()
        key = ("rung", *m._rung_key())
        rows = fns.get(key)
        if rows is None:
            k, coarse = m.coarse_substeps, m.coarse_interval_function()
            fn = m.rung_function(fns["transition"],
                                 fns["build"](coarse, f"{self.name}_transition{k}") if coarse else None,
                                 f"{self.name}_simulate{k}")
            rows = fns[key] = compiled.Rows(fn)
        return rows


# -- pieces many tasks share -------------------------------------------------------------------------------


def measure_state(x: np.ndarray, params: Any) -> np.ndarray:
    """Every state is measured."""
    return x.copy()


def observe_measurement(y, y_prev, u_prev, step, setpoint) -> np.ndarray:
    """The observation is the measurement."""
    return np.array(y, dtype=float)


@dataclass(frozen=True)
class FailurePenalty:
    """A failing interval's reward: minus a constant (RL-ACR's tasks, after Tian et al.'s code)."""

    penalty: float  # reward units

    def __call__(self, cost: np.ndarray, remaining: np.ndarray, setpoint: np.ndarray) -> np.ndarray:
        return np.full(len(cost), -self.penalty)
