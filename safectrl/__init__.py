"""safectrl: process models, reference controllers, offline RL and safety layers for process control."""

from safectrl.rl import register_envs, register_task

__version__ = "0.1.0"

__all__ = ["register_task"]

register_envs()
