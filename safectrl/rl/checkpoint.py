"""Checkpoints of the offline agents (BC, IQL) in safectrl's one format (:mod:`safectrl.common.checkpoint`).

The config holds the algorithm, its hyperparameters and the normalisation; the tensors are every network of
the agent; loading rebuilds the actor from the config and checks the tensors' names and shapes against it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from safectrl.common.checkpoint import (
    CONFIG,
    RETRAIN,
    WEIGHTS,
    Checkpoint,
    CheckpointError,
    checkpoint_folder,
    load_checkpoint,
    module_tensors,
    parse_weights,
    read_config,
    read_weights,
    save_checkpoint,
)
from safectrl.models.registry import get_task
from safectrl.rl.networks import DeterministicActor
from safectrl.rl.offline_data import Normalisation
from safectrl.rl.policy import OfflinePolicy

#: The ``kind`` of offline-policy checkpoints.
KIND = "offline-policy"
#: The format of safectrl before the common checkpoint: its weights are hashed, its config is not.
_V1_FORMAT = "safectrl-offline-policy"


class Agent(Protocol):
    algo: str
    config: Any

    def networks(self) -> dict[str, torch.nn.Module]: ...


def save_policy(path: str | os.PathLike, agent: Agent, normalisation: Normalisation,
                record: dict[str, Any] | None = None) -> Path:
    """Write ``agent``'s networks, hyperparameters and normalisation as a checkpoint folder ``path``.

    Args:
        path: checkpoint folder (created if needed).
        agent: a trained :class:`~safectrl.rl.bc.BC` or :class:`~safectrl.rl.iql.IQL`.
        normalisation: the normalisation the agent was trained with.
        record: what else to remember (datasets, scenarios, seed, steps, reward scale ...); JSON-serialisable.
    """
    config = {"algo": agent.algo, "hyperparameters": asdict(agent.config),
              "normalisation": normalisation.as_dict()}
    return save_checkpoint(path, KIND, module_tensors(agent.networks()), config, record)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The verified config and record of the checkpoint ``path`` as one dict (algo, hyperparameters, ...)."""
    ckpt = _load(path)
    return {**ckpt.record, **ckpt.config}


def load_policy(path: str | os.PathLike) -> OfflinePolicy:
    """The policy stored in a checkpoint folder (or its ``model.safetensors``), ready to ``act``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: a pickle-based file, a corrupted or altered file, or weights that do not match
            the recorded config.
    """
    ckpt = _load(path)
    try:
        normalisation = Normalisation.from_dict(ckpt.config["normalisation"])
        hidden = tuple(int(h) for h in ckpt.config["hyperparameters"]["hidden"])
        algo = ckpt.config["algo"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt.config_path} is incomplete or malformed: {err!r}") from None
    _check_policy_config(ckpt.config_path, algo, hidden, normalisation, ckpt.record)
    actor = DeterministicActor(normalisation.net_obs_dim, normalisation.act_dim, hidden)
    tensors = {k: v for k, v in ckpt.tensors.items() if k.startswith("actor.")}
    Checkpoint(ckpt.folder, KIND, tensors, ckpt.config, ckpt.record).load_into({"actor": actor})
    return OfflinePolicy(actor, normalisation, {**ckpt.record, **ckpt.config})


#: Widest hidden layer and most layers a checkpoint may ask for (a guard against absurd allocations).
MAX_WIDTH, MAX_LAYERS = 65_536, 16


def _check_policy_config(config_path: Path, algo: Any, hidden: tuple[int, ...], normalisation: Normalisation,
                         record: dict[str, Any]) -> None:
    """What the hash cannot vouch for: a known algorithm, sane layer sizes, and the task's bounds and shapes."""
    if algo not in ("bc", "iql"):
        raise CheckpointError(f"{config_path}: unknown algorithm {algo!r} (bc or iql)")
    if not hidden or len(hidden) > MAX_LAYERS or not all(1 <= h <= MAX_WIDTH for h in hidden):
        raise CheckpointError(f"{config_path}: hidden layers {list(hidden)} outside 1..{MAX_WIDTH} units, "
                              f"1..{MAX_LAYERS} layers")
    if "observations" not in record:  # not trained on a task's env (nothing to compare the bounds with)
        return
    env_id = record.get("env", "safectrl/PolyCSTR-v0")
    try:
        task = get_task(env_id)
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    m = task.model
    if list(record["observations"]) != list(task.observations) or list(record.get("inputs", m.inputs)) != list(m.inputs):
        raise CheckpointError(f"{config_path}: observations {record['observations']} and inputs "
                              f"{record.get('inputs')} are not those of {env_id}")
    if normalisation.obs_dim != len(task.observations) or normalisation.act_dim != m.nu:
        raise CheckpointError(f"{config_path}: {normalisation.obs_dim} observations and {normalisation.act_dim} "
                              f"actions, but {env_id} has {len(task.observations)} and {m.nu}")
    if not (np.array_equal(normalisation.action_low, m.u_low) and np.array_equal(normalisation.action_high, m.u_high)):
        raise CheckpointError(f"{config_path}: action bounds {normalisation.action_low.tolist()} .. "
                              f"{normalisation.action_high.tolist()} are not {env_id}'s input bounds "
                              f"{m.u_low.tolist()} .. {m.u_high.tolist()}")


def _load(path: str | os.PathLike) -> Checkpoint:
    doc = read_config(path)
    if doc.get("format") == _V1_FORMAT and doc.get("format_version") == 1:
        return _load_v1(checkpoint_folder(path), doc)
    if doc.get("format") == _V1_FORMAT:
        raise CheckpointError(f"{checkpoint_folder(path) / CONFIG} has {_V1_FORMAT} version "
                              f"{doc.get('format_version')}; {RETRAIN}")
    return load_checkpoint(path, KIND)


def _load_v1(folder: Path, doc: dict[str, Any]) -> Checkpoint:
    """A checkpoint of the first format: the weights are verified by their hash; the config could not be."""
    weights = read_weights(folder / WEIGHTS)
    expected = doc.get("weights_sha256")
    if expected is None or hashlib.sha256(weights).hexdigest() != expected:
        raise CheckpointError(f"{folder / WEIGHTS} does not match the weights_sha256 in {CONFIG}: "
                              "corrupted or altered")
    config = {"algo": doc.get("algo"), "hyperparameters": doc.get("config"),
              "normalisation": doc.get("normalisation")}
    skip = {"format", "format_version", "algo", "config", "normalisation", "weights_sha256"}
    record = {k: v for k, v in doc.items() if k not in skip}
    return Checkpoint(folder, KIND, parse_weights(weights, folder / WEIGHTS), config, record)
