"""Soft actor-critic (Haarnoja et al., ICML 2018) for continuous actions, with a fixed entropy weight.

The settings are those of Tian et al.'s RL-ACR experiments (NeurIPS 2024, table 7, and their public code,
itself based on CleanRL): twin Q networks and a tanh-squashed Gaussian actor, MLPs 256-256 with ReLU,
observations normalised to [-1, 1] by the observation box and actions by the action box, clipped double-Q
targets, target networks tracked with tau = 0.005 after every critic step, the actor updated twice every
second step (delayed updates, TD3 style), entropy weight 0.2, learning after 256 steps. The replay buffer
can carry one extra action per transition (RL-ACR stores its regulariser's action there).

The online training loop shared by SAC and RL-ACR is :func:`train` (one env, whole episodes, per-episode
logs of return, length, failure and time per step). Its ``shield`` wraps the exploring decision-maker in a
safety layer (a predictive safety filter, "SAC+PSF"): the env then receives the layer's action, and the
replay buffer and the critics learn on that applied action, not on the learner's proposal.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from safectrl.common import validation
from safectrl.common.protocol import DecisionMaker
from safectrl.common.checkpoint import (
    RETRAIN,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_modules,
    module_tensors,
    save_checkpoint,
)
from safectrl.rl.networks import BoxScaler, TanhGaussianActor, TwinQ, adam
from safectrl.rl.resume import (
    TrainingCheckpoint,
    generator_state,
    load_optimizer_state,
    optimizer_state,
    set_generator_state,
)
from safectrl.rl.rollout import run_episode

#: The ``kind`` of SAC checkpoints (:mod:`safectrl.common.checkpoint`).
KIND = "sac"
#: The fields of SACConfig that shape the networks or the meaning of their outputs.
_NETWORK_FIELDS = ("hidden", "log_std_min", "log_std_max")


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of :class:`SAC` (Tian et al., table 7)."""

    hidden: tuple[int, ...] = (256, 256)  # hidden units of the actor and of each Q network
    alpha: float = 0.2  # entropy weight (fixed)
    critic_lr: float = 1e-3  # Adam learning rate of the Q networks
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    batch_size: int = 256  # transitions per update
    discount: float = 0.99  # per env step
    tau: float = 0.005  # target-network tracking rate, every critic step
    policy_frequency: int = 2  # the actor takes this many steps every this many critic steps
    learning_starts: int = 256  # environment steps before the first update (random actions before)
    buffer_size: int = 1_000_000  # replay capacity, transitions
    log_std_min: float = -5.0  # lower bound of the actor's log standard deviation
    log_std_max: float = 2.0  # upper bound of the actor's log standard deviation

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", validation.widths("hidden", self.hidden))
        validation.non_negative("alpha", self.alpha)
        validation.positive("critic_lr", self.critic_lr)
        validation.positive("actor_lr", self.actor_lr)
        validation.positive_int("batch_size", self.batch_size)
        validation.real("discount", self.discount, low=0.0, high=1.0, high_open=True)
        validation.real("tau", self.tau, low=0.0, high=1.0, low_open=True)
        validation.positive_int("policy_frequency", self.policy_frequency)
        validation.integer("learning_starts", self.learning_starts, low=0)
        validation.positive_int("buffer_size", self.buffer_size)
        validation.real("log_std_min", self.log_std_min)
        validation.real("log_std_max", self.log_std_max, low=self.log_std_min, low_open=True)


class ReplayBuffer:
    """Transitions in preallocated arrays (grown on demand up to ``capacity``), physical units."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, extra_action: bool = False) -> None:
        self.capacity = int(capacity)
        self.size = 0
        self._next = 0
        self._obs_dim, self._act_dim, self._extra = obs_dim, act_dim, extra_action
        self._arrays: dict[str, np.ndarray] = {}
        self._grow(min(self.capacity, 4096))

    def _grow(self, n: int) -> None:
        shapes = {"obs": (self._obs_dim,), "action": (self._act_dim,), "reward": (),
                  "next_obs": (self._obs_dim,), "done": ()}
        if self._extra:
            shapes["prior_action"] = (self._act_dim,)
        new = {k: np.zeros((n, *s), dtype=np.float32) for k, s in shapes.items()}
        for k, v in self._arrays.items():
            new[k][: len(v)] = v
        self._arrays = new

    def add(self, obs, action, reward, next_obs, done, prior_action=None) -> None:
        if self._next >= len(self._arrays["reward"]) and len(self._arrays["reward"]) < self.capacity:
            self._grow(min(self.capacity, 2 * len(self._arrays["reward"])))
        i = self._next
        a = self._arrays
        a["obs"][i], a["action"][i], a["reward"][i] = obs, action, reward
        a["next_obs"][i], a["done"][i] = next_obs, float(done)
        if self._extra:
            if prior_action is None:
                raise ValueError("this buffer stores a prior action with every transition")
            a["prior_action"][i] = prior_action
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch)
        return {k: torch.from_numpy(v[idx]) for k, v in self._arrays.items()}

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The stored transitions as tensors ``"<prefix>.<field>"`` and the counters (a training state)."""
        tensors = {f"{prefix}.{k}": torch.from_numpy(v[: self.size].copy()) for k, v in self._arrays.items()}
        return tensors, {"size": self.size, "next": self._next, "capacity": self.capacity,
                         "extra_action": self._extra}

    def load_state(self, prefix: str, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """Refill the buffer from :meth:`state` (read back); its layout must be this buffer's."""
        mine = {"capacity": self.capacity, "extra_action": self._extra}
        theirs = {k: record.get(k) for k in mine}
        if theirs != mine:
            raise CheckpointError(f"the stored replay buffer ({theirs}) is not this learner's ({mine})")
        size = int(record["size"])
        self._arrays = {}
        self._grow(max(size, min(self.capacity, 4096)))
        for k, v in self._arrays.items():
            data = tensors.get(f"{prefix}.{k}")
            if data is None or tuple(data.shape) != (size, *v.shape[1:]):
                raise CheckpointError(f"the stored replay buffer's {k!r} is missing or has the wrong shape")
            v[:size] = data.numpy()
        self.size, self._next = size, int(record["next"])


class SAC:
    """Soft actor-critic on one env's spaces; see the module docstring.

    Args:
        observation_space: finite ``Box`` (normalisation range of the networks).
        action_space: finite ``Box``; actions are returned in its units.
        config: hyperparameters.
        seed: seeds torch (network initialisation, sampling) and the numpy generator (batches, random
            exploration).
        extra_action: the buffer keeps one more action per transition (RL-ACR's regulariser action).
    """

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box,
                 config: SACConfig = SACConfig(), seed: int = 0, extra_action: bool = False) -> None:
        self.config = config
        self.obs_scaler = BoxScaler(observation_space)
        self.act_scaler = BoxScaler(action_space)
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.actor = TanhGaussianActor(obs_dim, act_dim, config.hidden, config.log_std_min,
                                       config.log_std_max)
        self.critic = TwinQ(obs_dim, act_dim, config.hidden)
        self.critic_target = TwinQ(obs_dim, act_dim, config.hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor_optimizer = adam(self.actor, config.actor_lr)
        self.critic_optimizer = adam(self.critic, config.critic_lr)
        self.buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size, extra_action)
        self.updates = 0
        #: Environment steps seen (transitions added).
        self.steps = 0
        #: True once trained elsewhere (SAC-pt): no random exploration phase on the new plant.
        self.pretrained = False

    # -- acting -------------------------------------------------------------------------------------

    def normalised_obs(self, obs: np.ndarray) -> torch.Tensor:
        """One observation as a (1, obs_dim) tensor normalised to the box."""
        return self.obs_scaler.normalise(torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1))

    @torch.no_grad()
    def policy_action(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The actor's action (sampled, or its mean if ``deterministic``) in physical units, (act_dim,)."""
        act, _, mean = self.actor.sample(self.normalised_obs(obs))
        chosen = mean if deterministic else act
        return self.act_scaler.denormalise(chosen)[0].numpy().astype(float)

    def reset(self, seed: int | None = None) -> None:
        """Nothing to forget between episodes (the common controller interface)."""

    def begin_episode(self, seed: int | None) -> None:
        """Nothing to prepare before a training episode."""

    def end_episode(self) -> dict[str, float]:
        """Per-episode extras for the training log (none for SAC)."""
        return {}

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action (the actor's mean): the trained policy as a controller."""
        return self.policy_action(obs, deterministic=True)

    def explore(self, obs: np.ndarray) -> np.ndarray:
        """Training action: uniform random before ``learning_starts`` (unless pretrained), else sampled."""
        if self.steps < self.config.learning_starts and not self.pretrained:
            lo, hi = self.act_scaler.low, self.act_scaler.high
            return lo + (hi - lo) * self.rng.random(len(lo))
        return self.policy_action(obs)

    def observe(self, obs, action, reward, next_obs, terminated: bool) -> None:
        """Store a transition and update once it is time (the training step after each env step)."""
        self.buffer.add(obs, action, reward, next_obs, terminated)
        self.learn_step()

    def learn_step(self) -> None:
        """Count an env step and, once learning has started, run one update on a sampled batch."""
        self.steps += 1
        if self.buffer.size >= self.config.learning_starts and self.steps >= self.config.learning_starts:
            self.update(self.buffer.sample(self.rng, self.config.batch_size))

    # -- learning -------------------------------------------------------------------------------------

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step, the delayed actor steps, and the target tracking; returns the losses."""
        cfg = self.config
        obs_n = self.obs_scaler.normalise(batch["obs"])
        next_n = self.obs_scaler.normalise(batch["next_obs"])
        act_n = self.act_scaler.normalise(batch["action"])
        with torch.no_grad():
            next_act, next_logp, _ = self.actor.sample(next_n)
            target_q = self.critic_target.min_q(next_n, next_act) - cfg.alpha * next_logp
            y = batch["reward"] + (1 - batch["done"]) * cfg.discount * target_q
        q = self.critic(obs_n, act_n)
        critic_loss = 2.0 * F.mse_loss(q, y.expand_as(q))  # the sum of the two critics' losses
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        losses = {"critic_loss": critic_loss.item()}
        if self.updates % cfg.policy_frequency == 0:
            self.critic.requires_grad_(False)
            for _ in range(cfg.policy_frequency):
                act, logp, _ = self.actor.sample(obs_n)
                actor_loss = (cfg.alpha * logp - self.critic.min_q(obs_n, act)).mean()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_optimizer.step()
            self.critic.requires_grad_(True)
            losses["actor_loss"] = actor_loss.item()
        with torch.no_grad():
            for p, pt in zip(self.critic.parameters(), self.critic_target.parameters()):
                pt.mul_(1 - cfg.tau).add_(p, alpha=cfg.tau)
        self.updates += 1
        return losses

    # -- checkpoints ---------------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer}

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """All that later training depends on (:mod:`safectrl.rl.resume`): the networks, their Adam moments,
        the replay buffer, the generator and the counters; (tensors, JSON record)."""
        tensors = module_tensors(self.modules())
        record: dict[str, Any] = {"steps": self.steps, "updates": self.updates, "pretrained": self.pretrained,
                                  "rng": generator_state(self.rng), "optimizers": {}}
        for name, optimizer in self._optimizers().items():
            moments, record["optimizers"][name] = optimizer_state(optimizer, name)
            tensors.update(moments)
        stored, record["buffer"] = self.buffer.state("buffer")
        tensors.update(stored)
        return tensors, record

    def restore_training_state(self, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (read back from a checkpoint)."""
        load_modules(self.modules(), tensors, "the training state")
        for name, optimizer in self._optimizers().items():
            load_optimizer_state(optimizer, name, tensors, record["optimizers"][name])
        self.buffer.load_state("buffer", tensors, record["buffer"])
        set_generator_state(self.rng, record["rng"])
        self.steps, self.updates, self.pretrained = int(record["steps"]), int(record["updates"]), \
            bool(record["pretrained"])

    def _checkpoint_config(self) -> dict[str, Any]:
        config = {"sac": asdict(self.config),
                  "observation_low": self.obs_scaler.low.tolist(),
                  "observation_high": self.obs_scaler.high.tolist(),
                  "action_low": self.act_scaler.low.tolist(), "action_high": self.act_scaler.high.tolist()}
        return json.loads(json.dumps(config))  # as a checkpoint reads it back (tuples as lists)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the networks, the config and the spaces' bounds as a checkpoint folder ``path``."""
        return save_checkpoint(path, KIND, module_tensors(self.modules()), self._checkpoint_config(),
                               {"steps": self.steps, "updates": self.updates})

    def load(self, path: str | os.PathLike) -> None:
        """Load the networks of a checkpoint written by :meth:`save`.

        The spaces and the config entries that give the weights their meaning (``hidden``, the log-std bounds)
        must equal this agent's; learning rates, buffer and the rest may differ. Critics written as two
        separate networks (``critic.q1.*``, safectrl before :class:`TwinQ` was one ensemble) are converted.

        Raises:
            CheckpointError: unverifiable, altered, or written for other networks or other spaces.
        """
        path = Path(path)
        if not path.exists() and path.with_suffix(".safetensors").exists():
            raise CheckpointError(
                f"{path.with_suffix('.safetensors')} is a SAC checkpoint without a hash; {RETRAIN}")
        ckpt = load_checkpoint(path, KIND)
        mine, theirs = self._checkpoint_config(), ckpt.config
        for key in ("observation_low", "observation_high", "action_low", "action_high"):
            if theirs.get(key) != mine[key]:
                raise CheckpointError(f"{ckpt.config_path} records {key} {theirs.get(key)}, this agent's is "
                                      f"{mine[key]}")
        for key in _NETWORK_FIELDS:
            if theirs.get("sac", {}).get(key) != mine["sac"][key]:
                raise CheckpointError(f"{ckpt.config_path} records another SAC network: {key} "
                                      f"{theirs.get('sac', {}).get(key)}, this agent's is {mine['sac'][key]}")
        tensors = _fused_critics(ckpt)
        Checkpoint(ckpt.folder, KIND, tensors, ckpt.config, ckpt.record).load_into(self.modules())


def _fused_critics(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with critics of the two-network layout converted to :class:`TwinQ`'s."""
    tensors = dict(ckpt.tensors)
    for name in ("critic", "critic_target"):
        separate = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors)
                    if k.startswith((f"{name}.q1.", f"{name}.q2."))}
        if not separate:
            continue
        try:
            fused = TwinQ.state_from_separate(separate)
        except ValueError as err:
            raise CheckpointError(f"{ckpt.weights_path}: {name}: {err}") from None
        tensors.update({f"{name}.{k}": v for k, v in fused.items()})
    return tensors


class Learner(Protocol):
    """What :func:`train` drives: SAC, RL-ACR.

    ``begin_episode``/``explore`` are the exploring decision-maker's ``reset``/``act`` (the episode loop is
    :func:`safectrl.rl.rollout.run_episode`); ``observe`` learns from each transition; ``end_episode``
    returns the episode's extras for the log.
    """

    def begin_episode(self, seed: int | None) -> None: ...

    def explore(self, obs: np.ndarray) -> np.ndarray: ...

    def observe(self, obs, action, reward, next_obs, terminated: bool) -> None: ...

    def end_episode(self) -> dict[str, float]: ...


#: A safety layer for training: ``shield(explorer) -> decision-maker`` wraps the learner's exploration (e.g.
#: ``lambda policy: predictive_safety_filter(policy, env_id)``). If the wrapper has ``episode_report()``
#: (``{name: number}``, since its last ``reset``), :func:`train` logs it per episode as ``shield_<name>``.
Shield = Callable[[DecisionMaker], DecisionMaker]


class _Exploring:
    """A learner's exploration as a decision-maker (``reset`` = ``begin_episode``, ``act`` = ``explore``)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def reset(self, seed: int | None = None) -> None:
        self.learner.begin_episode(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.learner.explore(obs)


@dataclass
class EpisodeLog:
    """One training episode."""

    episode: int
    return_: float  # sum of rewards, failure penalty included
    length: int  # intervals
    failed: bool
    normalised_return: float  # mean reward per interval, the failing interval excluded (Tian et al.)
    step_time: float  # s per training step: acting (incl. any regulariser), env step, learning
    extras: dict[str, float] = field(default_factory=dict)  # learner-specific (e.g. mean focus weights)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["return"] = d.pop("return_")
        d.update(d.pop("extras"))
        return d


def normalised_return(rewards: np.ndarray, failed: bool) -> float:
    """Mean reward per interval; a failed episode's last (penalty) interval does not count (Tian et al.)."""
    r = np.asarray(rewards, dtype=float)
    if failed:
        r = r[:-1]
    return float(r.mean()) if len(r) else float("nan")


def train(env: gym.Env, learner: Learner, episodes: int, seed: int = 0, progress: bool = True,
          desc: str = "training", shield: Shield | None = None,
          checkpoint: TrainingCheckpoint | None = None) -> list[EpisodeLog]:
    """Run ``episodes`` whole training episodes of ``learner`` on ``env``; one update per env step.

    Each episode is one :func:`~safectrl.rl.rollout.run_episode` of the learner's exploration with its
    ``observe`` as the step callback. The env is reset with ``seed`` for the first episode and without a seed
    afterwards (one random stream); the learner's ``begin_episode`` gets ``seed + k`` in episode k.

    Args:
        env: the plant the learner trains on.
        learner: SAC, RL-ACR (:class:`Learner`).
        episodes: whole episodes to run.
        seed: the first episode's env seed, and ``begin_episode``'s in episode 0.
        progress: show a progress bar.
        desc: the progress bar's label.
        shield: wraps the exploration once, before the first episode (:data:`Shield`); ``observe`` then gets
            the action the env received (the filtered one). The wrapper's ``episode_report()``, if it has
            one, is logged as ``shield_<name>`` extras, and its mean time per decision (the learner's
            proposal included) as ``shield_decision_time`` (s).
        checkpoint: keep the run's state there between episodes and resume from it
            (:mod:`safectrl.rl.resume`): a run stopped at any point restarts with a fresh ``env`` and
            ``learner`` built as before, from the last saved episode, and ends as if it had not stopped. The
            learner needs ``training_state()`` and ``restore_training_state(tensors, record)``.

    Raises:
        ValueError: ``episodes`` < 1.
        TypeError: ``shield`` returned something that is not a decision-maker; a ``checkpoint`` for a learner
            without a training state.
        CheckpointError: the checkpoint holds another run's state (another identity, seed, or more episodes).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    explorer: DecisionMaker = _Exploring(learner)
    report = None
    if shield is not None:
        explorer = shield(explorer)
        if not isinstance(explorer, DecisionMaker):
            raise TypeError(f"shield must return a decision-maker (reset(seed=None), act(obs)), got "
                            f"{type(explorer).__name__}")
        report = getattr(explorer, "episode_report", None)
    logs: list[EpisodeLog] = []
    if checkpoint is not None:
        if not all(callable(getattr(learner, f, None)) for f in ("training_state", "restore_training_state")):
            raise TypeError(f"{type(learner).__name__} has no training state (training_state(), "
                            "restore_training_state()): it cannot be trained with a checkpoint")
        logs = _resume(env, learner, checkpoint, seed, episodes)
    for k in tqdm(range(len(logs), episodes), desc=desc, disable=not progress, leave=False, initial=len(logs),
                  total=episodes):
        violations = 0  # intervals an env flags in info["violation"] (e.g. the reactor's T > T_max)
        flagged = False  # the env reports violations at all

        def on_step(obs, action, reward, next_obs, terminated, truncated, info) -> None:
            nonlocal violations, flagged
            # ``action`` is what env.step received (run_episode passes the same array to both)
            learner.observe(obs, action, reward, next_obs, terminated)
            violations += bool(info.get("violation", False))
            flagged = "violation" in info

        ep = run_episode(env, explorer, seed + k, on_step=on_step, reseed_env=k == 0)
        failed = bool(ep.terminations[-1])  # a truncated episode did not fail
        extras = learner.end_episode()
        if flagged:
            extras = {**extras, "violations": float(violations)}
        if shield is not None:
            extras = {**extras, "shield_decision_time": float(ep.decision_time.mean())}
            if report is not None:
                extras.update({f"shield_{name}": float(v) for name, v in report().items()})
        logs.append(EpisodeLog(k, float(np.sum(ep.rewards)), ep.length, failed,
                               normalised_return(ep.rewards, failed), float(ep.step_time.mean()), extras))
        if checkpoint is not None and (checkpoint.due() or k == episodes - 1):
            _save_state(env, learner, checkpoint, seed, logs)
    return logs


def _save_state(env: gym.Env, learner: Any, checkpoint: TrainingCheckpoint, seed: int,
                logs: list[EpisodeLog]) -> None:
    tensors, state = learner.training_state()
    tensors = {f"learner.{k}": v for k, v in tensors.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    base = env.unwrapped
    env_state = base.rng_state() if callable(getattr(base, "rng_state", None)) else \
        {"np_random": generator_state(base.np_random)}
    checkpoint.save(tensors, {"episodes_done": len(logs), "seed": seed, "learner": state, "env": env_state,
                              "logs": [asdict(lg) for lg in logs]})


def _resume(env: gym.Env, learner: Any, checkpoint: TrainingCheckpoint, seed: int,
            episodes: int) -> list[EpisodeLog]:
    """The logs of the episodes in ``checkpoint`` with the learner, torch and the env put where they were
    after them; [] if it holds no state."""
    loaded = checkpoint.load()
    if loaded is None:
        return []
    tensors, record = loaded
    where = checkpoint.folder
    if record.get("seed") != seed:
        raise CheckpointError(f"{where} holds a run with seed {record.get('seed')}, not {seed}")
    if record["episodes_done"] > episodes:
        raise CheckpointError(f"{where} holds {record['episodes_done']} episodes, more than the {episodes} "
                              "asked for")
    learner.restore_training_state({k[len("learner."):]: v for k, v in tensors.items()
                                    if k.startswith("learner.")}, record["learner"])
    torch.set_rng_state(tensors["torch_rng"])
    env.reset(seed=seed)  # seeded as the first episode was; then its generators as the last episode left them
    base = env.unwrapped
    if callable(getattr(base, "set_rng_state", None)):
        base.set_rng_state(record["env"])
    else:
        set_generator_state(base.np_random, record["env"]["np_random"])
    return [EpisodeLog(**lg) for lg in record["logs"]]
