"""A run's one warning about the failure measured on the real pair (docs/benchmarks.md section
12): the student stops ending its responses. On-policy samples that derail (a wrong step the
rest of the response builds on) get a teacher signal that favours going on, and the student
learns to run to the cap; on SmolLM2 it took 4 steps. The training metrics show it (EOS rate,
mean length) long before an evaluation does, so the trainer says it once, on stderr."""

from __future__ import annotations


class EndingWatch:
    """Watches each step's EOS rate (the share of samples that ended with a stop token) and cap.

    `update` returns a note once: after a step whose samples ended at least `was` of the time,
    the EOS rate has been 0 for `patience` steps in a row under a cap at least as long as that
    step's (a cap that shrank below the responses' length stops them without the student
    having changed, and says nothing).

    Example: EOS rates 0.9, 0.4, 0, 0, 0 under a cap of 448 -> a note at the fifth step.
    """

    def __init__(self, patience: int = 3, was: float = 0.5):
        self.patience, self.was = patience, was
        self.ended_cap: int | None = None  # the largest cap of a step whose samples ended
        self.run = 0  # steps in a row with EOS rate 0 under at least that cap
        self.said = False

    def update(self, step: int, eos_rate: float, mean_len: float, cap: int) -> str | None:
        if self.said:
            return None
        if eos_rate >= self.was:
            self.ended_cap = max(self.ended_cap or 0, cap)
        if self.ended_cap is not None and eos_rate == 0 and cap >= self.ended_cap:
            self.run += 1
        else:
            self.run = 0
        if self.run < self.patience:
            return None
        self.said = True
        return (
            f"pruneopd: note: step {step}: the student has stopped ending its responses (no "
            f"sample ended in {self.patience} steps, mean length {mean_len:.0f} under a cap of "
            f"{cap}; its samples used to end): derailed samples can teach it to go on; look at "
            "samples.jsonl or `pruneopd inspect`, and docs/choosing.md, 'A real pretrained pair'"
        )
