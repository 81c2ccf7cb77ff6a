r"""RL with adaptive control regularisation (RL-ACR; Tian et al., NeurIPS 2024).

Two agents act in parallel on the real plant: a *prior* controller built on an estimated model (in the
paper an MPC with hard state constraints) and an off-policy SAC agent. A focus network beta(s) in (0, 1)^act_dim
mixes them per action dimension::

    a = clip(beta(s) * a_prior + (1 - beta(s)) * a_RL)

* beta is an MLP 128-32 with a sigmoid output, pretrained to output 0.999 on observations drawn uniformly
  from the observation box (until the MSE is below 1e-8), so that the prior acts first everywhere;
* the replay buffer stores a_prior with every transition, and the critics learn on the executed action a
  (behind a safety layer, ``train(..., shield=...)``, the layer filters the combined action and a is its
  output, the input the plant received);
* after each SAC update, beta takes one Adam step (lr 5e-6) that *maximises*
  ``min(Q1, Q2)(s, beta(s) a_prior + (1 - beta(s)) a_RL(s))`` over a batch, with the freshly updated critics
  held fixed and a_RL sampled from the current actor (Tian et al., eq. 12, and their code);
* before SAC starts learning (256 steps) the RL action is 0.

The prior is any decision-maker (:class:`~safectrl.common.protocol.DecisionMaker`) and reads the
observation; one that needs the state completes it itself (an NMPC through its observer). rl never imports
controllers: the prior is handed in as an object. A prior with ``stats`` (an NMPC's cumulative
:class:`~safectrl.controllers.nmpc.NMPCStats`) has its failed solves logged per training episode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from safectrl.common import validation
from safectrl.common.checkpoint import load_modules, module_tensors
from safectrl.common.protocol import DecisionMaker
from safectrl.rl.networks import BoxScaler, mlp
from safectrl.rl.resume import load_optimizer_state, optimizer_state
from safectrl.rl.sac import SAC, SACConfig


@dataclass(frozen=True)
class RLACRConfig:
    """Hyperparameters of :class:`RLACR` beyond SAC's (Tian et al., table 7 and code)."""

    sac: SACConfig = field(default_factory=SACConfig)  # the RL agent
    focus_hidden: tuple[int, ...] = (128, 32)  # hidden units of the focus network
    focus_lr: float = 5e-6  # Adam learning rate of the focus update
    focus_init: float = 0.999  # pretraining target of beta on the whole observation box
    focus_pretrain_mse: float = 1e-8  # pretraining stops below this mean squared error
    focus_pretrain_lr: float = 1e-3  # Adam learning rate of the pretraining (not given by the paper)
    focus_pretrain_batch: int = 512  # uniform observations per pretraining step
    focus_pretrain_max_steps: int = 20_000  # pretraining gives up (RuntimeError) after this many steps
    # Start the output bias at logit(focus_init) (True, ours) or at 0 as the authors' code does (False; then
    # use AUTHORS_FOCUS_PRETRAINING's rate and step limit). Both meet the same criterion, but after the
    # authors' pretraining the focus leaves the prior sooner (docs/decisions.md#focus-pretraining).
    focus_bias_start: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.sac, SACConfig):
            raise TypeError(f"sac must be a SACConfig, got {self.sac!r}")
        object.__setattr__(self, "focus_hidden", validation.widths("focus_hidden", self.focus_hidden))
        validation.positive("focus_lr", self.focus_lr)
        validation.real("focus_init", self.focus_init, low=0.0, high=1.0, low_open=True, high_open=True)
        validation.positive("focus_pretrain_mse", self.focus_pretrain_mse)
        validation.positive("focus_pretrain_lr", self.focus_pretrain_lr)
        validation.positive_int("focus_pretrain_batch", self.focus_pretrain_batch)
        validation.positive_int("focus_pretrain_max_steps", self.focus_pretrain_max_steps)
        validation.boolean("focus_bias_start", self.focus_bias_start)


class FocusNetwork(nn.Module):
    """beta(s): an MLP on the normalised observation with a sigmoid output per action dimension."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim])
        with torch.no_grad():  # start near beta = 0.5 with small output weights (Tian et al.'s code)
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(self, obs_n: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(obs_n))


def pretrain_focus(focus: FocusNetwork, scaler: BoxScaler, cfg: RLACRConfig,
                   generator: torch.Generator) -> tuple[int, float]:
    """Fit beta = ``cfg.focus_init`` on observations uniform over the box, until MSE < ``focus_pretrain_mse``.

    Returns:
        (steps taken, final MSE).

    Raises:
        RuntimeError: if the threshold is not reached within ``focus_pretrain_max_steps``.
    """
    # Starting the output bias at logit(target) leaves only the state-dependent part to fit; the criterion
    # (MSE on the whole box) is unchanged and met at once instead of after ~7e4 steps (authors' rate 1e-5).
    if cfg.focus_bias_start:
        with torch.no_grad():
            focus.net[-1].bias.fill_(math.log(cfg.focus_init / (1 - cfg.focus_init)))
    opt = torch.optim.Adam(focus.parameters(), lr=cfg.focus_pretrain_lr)
    obs_dim = scaler.center.shape[0]
    mse = float("inf")
    for step in range(1, cfg.focus_pretrain_max_steps + 1):
        obs_n = 2 * torch.rand(cfg.focus_pretrain_batch, obs_dim, generator=generator) - 1  # uniform on the box
        loss = ((focus(obs_n) - cfg.focus_init) ** 2).mean()
        mse = loss.item()
        if mse < cfg.focus_pretrain_mse:
            return step, mse
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise RuntimeError(f"focus pretraining reached MSE {mse:.2e} > {cfg.focus_pretrain_mse:.0e} "
                       f"after {cfg.focus_pretrain_max_steps} steps")


#: The authors' focus pretraining (their code): output bias from 0, Adam 1e-5, at most 200,000 steps;
#: ``RLACRConfig(**AUTHORS_FOCUS_PRETRAINING)``. About 7e4 steps (~2 min on one CPU thread).
AUTHORS_FOCUS_PRETRAINING = {"focus_bias_start": False, "focus_pretrain_lr": 1e-5,
                             "focus_pretrain_max_steps": 200_000}


class RLACR:
    """RL-ACR on one env's spaces with a given prior controller; see the module docstring.

    Args:
        observation_space, action_space: finite boxes of the env.
        prior: the regularising controller (``reset(seed)``, ``act(obs)``).
        config: hyperparameters.
        seed: seeds the SAC agent and the focus network.
    """

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, prior: DecisionMaker,
                 config: RLACRConfig = RLACRConfig(), seed: int = 0) -> None:
        self.config = config
        self.prior = prior
        self.sac = SAC(observation_space, action_space, config.sac, seed=seed, extra_action=True)
        self.focus = FocusNetwork(observation_space.shape[0], action_space.shape[0], config.focus_hidden)
        self.pretrain_steps, self.pretrain_mse = pretrain_focus(
            self.focus, self.sac.obs_scaler, config, torch.Generator().manual_seed(seed + 1))
        self.focus_opt = torch.optim.Adam(self.focus.parameters(), lr=config.focus_lr)
        self._low, self._high = self.sac.act_scaler.low, self.sac.act_scaler.high
        self._prior_action: np.ndarray | None = None
        self._episode: dict[str, list] = {"beta": [], "prior_time": [], "q_gap": []}

    # -- acting -----------------------------------------------------------------------------------------

    def _prior_act(self, obs: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        a = np.asarray(self.prior.act(obs), dtype=float).reshape(-1)
        self._episode["prior_time"].append(time.perf_counter() - t0)
        return a

    @torch.no_grad()
    def beta(self, obs: np.ndarray) -> np.ndarray:
        """Focus weights beta(obs), shape (act_dim,)."""
        return self.focus(self.sac.normalised_obs(obs))[0].numpy().astype(float)

    def _combine(self, beta: np.ndarray, a_prior: np.ndarray, a_rl: np.ndarray) -> np.ndarray:
        return np.clip(beta * a_prior + (1 - beta) * a_rl, self._low, self._high)

    def reset(self, seed: int | None = None) -> None:
        """Start an evaluation episode: the prior's reset (the agent itself keeps nothing between steps)."""
        self.prior.reset(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic combined action (the actor's mean), for evaluation."""
        a_prior = self._prior_act(obs)
        return self._combine(self.beta(obs), a_prior, self.sac.policy_action(obs, deterministic=True))

    # -- training (the Learner interface of safectrl.rl.sac.train) ---------------------------------------

    def begin_episode(self, seed: int | None) -> None:
        self.prior.reset(seed)
        self._episode = {"beta": [], "prior_time": [], "q_gap": []}

    def explore(self, obs: np.ndarray) -> np.ndarray:
        a_prior = self._prior_act(obs)
        if self.sac.steps < self.sac.config.learning_starts:
            a_rl = np.zeros_like(a_prior)  # the RL agent has not learned yet: no RL action (Tian et al.)
        else:
            a_rl = self.sac.policy_action(obs)
        beta = self.beta(obs)
        self._prior_action = a_prior
        self._episode["beta"].append(beta)
        return self._combine(beta, a_prior, a_rl)

    def observe(self, obs, action, reward, next_obs, terminated: bool) -> None:
        self.sac.buffer.add(obs, action, reward, next_obs, terminated, prior_action=self._prior_action)
        updates = self.sac.updates
        self.sac.learn_step()
        if self.sac.updates > updates:
            self.update_focus(self.sac.buffer.sample(self.sac.rng, self.sac.config.batch_size))

    def update_focus(self, batch: dict[str, torch.Tensor]) -> float:
        """One ascent step of min-Q of the combined action in the focus parameters; returns the mean min-Q."""
        sac = self.sac
        obs_n = sac.obs_scaler.normalise(batch["obs"])
        with torch.no_grad():
            a_rl_n, _, _ = sac.actor.sample(obs_n)
        a_prior_n = sac.act_scaler.normalise(batch["prior_action"])
        beta = self.focus(obs_n)
        # Affine normalisation commutes with the convex combination, so mixing normalised actions is exact.
        combined = beta * a_prior_n + (1 - beta) * a_rl_n
        sac.critic.requires_grad_(False)
        q = sac.critic.min_q(obs_n, combined).mean()
        self.focus_opt.zero_grad()
        (-q).backward()
        self.focus_opt.step()
        sac.critic.requires_grad_(True)
        with torch.no_grad():  # a diagnostic only (no random numbers drawn, nothing trained)
            gap = sac.critic.min_q(obs_n, a_rl_n) - sac.critic.min_q(obs_n, a_prior_n)
        self._episode["q_gap"].append(gap.mean().item())
        return q.item()

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """SAC's training state, the focus network and its Adam moments (:mod:`safectrl.rl.resume`). The prior
        keeps nothing between episodes (it is reset at each)."""
        tensors, record = self.sac.training_state()
        tensors = {f"sac.{k}": v for k, v in tensors.items()}
        tensors.update(module_tensors({"focus": self.focus}))
        moments, groups = optimizer_state(self.focus_opt, "focus_opt")
        tensors.update(moments)
        return tensors, {"sac": record, "focus_opt": groups}

    def restore_training_state(self, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (read back from a checkpoint)."""
        self.sac.restore_training_state({k[4:]: v for k, v in tensors.items() if k.startswith("sac.")},
                                        record["sac"])
        load_modules({"focus": self.focus}, tensors, "the training state")
        load_optimizer_state(self.focus_opt, "focus_opt", tensors, record["focus_opt"])

    def end_episode(self) -> dict[str, float]:
        betas = np.asarray(self._episode["beta"])
        out = {f"beta_{j}": float(betas[:, j].mean()) for j in range(betas.shape[1])} if len(betas) else {}
        out["prior_time"] = float(np.mean(self._episode["prior_time"])) if self._episode["prior_time"] else 0.0
        # min-Q of the RL action minus min-Q of the regulariser's, averaged over the episode's focus updates:
        # the critics' preference that drives beta (positive pulls the focus towards the RL action)
        out["q_gap"] = float(np.mean(self._episode["q_gap"])) if self._episode["q_gap"] else float("nan")
        stats = getattr(self.prior, "stats", None)
        if stats is not None:  # a prior that keeps solve statistics (an NMPC): this episode's failed solves
            out["prior_failed_solves"] = float(stats.episode().failures)
        return out
