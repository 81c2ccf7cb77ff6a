"""An NMPC for any :class:`~safectrl.models.task.Task` whose observation carries its states: the controller a new
plant gets without writing one.

The objective is the task's own stage cost (the reward's negative, written once against a math namespace),
summed over the horizon at the interval ends, plus a small move penalty; the task's operating limits on
states become soft bounds with an exact L1 penalty, tightened by ``backoff`` (a fraction of each limit's
width or of its magnitude). The observer reads the states from the observation by name, the setpoint from
``e_<state>`` entries (setpoint = state + error, the convention of the reactor's observation) or else from
the scenario the controller was built for, and the previous input from ``<input>_prev`` entries or else the
controller's own last input.

Plants whose observation lacks a state (the reactor: I and R are not measured) need an estimator instead:
see :mod:`safectrl.controllers.polycstr_nmpc` for the reactor's EKF.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from safectrl.controllers.nmpc import NMPC, FullStateObserver, NMPCConfig, Observed, Observer, StateBound
from safectrl.models.mathns import CASADI
from safectrl.models.task import Scenario, Task


class TaskObserver(FullStateObserver):
    """States, setpoint and previous input of a task from its observation (see the module docstring).

    A non-finite state entry is replaced by the model's prediction from the last state with the input
    applied over the last interval (counted; :class:`FullStateObserver`); a non-finite setpoint error takes
    the last valid setpoint, so that one lost reading does not stop the controller. ``strict`` raises
    ``ValueError`` instead.

    Args:
        task: the plant.
        scenario: whose setpoint is tracked when the observation carries none.
        u_init: the previous input of the first interval (default: the middle of the input box).
        params: parameters of the model that predicts replaced entries (default: the task's nominal).
        strict: raise on a non-finite entry instead of replacing it.

    Raises:
        ValueError: if the observation lacks a state of the model.
    """

    def __init__(self, task: Task, scenario: Scenario, u_init: np.ndarray | None = None, params: Any = None,
                 strict: bool = False) -> None:
        obs = task.observations
        missing = [s for s in task.states if s not in obs]
        if missing:
            raise ValueError(f"{task.name}'s observation lacks the states {missing}: its NMPC needs an "
                             "estimator (see safectrl.controllers.estimation)")
        self.task = task
        self._x = [obs.index(s) for s in task.states]
        errors = [f"e_{s}" for s in task.setpoint_names]
        self._e = [obs.index(e) for e in errors] if errors and all(e in obs for e in errors) else None
        self._sp_state = [obs.index(s) for s in task.setpoint_names]
        self.setpoint = np.asarray(scenario.setpoint, dtype=float)
        prev = [f"{u}_prev" for u in task.inputs]
        self._u = [obs.index(p) for p in prev] if all(p in obs for p in prev) else None
        self._sp_last = self.setpoint.copy()
        model = task.model
        super().__init__(model.dt, u_init if u_init is not None else (model.u_low + model.u_high) / 2,
                         model=model, params=task.plant(params if params is not None else "nominal"),
                         strict=strict)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._sp_last = self.setpoint.copy()

    def __call__(self, obs: np.ndarray) -> Observed:
        obs = np.asarray(obs, dtype=float)
        u_prev = obs[self._u] if self._u is not None else self._u_prev
        x, rejected = self._state(obs[self._x], u_prev)
        if self._e is not None:
            # From the replaced state a lost reading gives a wrong setpoint: take the last valid one there.
            sp = np.where(np.isfinite(obs[self._sp_state]) & np.isfinite(obs[self._e]),
                          obs[self._sp_state] + obs[self._e], self._sp_last)
            self._sp_last = sp
        else:
            sp = self.setpoint
        return Observed(x, u_prev, sp if len(sp) else None, self._k * self.dt, None, rejected)


def task_nmpc(task: Task, params: Any = None, scenario: str | None = None, horizon: int = 20,
              cost_weight: float = 1.0, du_weight: float = 1e-2, backoff: float = 0.0,
              limit_penalty: float = 1e3) -> NMPC:
    """The NMPC of ``task`` predicting with ``params`` (default: the task's nominal model).

    Args:
        task: the plant.
        params: parameters of the prediction model (a plant name of the task or a dataclass).
        scenario: the scenario whose setpoint is tracked when the observation carries none.
        horizon: intervals predicted.
        cost_weight: factor on the task's stage cost (scale it to order 1 for IPOPT).
        du_weight: move penalty per input, on (Δu / input range)².
        backoff: the operating limits tightened by this fraction of their magnitude.
        limit_penalty: L1 weight of the soft limits, objective units per unit of violation.
    """
    p = task.plant(params if params is not None else "nominal")
    sc = task.scenario(scenario)
    bounds = []
    for limit in task.limits:
        if limit.output is not None:
            raise ValueError(f"{task.name}: the generic NMPC bounds states only; limit {limit.name!r} is an "
                             "output of several states")
        low = limit.low + backoff * abs(limit.low) if math.isfinite(limit.low) else -math.inf
        high = limit.high - backoff * abs(limit.high) if math.isfinite(limit.high) else math.inf
        bounds.append(StateBound(limit.name, low=low, high=high, penalty=limit_penalty))
    config = NMPCConfig(horizon=horizon, du_weights=(du_weight,) * task.model.nu, state_bounds=tuple(bounds))
    def stage(x, u, r):
        sp = [r[i] for i in range(len(task.setpoint_names))]
        return cost_weight * task.stage_cost([x[i] for i in range(task.model.nx)],
                                             [u[i] for i in range(task.model.nu)], sp, p, CASADI)

    x0, u0 = sc.initial(np.random.default_rng(0), p)
    return NMPC(task.model, p, config, stage_cost=stage, n_ref=len(task.setpoint_names),
                observer=TaskObserver(task, sc, u_init=u0, params=p, strict=config.strict))


def nmpc_for(env_id: str, params: Any = None) -> NMPC:
    """The NMPC of the registered task ``env_id`` predicting with ``params`` (default: its nominal model).

    The plants that ship with safectrl have their own (the reactor's with its EKF, the RL-ACR regularisers);
    any other task gets :func:`task_nmpc`.
    """
    from safectrl.controllers import acr_mpc, polycstr_nmpc
    from safectrl.models.registry import get_task

    task = get_task(env_id)
    p = task.plant(params if params is not None else "nominal")
    if env_id == "safectrl/PolyCSTR-v0":
        return polycstr_nmpc.polycstr_nmpc(p)
    if env_id in acr_mpc.REGULARISERS:
        return acr_mpc.REGULARISERS[env_id](p)
    return task_nmpc(task, p)


def observer_for(env_id: str, params: Any = None) -> Observer:
    """The observer the NMPC of ``env_id`` uses (:func:`nmpc_for`), predicting with ``params`` (default: the
    task's nominal model): the reactor's EKF, the RL-ACR tasks' observers, else a :class:`TaskObserver`.

    A safety filter that predicts from observations uses the same one, so that it knows what the controller
    can know and nothing of the plant.
    """
    from safectrl.controllers import acr_mpc, polycstr_nmpc
    from safectrl.models.registry import get_task

    task = get_task(env_id)
    p = task.plant(params if params is not None else "nominal")
    if env_id == "safectrl/PolyCSTR-v0":
        return polycstr_nmpc.PolyCSTRObserver(p, polycstr_nmpc.EKF_CONFIG)
    if env_id in acr_mpc.OBSERVERS:
        return acr_mpc.OBSERVERS[env_id](p)
    sc = task.scenario()
    _, u0 = sc.initial(np.random.default_rng(0), p)
    return TaskObserver(task, sc, u_init=u0, params=p)


class ParameterEstimatingObserver:
    """A full-state observer that also estimates some of the model's parameters from what it observes.

    The state is read from the observation (:class:`FullStateObserver`, the inner observer); an
    :class:`~safectrl.controllers.estimation.ExtendedKalmanFilter` on the model, its parameters named in
    ``estimated`` carried as random-walk states, predicts each interval with the input applied and is
    corrected by the observed state, so that the parameters follow the plant's transitions. The observed
    state, not the filter's, is returned, with the parameter estimates as ``params``: a controller (a
    safety filter) then predicts with the plant that is, not with the model it was given, from nothing but
    the observations and its own inputs. Non-finite readings are left out of the update (the inner
    observer replaces them in the state it returns).

    Args:
        inner: the observer of the state (a :class:`FullStateObserver` of the task).
        model: the task's model; ``params`` its parameters (the estimates start from them).
        estimated: names of the parameters to estimate.
        measurement_std: 1-sigma of each state's reading (noise-free plants: a small number, so that the
            filter trusts the readings).
        initial_share: 1-sigma of the first parameter estimate, as a share of its starting value.
        walk_share: the random-walk step per interval, as a share of the starting value.
        bound_factor: the estimates are kept within [start / bound_factor, start * bound_factor] (without
            bounds, CartPole's diverged from random forces: docs/decisions.md#psf-tightening).
    """

    def __init__(self, inner: FullStateObserver, model: Any, params: Any, estimated: tuple[str, ...],
                 measurement_std: tuple[float, ...], initial_share: float = 0.5,
                 walk_share: float = 1e-3, bound_factor: float = 4.0) -> None:
        from safectrl.controllers.estimation import EKFConfig, ExtendedKalmanFilter

        p = params if isinstance(params, np.ndarray) else model.param_vector(params)
        unknown = [n for n in estimated if n not in model.param_names]
        if unknown:
            raise ValueError(f"{model.name} has no parameters {unknown}; valid: "
                             f"{', '.join(model.param_names)}")
        start = np.abs(p[[model.param_names.index(n) for n in estimated]])
        config = EKFConfig(measured=model.states, measurement_std=tuple(measurement_std),
                           process_std=tuple(measurement_std), initial_std=tuple(measurement_std),
                           estimated_params=tuple(estimated),
                           param_process_std=tuple(walk_share * start),
                           param_initial_std=tuple(initial_share * start))
        self.inner = inner
        self.model = model
        self.ekf = ExtendedKalmanFilter(model, params, config)
        self.bounds = (start / bound_factor, start * bound_factor)  # the estimates are kept inside
        self._started = False
        self._u: np.ndarray | None = None
        self._t = 0.0

    def reset(self, seed: int | None = None) -> None:
        """A new episode: the state and the parameters start again from the model's."""
        self.inner.reset(seed)
        self._started = False

    def __call__(self, obs: np.ndarray) -> Observed:
        seen = self.inner(obs)
        y = np.asarray(obs, dtype=float)[: self.model.nx]
        if not self._started:
            self.ekf.reset(seen.x)
            self._started = True
        else:
            self.ekf.predict(self._u, self._t)
            self.ekf.update(y)  # non-finite readings left out
            self.ekf.theta = np.clip(self.ekf.theta, *self.bounds)
        self._t = seen.t0
        return seen._replace(params=self.ekf.params)

    def applied(self, u: np.ndarray) -> None:
        self.inner.applied(u)
        self._u = np.asarray(u, dtype=float).copy()
