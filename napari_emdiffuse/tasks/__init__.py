"""The task registry: every restoration task the engine, the CLI, the widgets, training and the
model cards know. A task is a :class:`~.base.Task` plug-in registered here; a new one (say
deblurring) is a module with a Task subclass and one :func:`register` call, nothing else."""
from __future__ import annotations

from .base import Geometry, Task, Unit
from .denoise import DENOISE
from .isotropic import ISOTROPIC
from .superres import SUPERRES

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task (replacing one of the same name); returns it."""
    if not task.name:
        raise ValueError("a task needs a name")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name is an error, never a fallback."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(_REGISTRY)}") from None


def task_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def all_tasks() -> tuple[Task, ...]:
    return tuple(_REGISTRY.values())


for _task in (DENOISE, SUPERRES, ISOTROPIC):
    register(_task)

__all__ = ["Geometry", "Task", "Unit", "register", "unregister", "get_task", "task_names", "all_tasks"]
