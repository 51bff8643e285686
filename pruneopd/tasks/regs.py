"""`regs`: a register machine. Three registers mod 10 go through a list of labelled
operations; the chain of thought writes every operation's operands, result and the full
register state, so each step depends on all earlier ones.

Prompt:   regs x=3 y=7 z=1 ; A:x+=y B:z*=3 C:y-=x ;
terse:    A:x+=y 3+7=0>071 B:z*=3 1*3=3>073 C:y-=x 7-0=7>073 #073
verbose:  A y+=x so 3 add 7 = 0 state 0 7 1 ; ... #073

Each step first copies its operation from the prompt (found by its label), then computes
from the register state of the step before, which sits a fixed number of tokens back.
"""

from __future__ import annotations

import random
import re

from .base import LABELS, Problem, Task

REGS = "xyz"
_WORD = {"+": "add", "-": "sub", "*": "mul"}
_OP = r"[xyz][+\-*]=[xyz\d]"
TERSE_STEP = re.compile(r"[A-Za-z]:" + _OP + r" \d[+\-*]\d=\d>(\d{3})")
VERBOSE_STEP = re.compile(
    r"[A-Za-z] " + _OP + r" so \d (?:add|sub|mul) \d = \d state (\d) (\d) (\d) ;"
)


def _apply(op: str, x: int, y: int) -> int:
    if op == "+":
        return (x + y) % 10
    if op == "-":
        return (x - y) % 10
    return (x * y) % 10


def program_prompt(init: list[int], codes: list[str]) -> str:
    """'regs x=3 y=7 z=1 ; A:x+=y B:z*=3 ... ;\n': start state, then the labelled operations."""
    return (
        "regs "
        + " ".join(f"{r}={v}" for r, v in zip(REGS, init, strict=True))
        + " ; "
        + " ".join(f"{lab}:{c}" for lab, c in zip(LABELS, codes, strict=False))
        + " ;\n"
    )


class RegsTask(Task):
    name = "regs"
    styles = ("terse", "verbose")
    terse_step, verbose_step = TERSE_STEP, VERBOSE_STEP
    default_difficulty = 10  # number of operations

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        state = [rng.randrange(10) for _ in REGS]
        init = list(state)
        ops, steps, trace = [], [], []
        for _ in range(difficulty):
            dst = rng.randrange(len(REGS))
            kind = rng.random()
            if kind < 0.6:  # register operand: += or -=
                op = "+" if kind < 0.35 else "-"
                src = rng.choice([i for i in range(len(REGS)) if i != dst])
                y, arg = state[src], REGS[src]
            elif kind < 0.8:
                op, y = "+", rng.randrange(1, 10)
                arg = str(y)
            else:
                op, y = "*", rng.choice([3, 7, 9])
                arg = str(y)
            x = state[dst]
            state[dst] = _apply(op, x, y)
            ops.append(f"{REGS[dst]}{op}={arg}")
            trace.append((ops[-1], op, x, y, state[dst], tuple(state)))
            steps.append("".join(map(str, state)))
        return Problem(
            self.name, program_prompt(init, ops), steps[-1], tuple(steps), {"trace": trace}
        )

    def render_step(self, label: str, step: tuple, style: str) -> str:
        code, op, x, y, r, st = step
        if style == "terse":
            return f"{label}:{code} {x}{op}{y}={r}>{''.join(map(str, st))}"
        return f"{label} {code} so {x} {_WORD[op]} {y} = {r} state {' '.join(map(str, st))} ;"
