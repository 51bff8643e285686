"""What every built-in task provides: seeded problems, trace styles, answer checking.

A task is a family of synthetic long-horizon reasoning problems. Each problem has one
canonical chain of intermediate values (`steps`) and a final `answer`; a *style* is one
way of writing that chain down as text. Styles differ in tokens and layout but reach the
same answer, so a model trained on one style is "the same family" as the teacher and a
model trained on another is "a different family".
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

ANSWER_RE = re.compile(r"#([0-9A-Za-z]+)\s*$")
# Step labels: one single-letter token per step, so a step can find its operation in the
# prompt by content. X-Z and x-z come last (x, y, z name registers in `regs`), so only the
# longest problems (47-52 steps) use them.
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWabcdefghijklmnopqrstuvwXYZxyz"
MAX_DIFFICULTY = len(LABELS)


@dataclass(frozen=True)
class Problem:
    """One problem: what the model sees, what it must answer, and the reference chain."""

    task: str
    prompt: str
    answer: str
    steps: tuple[str, ...]  # canonical value after each reasoning step
    data: dict = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class: subclasses implement `_make` (one problem) and `render` / `parse_steps`."""

    name: str = ""
    styles: tuple[str, ...] = ()
    default_difficulty: int = 16
    max_difficulty: int = MAX_DIFFICULTY

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        raise NotImplementedError

    def steps_range(self, difficulty: int) -> tuple[int, int]:
        """How many reasoning steps a problem of `difficulty` has (inclusive bounds); for
        most tasks exactly `difficulty`."""
        return difficulty, difficulty

    def render_step(self, label: str, step: tuple, style: str) -> str:
        """One reasoning step (an entry of `problem.data["trace"]`) written in `style`."""
        raise NotImplementedError

    def render(self, problem: Problem, style: str) -> str:
        """The reference response (chain of thought + final answer) in `style`:
        ' <step 1> <step 2> ... #<answer>', every step led by its label."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r} for task {self.name} (have {self.styles})")
        steps = zip(LABELS, problem.data["trace"], strict=False)
        return "".join(" " + self.render_step(lab, st, style) for lab, st in steps) + (
            f" #{problem.answer}"
        )

    # one match per written step, in each style; a match's groups join into the step's value
    terse_step: re.Pattern
    verbose_step: re.Pattern

    def style_of(self, text: str) -> str:
        """The style a response is written in: "verbose" if any step is written verbose, else
        "terse" if any is written terse, else "other"."""
        if self.verbose_step.search(text):
            return "verbose"
        return "terse" if self.terse_step.search(text) else "other"

    def parse_steps(self, text: str) -> list[str]:
        """The step values a response writes, in order, whatever its style."""
        pattern = self.verbose_step if self.style_of(text) == "verbose" else self.terse_step
        return ["".join(m) if isinstance(m, tuple) else m for m in pattern.findall(text)]

    # ---- shared machinery -------------------------------------------------------------

    def problems(self, split: str, n: int, seed: int = 0, difficulty: int | None = None):
        """`n` problems of `split` ("train" or "test"), deterministic in (split, seed).

        Splits are disjoint by construction: a problem belongs to "test" iff a hash of its
        prompt falls in a fixed 1/8 bucket, and each split only keeps its own problems.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        difficulty = self.default_difficulty if difficulty is None else difficulty
        if not 1 <= difficulty <= self.max_difficulty:
            raise ValueError(
                f"difficulty must be in [1, {self.max_difficulty}] for task {self.name}, "
                f"got {difficulty}"
            )
        rng = random.Random(f"{self.name}/{split}/{seed}/{difficulty}")
        out: list[Problem] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n:
            p = self._make(rng, difficulty)
            if in_test_split(p.prompt) != (split == "test") or p.prompt in seen:
                misses += 1
                if misses > 100 * (n + 100):  # small difficulties have few distinct problems
                    raise ValueError(
                        f"task {self.name} has only about {len(out)} distinct {split} problems "
                        f"at difficulty {difficulty}; asked for {n}"
                    )
                continue
            seen.add(p.prompt)
            out.append(p)
        return out

    def extract_answer(self, text: str) -> str | None:
        """The final answer written after the last '#', or None if malformed."""
        m = ANSWER_RE.search(text.strip())
        return m.group(1) if m else None

    def check(self, problem: Problem, text: str) -> bool:
        """True iff the response ends with exactly the right final answer."""
        return self.extract_answer(text) == problem.answer

    def partial_credit(self, problem: Problem, text: str) -> float:
        """Share of leading reasoning steps written correctly (stops at the first error)."""
        return leading_share(problem.steps, self.parse_steps(text))


def leading_share(ref: tuple | list, got: list) -> float:
    """The share of `ref` that `got` matches item for item from the start, up to its first
    difference. Example: ref (1, 2, 3), got [1, 5, 3] -> 1/3."""
    n_ok = 0
    for r, g in zip(ref, got, strict=False):
        if r != g:
            break
        n_ok += 1
    return n_ok / len(ref)


def in_test_split(prompt: str) -> bool:
    return hashlib.sha256(prompt.encode()).digest()[0] % 8 == 0
