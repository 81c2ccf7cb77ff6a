"""A trained offline policy behind the common interface: physical observations in, physical inputs out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from safectrl.rl.networks import DeterministicActor
from safectrl.rl.offline_data import Normalisation


class OfflinePolicy:
    """A deterministic actor with the normalisation it was trained with.

    ``act`` takes one observation (obs_dim,) or a batch (batch, obs_dim) in physical units (layout
    :data:`safectrl.models.polycstr.OBSERVATIONS` for the reactor), of which the actor sees the entries
    ``normalisation.obs_index``, and returns the inputs (act_dim,) or (batch, act_dim) in physical units,
    always inside the action bounds. The policy is stateless; ``reset`` exists for the common interface.

    Args:
        actor: trained actor (normalised observation -> action in [-1, 1]).
        normalisation: the training data's normalisation and the action bounds.
        info: what the checkpoint records about training (algorithm, config, datasets, seed ...).
    """

    def __init__(self, actor: DeterministicActor, normalisation: Normalisation,
                 info: dict[str, Any] | None = None) -> None:
        self.actor = actor.eval().requires_grad_(False)
        self.normalisation = normalisation
        self.info = dict(info or {})

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
        """Nothing to reset: the policy has no memory and no randomness."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float)
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.normalisation.obs_dim:
            raise ValueError(
                f"observation must have shape ({self.normalisation.obs_dim},) or (batch, "
                f"{self.normalisation.obs_dim}), got {obs.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError(f"observation is not finite: {obs}")
        x = torch.as_tensor(self.normalisation.obs_to_net(obs), dtype=torch.float32)
        with torch.no_grad():
            y = self.actor(x).numpy()
        return self.normalisation.action_from_net(y)
