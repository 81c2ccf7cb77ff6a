"""Gymnasium environments, offline datasets, networks and learning agents.

Importing :mod:`safectrl` registers the environments; nothing here imports torch at import time:
``from safectrl.rl import load_policy`` (a trained BC/IQL policy from its checkpoint folder) and
``OfflinePolicy`` import torch on first use.
"""

from __future__ import annotations

import gymnasium as gym

ENV_IDS = ("safectrl/PolyCSTR-v0",)
#: The four environments of RL-ACR (Tian et al., NeurIPS 2024), id -> entry point.
ACR_ENVS = {
    "safectrl/Glucose-v0": "safectrl.rl.acr_envs:GlucoseEnv",
    "safectrl/BiGlucose-v0": "safectrl.rl.acr_envs:BiGlucoseEnv",
    "safectrl/KlattEngellCSTR-v0": "safectrl.rl.acr_envs:KlattEngellCSTREnv",
    "safectrl/CartPoleContinuous-v0": "safectrl.rl.acr_envs:CartPoleContinuousEnv",
}


def register_envs() -> None:
    """Register safectrl's environments with Gymnasium (idempotent)."""
    if "safectrl/PolyCSTR-v0" not in gym.registry:
        gym.register(
            id="safectrl/PolyCSTR-v0",
            entry_point="safectrl.rl.polycstr_env:PolyCSTREnv",
            vector_entry_point="safectrl.rl.polycstr_env:PolyCSTRVectorEnv",
        )
    for env_id, entry_point in ACR_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)


_LAZY = {"load_policy": "safectrl.rl.checkpoint", "OfflinePolicy": "safectrl.rl.policy"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
