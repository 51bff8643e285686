"""Built-in synthetic long-horizon reasoning tasks with verifiable answers."""

from .add import AddTask
from .base import Problem, Task, in_test_split
from .regs import RegsTask

TASKS: dict[str, Task] = {t.name: t for t in (RegsTask(), AddTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["Problem", "Task", "TASKS", "get_task", "in_test_split"]
