"""`walk`: pointer chasing with tolls. Ten named places, two road maps ('>' and '~'), each
sending every place to another place for a toll of 0-9. A labelled list of map choices
is followed from a start place; the answer is the final place and the total toll mod 10.

Prompt:   walk from oak ; oak> elm3 elm> ash5 ... ; oak~ fig1 ... ; A> B~ C~ ;
terse:    A>: oak> elm3=3 B~: elm~ fig1=4 ... #fig4
verbose:  A> go oak> elm pay 3 total 3 ; B~ go elm~ fig pay 1 total 4 ; ... #fig4

Each step copies its map choice from the prompt (found by its label), then copies the road
`place>next toll` from the map, then adds the toll to the running total.
"""

from __future__ import annotations

import random
import re

from .base import LABELS, Problem, Task

PLACES = (
    "oak elm ash fig yew bay fir box pine lime palm rose sage iris lily moss fern reed "
    "rock sand dune hill vale cove glen lake pond well gate barn mill farm fort tower "
    "bell drum horn lamp rope sail boat cart road path bridge river stone cloud storm rain "
    "snow frost ember flame coal gold iron copper silver salt honey wheat corn plum pear"
).split()
N_PLACES = 10
ARROWS = (">", "~")
_TERSE_STEP = re.compile(r"[A-Za-z][>~]: [a-z]+[>~] ([a-z]+)\d=(\d)")
_VERBOSE_STEP = re.compile(r"[A-Za-z][>~] go [a-z]+[>~] ([a-z]+) pay \d total (\d) ;")


class WalkTask(Task):
    name = "walk"
    styles = ("terse", "verbose")
    default_difficulty = 18  # number of moves

    def _make(self, rng: random.Random, difficulty: int) -> Problem:
        places = rng.sample(PLACES, N_PLACES)
        maps = {
            a: {p: (rng.choice([q for q in places if q != p]), rng.randrange(10)) for p in places}
            for a in ARROWS
        }
        here, total = rng.choice(places), 0
        start = here
        moves, trace, steps = [], [], []
        for _ in range(difficulty):
            a = rng.choice(ARROWS)
            nxt, toll = maps[a][here]
            total = (total + toll) % 10
            moves.append(a)
            trace.append((here, a, nxt, toll, total))
            steps.append(f"{nxt}{total}")
            here = nxt
        tables = [
            " ".join(f"{p}{a} {maps[a][p][0]}{maps[a][p][1]}" for p in places) for a in ARROWS
        ]
        prompt = (
            f"walk from {start} ; "
            + " ; ".join(tables)
            + " ; "
            + " ".join(f"{lab}{a}" for lab, a in zip(LABELS, moves, strict=False))
            + " ;\n"
        )
        return Problem(self.name, prompt, steps[-1], tuple(steps), {"trace": trace})

    def render_step(self, label: str, step: tuple, style: str) -> str:
        here, a, nxt, toll, total = step
        if style == "terse":
            return f"{label}{a}: {here}{a} {nxt}{toll}={total}"
        return f"{label}{a} go {here}{a} {nxt} pay {toll} total {total} ;"

    def parse_steps(self, text: str) -> list[str]:
        if _VERBOSE_STEP.search(text):
            return ["".join(m) for m in _VERBOSE_STEP.findall(text)]
        return ["".join(m) for m in _TERSE_STEP.findall(text)]
