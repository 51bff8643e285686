"""Built-in synthetic long-horizon reasoning tasks with verifiable answers."""

from .add import AddTask
from .base import Problem, Task, in_test_split
from .loop import LoopTask
from .mixed import MixedTask
from .regs import RegsTask

# the short suite's tasks (regs, add) and the long suite's (loop)
TASKS: dict[str, Task] = {t.name: t for t in (RegsTask(), AddTask(), LoopTask())}


# the test beds: the short suite (CI, quick start) and the long-horizon one (docs/testbed.md)
SUITES: dict[str, tuple[str, ...]] = {"short": ("regs", "add"), "long": ("loop",)}


def get_task(name: str) -> Task:
    """A built-in task by name, or a mix of them ("regs+add": `MixedTask`)."""
    if "+" in name:
        return MixedTask([get_task(n) for n in name.split("+")])
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["MixedTask", "Problem", "Task", "SUITES", "TASKS", "get_task", "in_test_split"]
