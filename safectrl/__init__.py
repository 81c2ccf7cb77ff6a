"""safectrl: process models, reference controllers, offline RL and safety layers for process control."""

from safectrl.rl import register_envs

__version__ = "0.1.0"

register_envs()
