"""Closed-loop metrics of one episode of any task: the numbers every study reports.

The metric names follow the task: per tracked setpoint state ``s`` the final offset ``final_abs_e<s>`` and
the integral of absolute error ``iae_<s>``; ``peak_<o>`` of the output of the task's first operating limit.
For the reactor (setpoints P, T; limit T <= T_max) these are ``final_abs_eP``, ``final_abs_eT``, ``iae_P``,
``iae_T`` and ``peak_T``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from safectrl.models import polycstr as pc
from safectrl.models.task import Task
from safectrl.rl.rollout import Episode

#: Final offsets are averaged over the last tenth of an episode (the reactor: 20 intervals, 10 h).
FINAL_FRACTION = 0.1
#: A model's time units per hour: integrals of error are reported in unit·h.
PER_HOUR = {"s": 3600.0, "min": 60.0, "h": 1.0}


class EpisodeMetrics(Mapping):
    """Per-episode metrics by name (also as attributes: ``m.cost``); costs in the env's reward units.

    Always present: ``cost`` (-sum of rewards, the failure charge included), ``violations`` (intervals ending
    outside the operating limits), ``worst_exceedance`` (largest exceedance of a finite state), ``failure``,
    ``length`` (intervals simulated), ``decision_ms`` (median time per act() call); the task's tracking
    metrics in between (see the module docstring).
    """

    def __init__(self, **values: Any) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"EpisodeMetrics({self._values})"

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def metric_names(task: Task = pc.TASK) -> tuple[str, ...]:
    """The metrics of ``task``'s episodes, in column order."""
    sp = task.setpoint_names
    peak = (f"peak_{task.limits[0].name}",) if task.limits else ()
    return ("cost", *(f"final_abs_e{s}" for s in sp), *(f"iae_{s}" for s in sp), "violations",
            "worst_exceedance", *peak, "failure", "length", "decision_ms")


def episode_metrics(ep: Episode, task: Task = pc.TASK) -> EpisodeMetrics:
    """The metrics of one episode of ``task`` (default: the polymerisation CSTR)."""
    x = np.asarray(ep.infos["state"][1:], dtype=float).reshape(ep.length, -1)
    finite = np.all(np.isfinite(x), axis=1)
    values: dict[str, Any] = {"cost": float(-ep.rewards.sum())}
    if task.setpoint_names:
        sp = np.asarray(ep.infos["setpoint"][1:], dtype=float).reshape(ep.length, -1)
        e = sp - x[:, [task.states.index(s) for s in task.setpoint_names]]
        e_fin = np.abs(e[finite])
        window_len = max(1, round(FINAL_FRACTION * task.episode_steps))
        window = e_fin[-window_len:] if len(e_fin) else np.full((1, e.shape[1]), np.nan)
        hours = task.model.dt / PER_HOUR[task.time_unit]
        for k, s in enumerate(task.setpoint_names):
            values[f"final_abs_e{s}"] = float(window[:, k].mean())
        for k, s in enumerate(task.setpoint_names):
            values[f"iae_{s}"] = float(e_fin[:, k].sum() * hours)
    values["violations"] = int(np.asarray(ep.infos["violation"][1:]).sum())
    plant = task.nominal  # a limit output that depends on parameters is evaluated with the nominal ones
    if "cost" in ep.infos:  # the env's exceedance, with the plant's own parameters
        exceed = np.asarray(ep.infos["cost"][1:], dtype=float)[finite]
    else:
        exceed = task.exceedance(x[finite], plant) if finite.any() else np.array([])
    values["worst_exceedance"] = float(exceed.max()) if len(exceed) else float("inf")
    if task.limits:
        out = np.asarray(task.limits[0].value(x[finite], plant, task.states), dtype=float)
        values[f"peak_{task.limits[0].name}"] = float(out.max()) if len(out) else float("nan")
    values["failure"] = ep.failed
    values["length"] = ep.length
    values["decision_ms"] = float(np.median(ep.decision_time) * 1e3) if len(ep.decision_time) else float("nan")
    return EpisodeMetrics(**values)
