"""Training data of the offline agents: normalisation computed from the dataset, batches as torch tensors.

The agents see observations standardised with the dataset's mean and std and actions scaled to [-1, 1]
from the env's physical bounds; :class:`Normalisation` holds both maps, is stored with every checkpoint
and turns a network's output back into physical inputs. :class:`OfflineData` holds a whole dataset in
these coordinates and draws minibatches from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from safectrl.rl.data import Transitions

#: Added to the observation std (CORL's habit), so a constant feature normalises to 0 instead of NaN.
STD_EPS = 1e-3


@dataclass(frozen=True)
class Normalisation:
    """Maps between physical units and the networks' coordinates.

    Observation: ``(obs - obs_mean) / obs_std``. Action: ``2 (u - low) / (high - low) - 1`` in [-1, 1].
    """

    obs_mean: np.ndarray  # (n_obs,), physical units
    obs_std: np.ndarray  # (n_obs,), physical units, dataset std + STD_EPS
    action_low: np.ndarray  # (n_act,), physical lower bounds
    action_high: np.ndarray  # (n_act,), physical upper bounds

    def __post_init__(self) -> None:
        for name in ("obs_mean", "obs_std", "action_low", "action_high"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.ndim != 1 or not np.all(np.isfinite(value)):
                raise ValueError(f"normalisation {name} must be a finite vector, got {value!r}")
            object.__setattr__(self, name, value)
        if self.obs_mean.shape != self.obs_std.shape or np.any(self.obs_std <= 0):
            raise ValueError("obs_std must be positive and have the shape of obs_mean")
        if self.action_low.shape != self.action_high.shape or np.any(self.action_high <= self.action_low):
            raise ValueError("action bounds need the same shape and high > low")

    @property
    def obs_dim(self) -> int:
        return len(self.obs_mean)

    @property
    def act_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def from_data(cls, obs: np.ndarray, action_low: Sequence[float], action_high: Sequence[float]
                  ) -> Normalisation:
        """Observation statistics of ``obs`` (n, n_obs); action bounds as given (the env's)."""
        obs = np.asarray(obs, dtype=float)
        if obs.ndim != 2 or len(obs) < 2 or not np.all(np.isfinite(obs)):
            raise ValueError(f"need at least two finite observations as an (n, n_obs) array, got shape {obs.shape}")
        return cls(obs.mean(axis=0), obs.std(axis=0) + STD_EPS, np.asarray(action_low, dtype=float),
                   np.asarray(action_high, dtype=float))

    def obs_to_net(self, obs: np.ndarray) -> np.ndarray:
        return (np.asarray(obs, dtype=float) - self.obs_mean) / self.obs_std

    def action_to_net(self, action: np.ndarray) -> np.ndarray:
        return 2.0 * (np.asarray(action, dtype=float) - self.action_low) / (self.action_high - self.action_low) - 1.0

    def action_from_net(self, y: np.ndarray) -> np.ndarray:
        """Physical inputs from network outputs in [-1, 1]; the clip only guards round-off at the bounds."""
        u = self.action_low + 0.5 * (np.asarray(y, dtype=float) + 1.0) * (self.action_high - self.action_low)
        return np.clip(u, self.action_low, self.action_high)

    def as_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("obs_mean", "obs_std", "action_low", "action_high")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        try:
            return cls(*(np.asarray(d[k], dtype=float) for k in ("obs_mean", "obs_std", "action_low", "action_high")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"normalisation record is incomplete or malformed: {err}") from err


class Batch(NamedTuple):
    """A minibatch in network coordinates (float32 tensors)."""

    obs: torch.Tensor  # (batch, n_obs), normalised
    action: torch.Tensor  # (batch, n_act), in [-1, 1]
    reward: torch.Tensor  # (batch,), as given to OfflineData (IQL: scaled, see safectrl.rl.iql)
    next_obs: torch.Tensor  # (batch, n_obs), normalised
    done: torch.Tensor  # (batch,), 1.0 where the episode failed (no bootstrap), else 0.0


@dataclass(frozen=True)
class OfflineData:
    """A whole offline dataset in network coordinates, ready to be sampled."""

    data: Batch
    normalisation: Normalisation

    def __len__(self) -> int:
        return len(self.data.reward)

    @classmethod
    def from_transitions(cls, t: Transitions, normalisation: Normalisation, reward: np.ndarray | None = None
                         ) -> OfflineData:
        """Convert flat transitions (physical units) with a given normalisation.

        Args:
            t: the transitions; ``done`` is the env's termination flag (failure), truncation is not terminal.
            normalisation: observation and action maps.
            reward: (n,) the rewards to learn from (e.g. :func:`safectrl.rl.iql.learning_rewards`);
                None: the env's rewards as recorded.
        """
        if len(t) == 0:
            raise ValueError("no transitions to train on")
        if t.obs.shape[1] != normalisation.obs_dim or t.action.shape[1] != normalisation.act_dim:
            raise ValueError(
                f"transitions have {t.obs.shape[1]} observations and {t.action.shape[1]} actions, the "
                f"normalisation {normalisation.obs_dim} and {normalisation.act_dim}")
        if not (np.all(t.action >= normalisation.action_low) and np.all(t.action <= normalisation.action_high)):
            raise ValueError("dataset actions lie outside the action bounds")
        reward = np.asarray(t.reward if reward is None else reward, dtype=float)
        if reward.shape != (len(t),):
            raise ValueError(f"need one reward per transition, ({len(t)},), got shape {reward.shape}")
        arrays = (normalisation.obs_to_net(t.obs), normalisation.action_to_net(t.action), reward,
                  normalisation.obs_to_net(t.next_obs),
                  np.asarray(t.done, dtype=float))
        for name, a in zip(Batch._fields, arrays):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"transitions contain non-finite {name}")
        return cls(Batch(*(torch.as_tensor(a, dtype=torch.float32) for a in arrays)), normalisation)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return Batch(*(x[idx] for x in self.data))
