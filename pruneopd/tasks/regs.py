"""`regs`: a register machine. Three registers mod 10 go through a list of labelled
operations; the chain of thought writes every operation's operands, result and the full
register state, so each step depends on all earlier ones.

Prompt:   regs a=3 b=7 c=1 ; 1:a+=b 2:c*=3 3:b-=a ;
terse:    1:3+7=0>071 2:1*3=3>073 3:7-0=7>073 #073
verbose:  s1 add 3 7 = 0 so a0 b7 c1 ; s2 mul 1 3 = 3 so a0 b7 c3 ; ... #073
"""

from __future__ import annotations

import random
import re

from .base import Problem, Task

REGS = "abc"
_WORD = {"+": "add", "-": "sub", "*": "mul"}
_TERSE_STEP = re.compile(r"(?:^|\s)\d+:\d[+\-*]\d=\d>(\d{3})")
_VERBOSE_STEP = re.compile(r"s\d+ (?:add|sub|mul) \d \d = \d so a(\d) b(\d) c(\d) ;")


def _apply(op: str, x: int, y: int) -> int:
    if op == "+":
        return (x + y) % 10
    if op == "-":
        return (x - y) % 10
    return (x * y) % 10


class RegsTask(Task):
    name = "regs"
    styles = ("terse", "verbose")
    default_difficulty = 16  # number of operations

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        state = [rng.randrange(10) for _ in REGS]
        init = list(state)
        ops, steps, trace = [], [], []
        for _ in range(difficulty):
            dst = rng.randrange(len(REGS))
            kind = rng.random()
            if kind < 0.35:
                op, src = "+", rng.choice([i for i in range(len(REGS)) if i != dst])
                y, arg = state[src], REGS[src]
            elif kind < 0.6:
                op, src = "-", rng.choice([i for i in range(len(REGS)) if i != dst])
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
            trace.append((op, x, y, state[dst], tuple(state)))
            steps.append("".join(map(str, state)))
        prompt = (
            "regs "
            + " ".join(f"{r}={v}" for r, v in zip(REGS, init, strict=True))
            + " ; "
            + " ".join(f"{i + 1}:{o}" for i, o in enumerate(ops))
            + " ;\n"
        )
        return Problem(self.name, prompt, steps[-1], tuple(steps), {"trace": trace})

    def render(self, problem: Problem, style: str) -> str:
        parts = []
        for i, (op, x, y, r, st) in enumerate(problem.data["trace"]):
            if style == "terse":
                parts.append(f"{i + 1}:{x}{op}{y}={r}>{''.join(map(str, st))}")
            elif style == "verbose":
                regs = " ".join(f"{n}{v}" for n, v in zip(REGS, st, strict=True))
                parts.append(f"s{i + 1} {_WORD[op]} {x} {y} = {r} so {regs} ;")
            else:
                raise ValueError(f"unknown style {style!r} for task regs (have {self.styles})")
        return " ".join(parts) + f" #{problem.answer}"

    def parse_steps(self, text: str) -> list[str]:
        if _VERBOSE_STEP.search(text):
            return ["".join(m) for m in _VERBOSE_STEP.findall(text)]
        return _TERSE_STEP.findall(text)
