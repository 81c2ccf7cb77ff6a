"""Training data of the offline agents: normalisation computed from the dataset, batches as torch tensors.

The agents see observations standardised with the dataset's mean and std and actions scaled to [-1, 1]
from the env's physical bounds; :class:`Normalisation` holds both maps and which entries of the env's
observation the networks are given (``obs_index``), is stored with every checkpoint and turns a network's
output back into physical inputs. :class:`OfflineData` holds a whole dataset in
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

#: What the offline agents' networks see of the reactor's observation by default: the measurements and the
#: tracking errors, not the inputs applied in the previous interval (f_I_prev, T_c_prev). Why: see
#: :class:`safectrl.rl.bc.BCConfig` and ``docs/decisions.md#offline-observed``; BC and IQL share it.
DEFAULT_OBSERVED = ("A", "P", "T", "e_P", "e_T")

_ARRAYS = ("obs_mean", "obs_std", "action_low", "action_high")


@dataclass(frozen=True)
class Normalisation:
    """Maps between physical units and the networks' coordinates.

    Observation: ``((obs - obs_mean) / obs_std)[obs_index]``, the env's observation (n_obs,) standardised,
    then the entries the networks see. Action: ``2 (u - low) / (high - low) - 1`` in [-1, 1].
    """

    obs_mean: np.ndarray  # (n_obs,), physical units
    obs_std: np.ndarray  # (n_obs,), physical units, dataset std + STD_EPS
    action_low: np.ndarray  # (n_act,), physical lower bounds
    action_high: np.ndarray  # (n_act,), physical upper bounds
    obs_index: np.ndarray | None = None  # (n_in,) entries of the observation the networks see; None: all

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            value = np.asarray(getattr(self, name), dtype=float)
            if value.ndim != 1 or not np.all(np.isfinite(value)):
                raise ValueError(f"normalisation {name} must be a finite vector, got {value!r}")
            object.__setattr__(self, name, value)
        if self.obs_mean.shape != self.obs_std.shape or np.any(self.obs_std <= 0):
            raise ValueError("obs_std must be positive and have the shape of obs_mean")
        if self.action_low.shape != self.action_high.shape or np.any(self.action_high <= self.action_low):
            raise ValueError("action bounds need the same shape and high > low")
        index = np.arange(len(self.obs_mean)) if self.obs_index is None else np.asarray(self.obs_index)
        n_obs = len(self.obs_mean)
        if (index.ndim != 1 or len(index) == 0 or not np.issubdtype(index.dtype, np.integer)
                or len(np.unique(index)) != len(index) or index.min() < 0 or index.max() >= n_obs):
            raise ValueError(f"obs_index must list distinct entries of the {n_obs}-entry observation, got {index!r}")
        object.__setattr__(self, "obs_index", index.astype(np.int64))

    @property
    def obs_dim(self) -> int:
        """Size of the env's observation, what :meth:`obs_to_net` takes."""
        return len(self.obs_mean)

    @property
    def net_obs_dim(self) -> int:
        """Size of the networks' input, what :meth:`obs_to_net` returns."""
        return len(self.obs_index)

    @property
    def act_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def from_data(cls, obs: np.ndarray, action_low: Sequence[float], action_high: Sequence[float],
                  obs_index: Sequence[int] | None = None) -> Normalisation:
        """Observation statistics of ``obs`` (n, n_obs); action bounds as given (the env's); the entries
        of the observation the networks see (None: all)."""
        obs = np.asarray(obs, dtype=float)
        if obs.ndim != 2 or len(obs) < 2 or not np.all(np.isfinite(obs)):
            raise ValueError(f"need at least two finite observations as an (n, n_obs) array, got shape {obs.shape}")
        return cls(obs.mean(axis=0), obs.std(axis=0) + STD_EPS, np.asarray(action_low, dtype=float),
                   np.asarray(action_high, dtype=float), None if obs_index is None else np.asarray(obs_index))

    def obs_to_net(self, obs: np.ndarray) -> np.ndarray:
        """Network input (..., n_in) from observations (..., n_obs) in physical units."""
        return ((np.asarray(obs, dtype=float) - self.obs_mean) / self.obs_std)[..., self.obs_index]

    def action_to_net(self, action: np.ndarray) -> np.ndarray:
        return 2.0 * (np.asarray(action, dtype=float) - self.action_low) / (self.action_high - self.action_low) - 1.0

    def action_from_net(self, y: np.ndarray) -> np.ndarray:
        """Physical inputs from network outputs in [-1, 1]; the clip only guards round-off at the bounds."""
        u = self.action_low + 0.5 * (np.asarray(y, dtype=float) + 1.0) * (self.action_high - self.action_low)
        return np.clip(u, self.action_low, self.action_high)

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {k: getattr(self, k).tolist() for k in (*_ARRAYS, "obs_index")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        """The inverse of :meth:`as_dict`; a record without ``obs_index`` (older checkpoints) means all."""
        try:
            index = d.get("obs_index")
            return cls(*(np.asarray(d[k], dtype=float) for k in _ARRAYS),
                       None if index is None else np.asarray(index, dtype=np.int64))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"normalisation record is incomplete or malformed: {err!r}") from err


class Batch(NamedTuple):
    """A minibatch in network coordinates (float32 tensors)."""

    obs: torch.Tensor  # (batch, n_in), normalised, the entries the networks see
    action: torch.Tensor  # (batch, n_act), in [-1, 1]
    reward: torch.Tensor  # (batch,), as given to OfflineData (IQL: scaled, see safectrl.rl.iql)
    next_obs: torch.Tensor  # (batch, n_in), normalised
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
