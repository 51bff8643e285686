"""`add`: long addition, one digit column at a time, carrying. Two numbers of n digits are
given least significant digit first, each digit behind its column's label; the chain of
thought adds every column with the carry of the column before, so one wrong carry spoils
every column after it. The answer is the sum's digits, least significant first.

Prompt:   add A7 B2 C9 + A3 B8 C1 ;
terse:    A:7+3+0=10 B:2+8+1=11 C:9+1+1=11 #0111
verbose:  A add 7 and 3 carry 0 makes 10 ; B add 2 and 8 carry 1 makes 11 ; ... #0111

Each step copies its two digits from the prompt (found by its label), takes the carry from
the step before (the first digit of its column sum, a fixed number of tokens back), and
writes the column sum; its last digit is the answer digit of that column.
"""

from __future__ import annotations

import random
import re

from .base import LABELS, Problem, Task

TERSE_STEP = re.compile(r"[A-Za-z]:\d\+\d\+\d=(\d\d)")
VERBOSE_STEP = re.compile(r"[A-Za-z] add \d and \d carry \d makes (\d)(\d) ;")


class AddTask(Task):
    name = "add"
    styles = ("terse", "verbose")
    terse_step, verbose_step = TERSE_STEP, VERBOSE_STEP
    default_difficulty = 15  # digits per number

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        a = [rng.randrange(10) for _ in range(difficulty)]  # least significant digit first
        b = [rng.randrange(10) for _ in range(difficulty)]
        carry, trace, steps, digits = 0, [], [], []
        for x, y in zip(a, b, strict=True):
            s = x + y + carry
            trace.append((x, y, carry, s))
            steps.append(f"{s:02d}")
            digits.append(str(s % 10))
            carry = s // 10
        answer = "".join(digits) + str(carry)
        labelled = [
            " ".join(f"{lab}{d}" for lab, d in zip(LABELS, n, strict=False)) for n in (a, b)
        ]
        prompt = f"add {labelled[0]} + {labelled[1]} ;\n"
        return Problem(self.name, prompt, answer, tuple(steps), {"trace": trace})

    def render_step(self, label: str, step: tuple, style: str) -> str:
        x, y, c, s = step
        if style == "terse":
            return f"{label}:{x}+{y}+{c}={s:02d}"
        return f"{label} add {x} and {y} carry {c} makes {s // 10}{s % 10} ;"
