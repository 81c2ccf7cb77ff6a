"""Online training that survives its process: the state of a run at an episode boundary, resumed bit for bit
(docs/decisions.md#training-resume).

:func:`safectrl.rl.sac.train` with a :class:`TrainingCheckpoint` writes, at most every ``interval`` seconds
and after the last episode, everything the later episodes depend on:

- the learner's :meth:`training_state` (SAC: its networks, their Adam moments, the replay buffer, its
  generator and step counters; RL-ACR: the same and its focus network),
- torch's global generator (the actors sample from it),
- the env's generators (initial states, sensor noise, faults: :meth:`~safectrl.rl.env.TaskEnv.rng_state`),
- the log of every episode done.

Nothing else survives an episode: the decision-makers are reset at every episode (the MPC's and the safety
filter's warm starts and observers included), so a run resumed from episode k gives the logs, weights and
buffer of the run that never stopped, bit for bit on the same machine and thread count
(``tests/test_resume.py``). The state is a checkpoint of safectrl's one format
(:mod:`safectrl.common.checkpoint`, kind ``training-state``): tensors as safetensors, the rest as verified
JSON. Two slots (``a``, ``b``) alternate, so a write killed midway leaves the previous state; loading takes
the newer slot that verifies, and a slot that does not is named in a warning and counted
(:attr:`TrainingCheckpoint.discarded`), never used.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from safectrl.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

#: The ``kind`` of training-state checkpoints.
KIND = "training-state"
SLOTS = ("a", "b")


class TrainingCheckpoint:
    """Where one online training run keeps its state between episodes (see the module docstring).

    Args:
        folder: the run's folder (created on the first save); nothing else should be written into it.
        identity: names the run (a study's task key, or any string of your own); a folder holding another
            identity's state is refused, so two runs cannot resume each other's state.
        interval: seconds between saves at the earliest (a save is also made after the last episode);
            0 saves after every episode.
    """

    def __init__(self, folder: str | os.PathLike, identity: str, interval: float = 60.0) -> None:
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"identity must be a non-empty string, got {identity!r}")
        if not (isinstance(interval, (int, float)) and interval >= 0):
            raise ValueError(f"interval must be a number of seconds >= 0, got {interval!r}")
        self.folder = Path(folder)
        self.identity = identity
        self.interval = float(interval)
        #: Slots found unreadable or unverifiable by :meth:`load` (warned, not used).
        self.discarded: list[Path] = []
        #: Episodes in the state :meth:`load` found (0: none, the run starts afresh).
        self.resumed_at = 0
        self._newest: str | None = None  # the slot holding the newest state
        self._saved_at = time.monotonic()

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The newest state that verifies, as (tensors, record); None if there is none.

        Raises:
            CheckpointError: a slot verifies but holds another run's state (another ``identity``).
        """
        found = []
        for slot in SLOTS:
            path = self.folder / slot
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path, KIND)
            except CheckpointError as err:
                self.discarded.append(path)
                warnings.warn(f"training state {path} not used: {err}", stacklevel=2)
                continue
            if ckpt.config.get("identity") != self.identity:
                other = ckpt.config.get("identity")
                raise CheckpointError(f"{path} holds the training state of {other!r}, not of "
                                      f"{self.identity!r}; give this run another checkpoint folder")
            found.append((int(ckpt.record["episodes_done"]), slot, ckpt))
        if not found:
            return None
        self.resumed_at, self._newest, ckpt = max(found, key=lambda f: f[0])
        return ckpt.tensors, ckpt.record

    def due(self) -> bool:
        """Whether ``interval`` seconds have passed since the last save (or since this object was made)."""
        return time.monotonic() - self._saved_at >= self.interval

    def save(self, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> Path:
        """Write a state into the slot that does not hold the newest one; ``record["episodes_done"]`` counts
        the episodes it contains."""
        if "episodes_done" not in record:
            raise ValueError("a training state's record must give episodes_done")
        slot = SLOTS[1] if self._newest == SLOTS[0] else SLOTS[0]
        path = save_checkpoint(self.folder / slot, KIND, tensors, {"identity": self.identity}, record)
        self._newest = slot
        self._saved_at = time.monotonic()
        return path

    def remove(self) -> None:
        """Delete the folder (the run finished and its result is stored elsewhere)."""
        shutil.rmtree(self.folder, ignore_errors=True)


# -- pieces of a learner's state ----------------------------------------------------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str
                    ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimiser's moments as tensors ``"<prefix>.<param index>.<name>"`` and its param groups (JSON)."""
    state = optimizer.state_dict()
    tensors = {f"{prefix}.{i}.{name}": value.detach().clone()
               for i, entry in state["state"].items() for name, value in entry.items()}
    return tensors, state["param_groups"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, prefix: str, tensors: Mapping[str, torch.Tensor],
                         groups: list[dict[str, Any]]) -> None:
    """Load what :func:`optimizer_state` gave (read back from a checkpoint) into ``optimizer``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    start = f"{prefix}."
    for key, value in tensors.items():
        if key.startswith(start):
            index, name = key[len(start):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"the optimiser state {prefix!r} does not fit this learner: {err}") from None


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A NumPy generator's state as JSON."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Put a NumPy generator into a state given by :func:`generator_state`."""
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise CheckpointError(f"a {state.get('bit_generator')!r} generator state cannot be loaded into a "
                              f"{type(rng.bit_generator).__name__} generator")
    rng.bit_generator.state = dict(state)
