"""`loop`: a register program run round after round until x is 0: the long-horizon task.

Three registers holding one digit each (arithmetic wraps around) go through a program of
six labelled operations, run again and again until register x holds 0 at the end of a round.
The chain of thought writes, for every operation, its operands, result and the full register
state (so each step depends on all earlier ones), and ` |` between rounds; after the round
that leaves x at 0 it writes the answer, the final state.

Prompt:   regs x=3 y=7 z=1 ; A:x+=y B:z*=3 C:y-=x D:x+=4 E:z-=y F:y*=7 ;
terse:     A:x+=y 3+7=0>071 B:z*=3 1*3=3>073 ... F:y*=7 ... | A:x+=y ... #0..

Why this shape (docs/testbed.md): responses run to hundreds of tokens (15 per operation, 92
per round), their lengths spread with the number of rounds, and every round is the same
skill (the same six labels looked up in the prompt, the state a fixed distance back), so
what a model learns on the first rounds of a response is what it needs on the last ones.
Whether to stop is read off the value just written (x = 0?), never counted: two layouts with
a round count failed, because the models learnt every value but not a count taken from the
prompt (counting up to the prompt's number: the teacher missed the stop on 21 of 24 test
problems at step 500; counting down from it: at step 700 every marker was `1`, teacher-forced
too). `difficulty` is the largest number of rounds; a problem is drawn (by rejection) so that
x first ends a round at 0 after a number of rounds drawn uniformly between half of it
(rounded up) and all of it.
"""

from __future__ import annotations

import random

from .base import LABELS, Problem, Task
from .regs import _WORD, REGS, TERSE_STEP, VERBOSE_STEP, _apply, program_prompt

OPS_PER_ROUND = 6


def rounds_range(difficulty: int) -> tuple[int, int]:
    """The numbers of rounds a problem of `difficulty` can have (inclusive)."""
    return (difficulty + 1) // 2, difficulty


def _operation(rng: random.Random) -> tuple:
    """(destination register, op, source register or None, constant or None)."""
    dst = rng.randrange(len(REGS))
    kind = rng.random()
    if kind < 0.6:  # register operand: += or -=
        src = rng.choice([i for i in range(len(REGS)) if i != dst])
        return dst, "+" if kind < 0.35 else "-", src, None
    if kind < 0.8:
        return dst, "+", None, rng.randrange(1, 10)
    return dst, "*", None, rng.choice([3, 7, 9])


def _code(dst, op, src, const) -> str:
    return f"{REGS[dst]}{op}={REGS[src] if src is not None else const}"


def _rounds_until_x_is_0(init, program, max_rounds: int) -> int | None:
    """The first round after which x is 0, if it comes within `max_rounds`."""
    state = list(init)
    for rnd in range(1, max_rounds + 1):
        for dst, op, src, const in program:
            state[dst] = _apply(op, state[dst], state[src] if src is not None else const)
        if state[0] == 0:
            return rnd
    return None


class LoopTask(Task):
    name = "loop"
    styles = ("terse", "verbose")
    terse_step, verbose_step = TERSE_STEP, VERBOSE_STEP
    default_difficulty = 9  # at most 9 rounds (5-9: 54 operations at most)
    max_difficulty = 20

    def steps_range(self, difficulty: int) -> tuple[int, int]:
        lo, hi = rounds_range(difficulty)
        return lo * OPS_PER_ROUND, hi * OPS_PER_ROUND

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        # the number of rounds is drawn first (uniform), then a program and start state in
        # which x first ends a round at 0 after exactly that many rounds (rejection)
        want = rng.randint(*rounds_range(difficulty))
        while True:
            init = [rng.randrange(10) for _ in REGS]
            program = [_operation(rng) for _ in range(OPS_PER_ROUND)]
            rounds = _rounds_until_x_is_0(init, program, want)
            if rounds == want:
                break
        state, steps, trace = list(init), [], []
        for rnd in range(1, rounds + 1):
            for dst, op, src, const in program:
                y = state[src] if src is not None else const
                x = state[dst]
                state[dst] = _apply(op, x, y)
                trace.append((rnd, _code(dst, op, src, const), op, x, y, state[dst], tuple(state)))
                steps.append("".join(map(str, state)))
        prompt = program_prompt(init, [_code(*o) for o in program])
        return Problem(self.name, prompt, steps[-1], tuple(steps), {"trace": trace})

    def render(self, problem: Problem, style: str) -> str:
        """' <op A> ... <op F> | <op A> ... <op F> | ... #<answer>'."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name} (have {self.styles})")
        parts = []
        for i, step in enumerate(problem.data["trace"]):
            if i % OPS_PER_ROUND == 0 and i:
                parts.append(" |")
            parts.append(" " + self.render_step(LABELS[i % OPS_PER_ROUND], step[1:], style))
        return "".join(parts) + f" #{problem.answer}"

    def render_step(self, label: str, step: tuple, style: str) -> str:
        code, op, x, y, r, st = step
        if style == "terse":
            return f"{label}:{code} {x}{op}{y}={r}>{''.join(map(str, st))}"
        return f"{label} {code} so {x} {_WORD[op]} {y} = {r} state {' '.join(map(str, st))} ;"
