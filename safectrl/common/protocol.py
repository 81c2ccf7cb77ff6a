"""The one interface of everything that decides an input: controllers, agents, and safety layers around them.

PI, NMPC (through its observer), BC, IQL, SAC, RL-ACR and every safety filter implement it, and every study
and episode loop talks to them through it alone, so a controller of your own is a row in a study without any
change to safectrl (``safectrl study --controller NAME=package.module:factory``).

* ``reset(seed=None)`` starts an episode: forget estimates, integrals, warm starts; ``seed`` seeds whatever
  the decision-maker draws at random (most draw nothing).
* ``act(obs) -> action`` maps one observation of the env (physical units, the task's ``observations``
  layout) to one input (physical units, the task's ``inputs`` layout). It is called once per control
  interval, in order, so a decision-maker may keep state between calls (an estimator, an integral).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DecisionMaker(Protocol):
    """Anything that maps observations to inputs, one control interval at a time (see the module docstring)."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...
