"""A mix of built-in tasks, e.g. `task=regs+add`: the prompts alternate between the tasks, and
each problem is checked by its own task (`Problem.task` names it). What several teachers route
by when each is expert on one task (teacher_field=task; README, "Several teachers")."""

from __future__ import annotations

from .base import Problem, Task


class MixedTask(Task):
    """Problem i of a split comes from task i mod n (each task's own problems, seeds and
    splits); difficulty None gives every task its own default."""

    default_difficulty = None

    def __init__(self, tasks: list[Task]):
        self.tasks = {t.name: t for t in tasks}
        self.name = "+".join(self.tasks)
        self.styles = tuple(s for s in tasks[0].styles if all(s in t.styles for t in tasks))
        self.max_difficulty = min(t.max_difficulty for t in tasks)

    def problems(self, split: str, n: int, seed: int = 0, difficulty: int | None = None):
        k = len(self.tasks)
        each = [t.problems(split, -(-n // k), seed, difficulty) for t in self.tasks.values()]
        return [each[i % k][i // k] for i in range(n)]

    def render(self, problem: Problem, style: str) -> str:
        return self.tasks[problem.task].render(problem, style)

    def style_of(self, text: str) -> str:
        styles = [t.style_of(text) for t in self.tasks.values()]
        return next((s for s in styles if s != "other"), "other")

    def check(self, problem: Problem, text: str) -> bool:
        return self.tasks[problem.task].check(problem, text)

    def partial_credit(self, problem: Problem, text: str) -> float:
        return self.tasks[problem.task].partial_credit(problem, text)
