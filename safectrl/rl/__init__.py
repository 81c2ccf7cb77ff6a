"""Gymnasium environments, offline datasets, networks and learning agents.

Importing :mod:`safectrl` registers one environment per task of :data:`safectrl.models.registry.TASKS`
(:class:`safectrl.rl.env.TaskEnv`, with :class:`~safectrl.rl.env.TaskVectorEnv` as its vector entry point);
nothing here imports torch at import time: ``from safectrl.rl import load_policy`` (a trained BC/IQL policy
from its checkpoint folder) and ``OfflinePolicy`` import torch on first use.
"""

from __future__ import annotations

import gymnasium as gym

from safectrl.models import registry
from safectrl.models.task import Task


def _register(env_id: str) -> None:
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point="safectrl.rl.env:TaskEnv",
                     vector_entry_point="safectrl.rl.env:TaskVectorEnv", kwargs={"task": env_id})


def register_envs() -> None:
    """Register an environment for every task of the registry with Gymnasium (idempotent)."""
    for env_id in registry.TASKS:
        _register(env_id)


def register_task(env_id: str, target: str | Task) -> None:
    """Add a plant and its environment: ``target`` is ``"module:attribute"`` of a Task (also found by spawned
    worker processes that import that module) or the Task itself (this process only)."""
    registry.register_task(env_id, target)
    _register(env_id)


_LAZY = {"load_policy": "safectrl.rl.checkpoint", "OfflinePolicy": "safectrl.rl.policy"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
