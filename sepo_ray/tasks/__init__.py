"""Tasks: what SEPO fine-tunes, found by name in a registry that other installed packages extend.

A task is a :class:`Task` subclass (see :mod:`sepo_ray.tasks.base`). Where tasks come from, in order:

1. the entry-point group ``sepo_ray.tasks`` of every installed distribution (``name = "module:TaskClass"``;
   sepo_ray declares ``dna`` and ``toy`` there), so ``pip install`` of another package adds its tasks;
2. :func:`register_task` in the running process;
3. a ``"module:TaskClass"`` spec given directly as the task name (``python -m sepo_ray.run mypkg.tasks:MyTask``).

``get_task(name)`` returns one cached instance per name; an unknown name raises ValueError listing the
installed tasks.
"""

from __future__ import annotations

from sepo_ray.runtime import entry_point_specs, import_object

from .base import Scorer, Task, read_prompt_file

ENTRY_POINT_GROUP = "sepo_ray.tasks"
_registered: dict[str, object] = {}
_instances: dict[str, Task] = {}


def register_task(name: str, task: type[Task] | Task) -> None:
    """Make ``task`` (a Task subclass or instance) available as ``name`` in this process."""
    if not name or ":" in name:
        raise ValueError(f"task name must be non-empty and without ':', got {name!r}")
    _registered[name] = task
    _instances.pop(name, None)


def available_tasks() -> dict[str, str]:
    """Installed task names -> where they come from (``module:attr``), sorted by name."""
    found = entry_point_specs(ENTRY_POINT_GROUP)
    for name, task in _registered.items():
        found[name] = (
            f"{getattr(task, '__module__', '?')}:{getattr(task, '__qualname__', type(task).__qualname__)}"
        )
    return dict(sorted(found.items()))


def get_task(name: str) -> Task:
    """The task ``name`` (a registered name or ``module:TaskClass``); ValueError lists the installed tasks."""
    if isinstance(name, Task):
        return name
    if name in _instances:
        return _instances[name]
    if not isinstance(name, str) or not name:
        raise ValueError(f"task must be a name, got {name!r}")
    if name in _registered:
        obj = _registered[name]
    elif ":" in name:
        obj = import_object(name, "task")
    else:
        known = available_tasks()
        if name not in known:
            raise ValueError(f"unknown task {name!r}; installed tasks: {', '.join(known)}")
        obj = import_object(known[name], f"task {name!r}")
    task = obj() if isinstance(obj, type) else obj
    if not isinstance(task, Task):
        raise ValueError(f"task {name!r} is a {type(task).__name__}, not a sepo_ray.tasks.Task")
    for attr in ("length", "num_tokens"):
        if not (isinstance(getattr(task, attr), int) and getattr(task, attr) >= 1):
            raise ValueError(f"task {name!r}: {attr} must be an integer >= 1, got {getattr(task, attr)!r}")
    if not task.default_reward:
        raise ValueError(f"task {name!r} names no default_reward")
    task.spec = (
        name  # how this instance is found again: its name, or the ``module:TaskClass`` it was given as
    )
    _instances[name] = task
    return task


__all__ = [
    "ENTRY_POINT_GROUP",
    "Scorer",
    "Task",
    "available_tasks",
    "get_task",
    "read_prompt_file",
    "register_task",
]
