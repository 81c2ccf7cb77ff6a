"""Behaviour cloning: regress the dataset's actions on its observations.

The simplest offline agent and the baseline IQL must beat: a deterministic actor trained by mean squared
error in normalised coordinates (:mod:`safectrl.rl.networks`). It copies the average of the PI tunings
that produced the data, good and bad alike, and ignores the rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safectrl.common import validation
from safectrl.rl.networks import (
    DeterministicActor,
    check_precision,
    cosine_adam,
    precision_context,
    regression_loss,
    seeded_init,
)
from safectrl.rl.offline_data import DEFAULT_OBSERVED, Batch


def check_observed(observed: tuple[str, ...]) -> None:
    """Refuse an empty or repeating list of observation names (whether they exist is the env's business)."""
    if not observed or len(set(observed)) != len(observed) or not all(isinstance(n, str) for n in observed):
        raise ValueError(f"observed must name distinct observation entries, got {observed!r}")


@dataclass(frozen=True)
class BCConfig:
    """Hyperparameters of behaviour cloning.

    ``observed`` (our design decision, shared with :class:`safectrl.rl.iql.IQLConfig`): the networks see the
    measurements and tracking errors ``A, P, T, e_P, e_T`` but not the previous inputs ``f_I_prev, T_c_prev``
    of the env's observation. The PI data are velocity-form controllers, so given ``u_{t-1}`` a regression
    learns to copy it (the "copycat" problem, Wen et al., NeurIPS 2020) and the policy becomes an unstable loop
    on its own output; without it, the policy is a static state feedback. What was tried and measured:
    ``docs/decisions.md#offline-observed``.
    """

    hidden: tuple[int, ...] = (256, 256)  # units per hidden layer of the actor (ReLU)
    lr: float = 3e-4  # Adam learning rate, decayed to 0 over `steps` by a cosine schedule (as IQL's actor)
    batch_size: int = 256  # transitions per gradient step
    steps: int = 20_000  # gradient steps (~260 passes over a 20 000-transition dataset)
    observed: tuple[str, ...] = DEFAULT_OBSERVED  # observation entries the actor sees (see the docstring)
    precision: str = "float32"  # of the updates: "float32" or "bfloat16" (mixed, safectrl.rl.networks)

    def __post_init__(self) -> None:
        check_observed(self.observed)
        check_precision(self.precision)
        object.__setattr__(self, "hidden", validation.widths("hidden", self.hidden))
        validation.positive("lr", self.lr)
        validation.positive_int("batch_size", self.batch_size)
        validation.positive_int("steps", self.steps)


class BC:
    """Behaviour cloning agent.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        config: hyperparameters.
        seed: initialises the actor's weights (torch's global generator is left untouched).
    """

    algo = "bc"

    def __init__(self, obs_dim: int, act_dim: int, config: BCConfig = BCConfig(), seed: int = 0) -> None:
        self.config = config
        with seeded_init(seed):
            self.actor = DeterministicActor(obs_dim, act_dim, config.hidden)
        self.actor_optimizer, self.actor_schedule = cosine_adam(self.actor, config.lr, config.steps)

    def networks(self) -> dict[str, torch.nn.Module]:
        """Every trained network by name, for the checkpoint."""
        return {"actor": self.actor}

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the squared error between the actor's and the dataset's actions."""
        with precision_context(self.config.precision):
            loss = regression_loss(self.actor, batch.obs, batch.action)
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        self.actor_schedule.step()
        return {"actor_loss": loss.item()}
