"""What a cost model learns from recorded episodes: H-step cost-to-go targets, split by episode, and the fit.

The target of a transition at step t is the discounted cost of the next H recorded states::

    C_t = Σ_{j=1..H} γ^j c(x_{t+j}),    c(x) = Σ_i w_i |y_sp,i − y_i| + ρ max(0, z − z_max)

with y the tracked state entries, y_sp their setpoints and z one state entry with an upper limit (it is capped
at ``cap`` first, so a runaway's unbounded temperature does not swamp the data). Which entries those are is the
plant's business (:class:`StageCostLayout`, filled in by the study from the model); this module knows arrays.
A window that runs past a failure (the episode terminated) repeats the failed state's stage cost; one that runs
past the time limit has no target and its transition is left out. Absolute errors rather than squared keep the
targets' range narrow enough to resolve small offsets next to large start-up errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from safectrl.safety.cost_model import ConvexCostModel, CostModelTrainConfig, TrainingReport, fit_cost_model


@dataclass(frozen=True)
class StageCostLayout:
    """Where the stage cost reads the plant: state columns, setpoint columns of the observation, the limit."""

    tracked: tuple[int, ...]  # state columns tracked to a setpoint (the reactor: P, T)
    setpoint_error: tuple[int, ...]  # observation columns of y_sp − y, one per tracked column
    setpoint_value: tuple[int, ...]  # observation columns of y: y_sp = error + value, one per tracked column
    limited: int  # state column with an upper limit (the reactor: T)
    limit: float  # where the penalty starts, unit of that column (the reactor: T_max, K)
    cap: float  # the limited column is capped here before any cost (the reactor: T_runaway, K)

    def __post_init__(self) -> None:
        if not len(self.tracked) == len(self.setpoint_error) == len(self.setpoint_value) > 0:
            raise ValueError(f"tracked, setpoint_error and setpoint_value need one entry each per tracked "
                             f"column, got {self.tracked}, {self.setpoint_error}, {self.setpoint_value}")
        if self.cap < self.limit:
            raise ValueError(f"cap {self.cap} lies below the limit {self.limit}")


@dataclass(frozen=True)
class CostTargetConfig:
    """The regression target of the cost model (see the module docstring)."""

    horizon: int = 20  # H, intervals of cost-to-go
    discount: float = 0.95  # per interval
    weights: tuple[float, ...] = (1.0, 1.0)  # w_i per unit of |y_sp,i − y_i|, one per tracked column
    penalty: float = 100.0  # ρ, per unit of the limited column above its limit

    def __post_init__(self) -> None:
        if self.horizon < 1 or not 0 < self.discount <= 1:
            raise ValueError(f"horizon must be >= 1 and discount in (0, 1], got {self.horizon}, {self.discount}")
        if min(*self.weights, self.penalty) < 0:
            raise ValueError("weights and penalty must be >= 0")


def stage_cost(state: np.ndarray, setpoint: np.ndarray, layout: StageCostLayout,
               cfg: CostTargetConfig) -> np.ndarray:
    """c(x) for states (n, n_x) and setpoints (n, n_tracked), the limited column capped at ``layout.cap``."""
    if len(cfg.weights) != len(layout.tracked):
        raise ValueError(f"{len(cfg.weights)} weights for {len(layout.tracked)} tracked columns")
    capped = state.copy()
    capped[:, layout.limited] = np.minimum(state[:, layout.limited], layout.cap)
    c = cfg.weights[0] * np.abs(setpoint[:, 0] - capped[:, layout.tracked[0]])
    for i in range(1, len(layout.tracked)):
        c = c + cfg.weights[i] * np.abs(setpoint[:, i] - capped[:, layout.tracked[i]])
    return c + cfg.penalty * np.maximum(0.0, capped[:, layout.limited] - layout.limit)


def cost_targets(state: np.ndarray, next_obs: np.ndarray, episode: np.ndarray, step: np.ndarray,
                 done: np.ndarray, layout: StageCostLayout, cfg: CostTargetConfig) -> tuple[np.ndarray, np.ndarray]:
    """H-step cost-to-go per transition and the mask of transitions that have one.

    Args:
        state: (n, n_x) true state at the end of each transition's interval.
        next_obs: (n, n_obs) observation there (it carries the setpoints, see ``layout``).
        episode, step: (n,) episode id and step index; rows of one episode contiguous and in order.
        done: (n,) the episode terminated (failed) at this transition.
        layout, cfg: the plant's columns and the target's horizon, discount and weights.

    Returns:
        target (n,) (NaN where undefined) and valid (n,) bool.
    """
    if not np.all(np.isfinite(state)):
        raise ValueError("non-finite states in the transitions; the stage cost of such a state is undefined")
    setpoint = np.stack([next_obs[:, e] + next_obs[:, v]
                         for e, v in zip(layout.setpoint_error, layout.setpoint_value)], axis=1)
    c = stage_cost(state, setpoint, layout, cfg)
    target = np.full(len(c), np.nan)
    discounts = cfg.discount ** np.arange(1, cfg.horizon + 1)
    for ep in np.unique(episode):
        rows = np.flatnonzero(episode == ep)
        if np.any(np.diff(step[rows]) != 1):
            raise ValueError(f"episode {ep} is not a contiguous run of steps")
        c_ep = c[rows]
        failed = bool(done[rows[-1]])
        padded = np.concatenate([c_ep, np.full(cfg.horizon, c_ep[-1] if failed else np.nan)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.horizon)[:len(rows)]
        target[rows] = windows @ discounts
    return target, np.isfinite(target)


def split_episodes(episode: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose episode is held out for validation (at least one episode each side).

    Whole episodes, not transitions: neighbouring transitions share most of their cost-to-go window.
    """
    ids = np.unique(episode)
    if len(ids) < 2:
        raise ValueError("at least two episodes are needed for a train/validation split")
    n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
    val_ids = np.random.default_rng(seed).choice(ids, size=n_val, replace=False)
    return np.isin(episode, val_ids)


def train_cost_model(
    obs: np.ndarray,
    action: np.ndarray,
    target: np.ndarray,
    episode: np.ndarray,
    train: CostModelTrainConfig = CostModelTrainConfig(),
    val_fraction: float = 0.2,
    split_seed: int = 0,
    obs_index: Sequence[int] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[ConvexCostModel, TrainingReport]:
    """Fit a cost model to ``target`` (NaN rows left out), validating on held-out whole episodes.

    Args:
        obs, action, target, episode: (n, n_obs), (n, n_act), (n,), (n,) arrays, e.g. from :func:`cost_targets`.
        train: network and optimiser settings.
        val_fraction, split_seed: share of episodes held out and which (:func:`split_episodes`).
        obs_index: the observation columns the model sees (default: all).
        progress: called after each epoch with (epoch, train RMSE, validation RMSE).
    """
    valid = np.isfinite(target)
    is_val = split_episodes(episode, val_fraction, split_seed)
    tr_rows, val_rows = valid & ~is_val, valid & is_val
    model, rep = fit_cost_model((obs[tr_rows], action[tr_rows], target[tr_rows]),
                                (obs[val_rows], action[val_rows], target[val_rows]),
                                train, progress=progress, obs_index=obs_index)
    rep.extra.update(train_transitions=int(tr_rows.sum()), val_transitions=int(val_rows.sum()),
                     val_episodes=int(len(np.unique(episode[is_val]))),
                     train_episodes=int(len(np.unique(episode[~is_val]))))
    return model, rep
