"""The real pair's task: running sums, a verifiable task with responses of a few hundred tokens.

A problem lists N single-digit numbers (N = 8-30) and asks for the running total after each;
the reference response writes one line per addition and ends with the total:

    Add these numbers one at a time, writing the running total after each step:
    7, 3, 9, 4
    ->
    7 + 3 = 10
    10 + 9 = 19
    19 + 4 = 23
    The total is 23.

Each line is ~9 tokens of the SmolLM2 tokenizer (digits are single tokens), so the test
problems (N = 20-30) have responses of ~180-280 tokens. The answer is checked by
`math-verify` like any data file (`pruneopd.tasks.data`): the last number of the response must
equal the total, so one wrong addition anywhere makes the answer wrong: a long chain where the
student drifts and the teacher's per-token signal tells it where.

SmolLM2-135M-Instruct is not trained for it (its accuracy untouched: docs/benchmarks.md,
section 11): the teacher is fine-tuned on the reference responses (`pruneopd real tune teacher`), the depth-pruned student
warmed up on them for fewer steps (`pruneopd real tune student`).

Files are plain JSONL rows `{"prompt", "answer", "response", "steps"}`: `prompt`/`answer` are
what `data=` reads; `response` is the reference used by the fine-tunes; `steps`, its lines, give
the evaluation's partial credit (the share of lines right before the first wrong one: a finer
measure than the answer when few answers are right; `pruneopd.tasks.data`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Add these numbers one at a time, writing the running total after each step:"
TRAIN_LENGTHS = (8, 30)
TEST_LENGTHS = (20, 30)


def sums_problem(rng: random.Random, lo: int, hi: int) -> dict:
    """One problem of `lo`-`hi` numbers: its prompt, answer and reference response."""
    xs = [rng.randint(1, 9) for _ in range(rng.randint(lo, hi))]
    lines, total = [], xs[0]
    for x in xs[1:]:
        lines.append(f"{total} + {x} = {total + x}")
        total += x
    lines.append(f"The total is {total}.")
    prompt = f"{INSTRUCTION}\n{', '.join(map(str, xs))}"
    return {"prompt": prompt, "answer": str(total), "response": "\n".join(lines), "steps": lines}


def write_task(
    out: str | Path, n_train: int = 4000, n_dev: int = 64, n_test: int = 200, seed: int = 0
) -> dict:
    """train.jsonl, dev.jsonl (the fine-tunes' early stopping) and test.jsonl (the OPD runs'
    held-out set) under `out`; no prompt occurs in two of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"sums/{seed}")
    test = [sums_problem(rng, *TEST_LENGTHS) for _ in range(n_test)]
    seen = {r["prompt"] for r in test}

    def fresh(n: int, lengths: tuple[int, int]) -> list[dict]:
        rows = []
        while len(rows) < n:
            r = sums_problem(rng, *lengths)
            if r["prompt"] not in seen:
                seen.add(r["prompt"])
                rows.append(r)
        return rows

    dev, train = fresh(n_dev, TEST_LENGTHS), fresh(n_train, TRAIN_LENGTHS)
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return {"out": str(out), "train": len(train), "dev": len(dev), "test": len(test), "seed": seed}
