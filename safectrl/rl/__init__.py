"""Gymnasium environments, offline datasets, networks and learning agents.

Importing :mod:`safectrl` registers the environments; nothing here imports torch at import time.
"""

from __future__ import annotations

import gymnasium as gym

ENV_IDS = ("safectrl/PolyCSTR-v0",)


def register_envs() -> None:
    """Register safectrl's environments with Gymnasium (idempotent)."""
    if "safectrl/PolyCSTR-v0" not in gym.registry:
        gym.register(
            id="safectrl/PolyCSTR-v0",
            entry_point="safectrl.rl.polycstr_env:PolyCSTREnv",
            vector_entry_point="safectrl.rl.polycstr_env:PolyCSTRVectorEnv",
        )
