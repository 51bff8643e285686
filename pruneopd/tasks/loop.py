"""`loop`: a register program run for several rounds: the long-horizon task.

Three registers holding one digit each (arithmetic wraps around) go through a program of
six labelled operations, run again and again for the number of rounds the prompt asks
for. The chain of thought counts the rounds down (each round is led by the number of rounds
left, the last by 1) and writes, for every operation, its operands, result and the full
register state, so each step depends on all earlier ones.

Prompt:   regs x=3 y=7 z=1 ; A:x+=y B:z*=3 C:y-=x D:x+=4 E:z-=y F:y*=7 ; | 2
terse:     A:x+=y 3+7=0>071 B:z*=3 1*3=3>073 ... F:y*=7 ... | 1 A:x+=y ... #...

Why this shape (docs/testbed.md): responses run to hundreds of tokens (15 per operation, 93
per round), their lengths spread with the number of rounds, and every round is the same
skill (the same six labels looked up in the prompt, the state and the round count a fixed
distance back), so what a model learns on the first rounds of a response is what it needs on
the last ones. The prompt ends with the first round's marker (the number of rounds), so every
marker is the one before minus one, found a fixed distance back, and the stop is local (after
round 1). Two earlier layouts failed: counting up to the prompt's number (the teacher, right on
nearly every value, missed the stop on 21 of 24 test problems at step 500), and counting down
with the first marker in the response (at step 900 the teacher wrote ` | 1` as its first
marker on every test problem instead of copying the prompt's count). `difficulty` is the
largest number of rounds (at most 9, one digit); a problem has between half of it (rounded
up) and all of it.
"""

from __future__ import annotations

import random

from .base import LABELS, Problem, Task
from .regs import _WORD, REGS, TERSE_STEP, VERBOSE_STEP, _apply

OPS_PER_ROUND = 6


def rounds_range(difficulty: int) -> tuple[int, int]:
    """The numbers of rounds a problem of `difficulty` can have (inclusive)."""
    return (difficulty + 1) // 2, difficulty


class LoopTask(Task):
    name = "loop"
    styles = ("terse", "verbose")
    terse_step, verbose_step = TERSE_STEP, VERBOSE_STEP
    default_difficulty = 9  # at most 9 rounds (5-9: 54 operations at most)
    max_difficulty = 9  # the round count is one digit

    def steps_range(self, difficulty: int) -> tuple[int, int]:
        lo, hi = rounds_range(difficulty)
        return lo * OPS_PER_ROUND, hi * OPS_PER_ROUND

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        state = [rng.randrange(10) for _ in REGS]
        init = list(state)
        program = []
        for _ in range(OPS_PER_ROUND):
            dst = rng.randrange(len(REGS))
            kind = rng.random()
            if kind < 0.6:  # register operand: += or -=
                op = "+" if kind < 0.35 else "-"
                src = rng.choice([i for i in range(len(REGS)) if i != dst])
                program.append((dst, op, src, None))
            elif kind < 0.8:
                program.append((dst, "+", None, rng.randrange(1, 10)))
            else:
                program.append((dst, "*", None, rng.choice([3, 7, 9])))
        rounds = rng.randint(*rounds_range(difficulty))
        steps, trace = [], []
        for rnd in range(rounds, 0, -1):  # rounds left, this one included
            for dst, op, src, const in program:
                y = state[src] if src is not None else const
                x = state[dst]
                state[dst] = _apply(op, x, y)
                code = f"{REGS[dst]}{op}={REGS[src] if src is not None else const}"
                trace.append((rnd, code, op, x, y, state[dst], tuple(state)))
                steps.append("".join(map(str, state)))
        codes = [t[1] for t in trace[:OPS_PER_ROUND]]
        prompt = (
            "regs "
            + " ".join(f"{r}={v}" for r, v in zip(REGS, init, strict=True))
            + " ; "
            + " ".join(f"{lab}:{c}" for lab, c in zip(LABELS, codes, strict=False))
            + f" ; | {rounds}"
        )
        return Problem(self.name, prompt, steps[-1], tuple(steps), {"trace": trace})

    def render(self, problem: Problem, style: str) -> str:
        """' <op A> ... <op F> | n-1 <op A> ... | 1 <op A> ... <op F> #<answer>' (the prompt
        ends with round n's marker ' | n')."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name} (have {self.styles})")
        parts = []
        for i, step in enumerate(problem.data["trace"]):
            if i % OPS_PER_ROUND == 0 and i:
                parts.append(f" | {step[0]}")
            parts.append(" " + self.render_step(LABELS[i % OPS_PER_ROUND], step[1:], style))
        return "".join(parts) + f" #{problem.answer}"

    def render_step(self, label: str, step: tuple, style: str) -> str:
        code, op, x, y, r, st = step
        if style == "terse":
            return f"{label}:{code} {x}{op}{y}={r}>{''.join(map(str, st))}"
        return f"{label} {code} so {x} {_WORD[op]} {y} = {r} state {' '.join(map(str, st))} ;"
