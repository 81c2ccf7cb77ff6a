"""Implicit Q-learning (Kostrikov, Nair & Levine, "Offline RL with implicit Q-learning", ICLR 2022).

IQL never evaluates an action outside the dataset. Three regressions, one gradient step each per batch::

    V:     min  E[ L_tau( min_j Q'_j(s, a) - V(s) ) ],   L_tau(u) = |tau - 1(u < 0)| u²   (expectile)
    Q_j:   min  E[ ( r + gamma (1 - done) V(s') - Q_j(s, a) )² ]
    actor: min  E[ min(exp(beta A(s, a)), w_max) ||pi(s) - a||² ],   A = min_j Q'_j(s, a) - V(s)

with Q' the Polyak-averaged target critics. With tau > 0.5 the value approaches an upper expectile of the
in-data action values, so the actor regresses towards the better of the dataset's actions. Defaults are
the IQL authors' locomotion settings (as in CORL); ``done`` is set only by failure, never by the time limit.

Reward scale (our decision, stored in every checkpoint): rewards are multiplied by the IQL authors'
``1000 / (max - min episode return)`` computed over the episodes that did not fail, and a failure step's
scaled reward is clipped at ``-failure_penalty``. The reward spans seven decades and a runaway charges about
-4e7 on one step; unrestricted, the few runaways set the scale, every other return lands near zero and the
advantages are noise. The shape of the reward is untouched otherwise, so IQL still optimises the tracking
cost the study reports. What it measured: ``docs/decisions.md#iql-reward-scale``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from safectrl.common import validation
from safectrl.rl.data import Transitions
from safectrl.rl.bc import check_observed
from safectrl.rl.networks import (
    DeterministicActor,
    TwinQ,
    ValueNetwork,
    adam,
    check_precision,
    cosine_adam,
    precision_context,
    regression_loss,
    seeded_init,
)
from safectrl.rl.offline_data import DEFAULT_OBSERVED, Batch


@dataclass(frozen=True)
class IQLConfig:
    """Hyperparameters of IQL (the IQL authors' settings, reward scale as in the module docstring).

    ``observed``: the actor, both critics and the value network see the same entries of the observation as
    BC's actor — ``A, P, T, e_P, e_T``, without the previous inputs (why: :class:`safectrl.rl.bc.BCConfig`,
    ``docs/decisions.md#offline-observed``).
    """

    hidden: tuple[int, ...] = (256, 256)  # units per hidden layer of the actor, Q and V networks (ReLU)
    actor_lr: float = 3e-4  # Adam learning rate of the actor, decayed to 0 over `steps` (cosine)
    critic_lr: float = 3e-4  # Adam learning rate of the Q and V networks (constant)
    batch_size: int = 256  # transitions per gradient step
    steps: int = 50_000  # gradient steps
    discount: float = 0.99  # per 30-min interval: a horizon of ~100 intervals, the episode's length
    tau: float = 0.005  # Polyak rate of the target critics
    expectile: float = 0.7  # of the V regression; 0.5 is the mean (SARSA), -> 1 approaches max over data actions
    beta: float = 3.0  # inverse temperature of the advantage weights
    max_weight: float = 100.0  # advantage weights are clipped here
    reward_scale: float | None = None  # multiplies env rewards; None: 1000 / (max - min return) of complete episodes
    failure_penalty: float = 1000.0  # a failure step's scaled reward is clipped at -failure_penalty
    observed: tuple[str, ...] = DEFAULT_OBSERVED  # observation entries every network sees (as BC's, BCConfig)
    precision: str = "float32"  # of the updates: "float32" or "bfloat16" (mixed, safectrl.rl.networks)

    def __post_init__(self) -> None:
        check_observed(self.observed)
        check_precision(self.precision)
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"discount must be in [0, 1), got {self.discount}")
        if self.reward_scale is not None and not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be positive, got {self.reward_scale}")
        if not self.failure_penalty > 0:
            raise ValueError(f"failure_penalty must be positive, got {self.failure_penalty}")
        object.__setattr__(self, "hidden", validation.widths("hidden", self.hidden))
        validation.positive("actor_lr", self.actor_lr)
        validation.positive("critic_lr", self.critic_lr)
        validation.positive_int("batch_size", self.batch_size)
        validation.positive_int("steps", self.steps)
        validation.real("tau", self.tau, low=0.0, high=1.0, low_open=True)
        validation.non_negative("beta", self.beta)
        validation.positive("max_weight", self.max_weight)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of ``|expectile - 1(diff < 0)| diff²``: positive errors weigh ``expectile``, negative ``1 - expectile``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff**2).mean()


def return_range_scale(t: Transitions, target: float = 1000.0) -> float:
    """``target / (max - min)`` of the undiscounted returns of the episodes in ``t`` that did not fail.

    The IQL authors' rule, restricted to complete episodes (all episodes if every one failed).
    """
    episodes = np.unique(t.episode)
    returns = np.bincount(t.episode, weights=t.reward)[episodes]
    complete = ~np.isin(episodes, t.episode[t.done])
    spread = float(np.ptp(returns[complete] if complete.any() else returns))
    if not spread > 0:
        raise ValueError("all episodes have the same return; give IQLConfig.reward_scale explicitly")
    return target / spread


def learning_rewards(t: Transitions, config: IQLConfig) -> tuple[np.ndarray, float]:
    """The rewards IQL learns from, (n,), and the scale used: ``scale * r``, failure steps clipped."""
    scale = config.reward_scale if config.reward_scale is not None else return_range_scale(t)
    reward = scale * np.asarray(t.reward, dtype=float)
    reward = np.where(t.done, np.maximum(reward, -config.failure_penalty), reward)
    return reward, scale


class IQL:
    """Implicit Q-learning agent: twin Q critics with Polyak targets, a value network, a deterministic actor.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        config: hyperparameters (the data carry the rewards of :func:`learning_rewards`).
        seed: initialises every network (torch's global generator is left untouched).
    """

    algo = "iql"

    def __init__(self, obs_dim: int, act_dim: int, config: IQLConfig = IQLConfig(), seed: int = 0) -> None:
        self.config = config
        with seeded_init(seed):
            self.actor = DeterministicActor(obs_dim, act_dim, config.hidden)
            self.critic = TwinQ(obs_dim, act_dim, config.hidden)
            self.value = ValueNetwork(obs_dim, config.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer, self.actor_schedule = cosine_adam(self.actor, config.actor_lr, config.steps)
        self.critic_optimizer = adam(self.critic, config.critic_lr)
        self.value_optimizer = adam(self.value, config.critic_lr)

    def networks(self) -> dict[str, torch.nn.Module]:
        """Every trained network by name, for the checkpoint."""
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "value": self.value}

    def update_value(self, batch: Batch) -> tuple[float, torch.Tensor]:
        """Expectile regression of V onto the target critics; returns the loss and the advantages."""
        with precision_context(self.config.precision):
            with torch.no_grad():
                target_q = self.critic_target.min_q(batch.obs, batch.action)
            advantage = target_q - self.value(batch.obs)
            loss = expectile_loss(advantage, self.config.expectile)
        self.value_optimizer.zero_grad()
        loss.backward()
        self.value_optimizer.step()
        return loss.item(), advantage.detach()

    def update_critic(self, batch: Batch) -> float:
        """TD regression of both critics onto ``r + gamma (1 - done) V(s')``, then the Polyak step."""
        with precision_context(self.config.precision):
            with torch.no_grad():
                target = batch.reward + self.config.discount * (1.0 - batch.done) * self.value(batch.next_obs)
            q = self.critic(batch.obs, batch.action)
            loss = F.mse_loss(q, target.expand_as(q))  # the mean of the two critics' losses
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        with torch.no_grad():
            for p, p_target in zip(self.critic.parameters(), self.critic_target.parameters()):
                p_target.lerp_(p, self.config.tau)
        return loss.item()

    def update_actor(self, batch: Batch, advantage: torch.Tensor) -> tuple[float, float]:
        """Advantage-weighted regression onto the dataset's actions; returns the loss and the mean weight."""
        weight = torch.exp(self.config.beta * advantage).clamp(max=self.config.max_weight)
        with precision_context(self.config.precision):
            loss = regression_loss(self.actor, batch.obs, batch.action, weight)
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        self.actor_schedule.step()
        return loss.item(), weight.mean().item()

    def update(self, batch: Batch) -> dict[str, float]:
        """One step of each regression on the same batch (value first: its advantages weight the actor)."""
        value_loss, advantage = self.update_value(batch)
        critic_loss = self.update_critic(batch)
        actor_loss, weight_mean = self.update_actor(batch, advantage)
        return {"value_loss": value_loss, "critic_loss": critic_loss, "actor_loss": actor_loss,
                "weight_mean": weight_mean}
