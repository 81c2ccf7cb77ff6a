"""A trained offline policy behind the common interface: physical observations in, physical inputs out."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from safectrl.common.faults import FallbackWarning
from safectrl.rl.networks import DeterministicActor
from safectrl.rl.offline_data import Normalisation


class OfflinePolicy:
    """A deterministic actor with the normalisation it was trained with.

    ``act`` takes one observation (obs_dim,) or a batch (batch, obs_dim) in physical units (layout
    :data:`safectrl.models.polycstr.OBSERVATIONS` for the reactor), of which the actor sees the entries
    ``normalisation.obs_index``, and returns the inputs (act_dim,) or (batch, act_dim) in physical units,
    always inside the action bounds. The actor is stateless; the policy remembers only its last action.

    An observation with a NaN or inf entry the actor sees (a lost reading) is answered with the last
    action (before any: the middle of the action bounds), counted in :attr:`held` and warned about once,
    since the network's output on it would be NaN; ``strict=True`` raises ``ValueError`` instead. In a
    batch, each such row gets the last single action or the middle.

    Args:
        actor: trained actor (normalised observation -> action in [-1, 1]).
        normalisation: the training data's normalisation and the action bounds.
        info: what the checkpoint records about training (algorithm, config, datasets, seed ...).
        strict: raise on a non-finite observation instead of holding the last action.
    """

    def __init__(self, actor: DeterministicActor, normalisation: Normalisation,
                 info: dict[str, Any] | None = None, strict: bool = False) -> None:
        self.actor = actor.eval().requires_grad_(False)
        self.normalisation = normalisation
        self.info = dict(info or {})
        self.strict = bool(strict)
        self._last: np.ndarray | None = None
        self._warned = False
        #: Observations answered with the held action since the last reset.
        self.held = 0

    def episode_report(self) -> dict[str, int]:
        """The episode's fallbacks as a study column: ``fallbacks``, the observations answered with the held
        action since the last reset (:attr:`held`)."""
        return {"fallbacks": int(self.held)}

    @property
    def algo(self) -> str:
        return str(self.info.get("algo", "unknown"))

    @property
    def action_low(self) -> np.ndarray:
        return self.normalisation.action_low.copy()

    @property
    def action_high(self) -> np.ndarray:
        return self.normalisation.action_high.copy()

    def reset(self, seed: int | None = None) -> None:
        """Forget the last action and the count; the policy has no randomness."""
        self._last = None
        self.held = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float)
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.normalisation.obs_dim:
            raise ValueError(
                f"observation must have shape ({self.normalisation.obs_dim},) or (batch, "
                f"{self.normalisation.obs_dim}), got {obs.shape}")
        seen = obs[..., list(self.normalisation.obs_index)]
        lost = ~np.all(np.isfinite(seen), axis=-1)
        if np.any(lost):
            if self.strict:
                raise ValueError(f"observation is not finite: {obs}")
            if not self._warned:
                warnings.warn(f"OfflinePolicy: observation is not finite ({obs}); held the last action "
                              "(warned once; counted in held)", FallbackWarning, stacklevel=2)
                self._warned = True
            self.held += int(np.sum(lost))
            obs = np.where(lost[..., None], 0.0, obs) if obs.ndim == 2 else obs
        if obs.ndim == 1 and lost:
            action = self._hold()
        else:
            x = torch.as_tensor(self.normalisation.obs_to_net(obs), dtype=torch.float32)
            with torch.no_grad():
                y = self.actor(x).numpy()
            action = self.normalisation.action_from_net(y)
            if obs.ndim == 2 and lost.any():
                action[lost] = self._hold()
        if obs.ndim == 1:
            self._last = action.copy()
        return action

    def _hold(self) -> np.ndarray:
        if self._last is not None:
            return self._last.copy()
        return (self.normalisation.action_low + self.normalisation.action_high) / 2
