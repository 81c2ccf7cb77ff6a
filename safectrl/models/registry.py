"""Every plant safectrl knows, by Gymnasium id: the one table a new plant is added to.

Each entry names where the plant's :class:`~safectrl.models.task.Task` is defined, as ``"module:attribute"``,
so that registering the environments imports no model (``import safectrl`` stays fast) and a worker process
can rebuild a task from its id. A plant defined outside safectrl is added with :func:`register_task`.
"""

from __future__ import annotations

import importlib

from safectrl.models.task import Task

#: Gymnasium id -> ``"module:attribute"`` of the task.
TASKS: dict[str, str] = {
    "safectrl/PolyCSTR-v0": "safectrl.models.polycstr:TASK",
    "safectrl/Glucose-v0": "safectrl.models.glucose:TASK",
    "safectrl/BiGlucose-v0": "safectrl.models.biglucose:TASK",
    "safectrl/KlattEngellCSTR-v0": "safectrl.models.klatt_engell:TASK",
    "safectrl/CartPoleContinuous-v0": "safectrl.models.cartpole:TASK",
}

_loaded: dict[str, Task] = {}


def register_task(env_id: str, target: str | Task) -> None:
    """Add a plant: ``target`` is ``"module:attribute"`` (works in spawned workers) or a Task (this process).

    Registering the same target again is a no-op.

    Raises:
        ValueError: if ``env_id`` is registered to another target, or ``target`` is no ``module:attribute``.
    """
    if isinstance(target, Task):
        if _loaded.get(env_id) is target:
            return
        if env_id in TASKS:
            raise ValueError(f"{env_id} is already registered as {TASKS[env_id]}")
        TASKS[env_id] = f"<{target.name}, defined in this process>"
        _loaded[env_id] = target
        return
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"a task is registered as 'module:attribute', got {target!r}")
    if TASKS.get(env_id, target) != target:
        raise ValueError(f"{env_id} is already registered as {TASKS[env_id]}")
    TASKS[env_id] = target


def get_task(env_id: str) -> Task:
    """The task registered as ``env_id``; a ValueError lists the registered ids otherwise."""
    task = _loaded.get(env_id)
    if task is not None:
        return task
    if env_id not in TASKS:
        raise ValueError(f"unknown task {env_id!r}; registered: {', '.join(TASKS)}")
    module, _, attribute = TASKS[env_id].partition(":")
    task = getattr(importlib.import_module(module), attribute)
    if not isinstance(task, Task):
        raise TypeError(f"{TASKS[env_id]} is a {type(task).__name__}, not a Task")
    _loaded[env_id] = task
    return task

