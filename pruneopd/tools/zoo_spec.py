"""What a zoo build depends on: `ZooSpec` and the suites' specs (the short suite's default,
`LONG`, and the tiny `FAST` / `FAST_LONG` the tests build), with `suite_spec` to pick one and
`model_spec`, the part of a spec one model depends on (a model is rebuilt when it changes).
`pruneopd.tools.zoo` trains the models from them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from pruneopd.models import ModelSize


@dataclass(frozen=True)
class ZooSpec:
    """Everything a zoo build depends on (with the seed, it fixes the result)."""

    teacher_size: ModelSize = ModelSize(hidden=192, layers=4, heads=6)
    student_size: ModelSize = ModelSize(hidden=128, layers=4, heads=4)
    teacher_steps: int = 2500
    teacher_lr: float = 1e-3
    teacher_target: float = 0.96  # stop early once every task's accuracy reaches this
    teacher_styles: dict = field(default_factory=lambda: {"terse": 0.95, "verbose": 0.05})
    tasks: tuple[str, ...] = ("regs", "add")
    student_task: str = "regs"
    student_steps: int = 1500
    student_lr: float = 1e-3
    student_band: tuple[float, float] = (0.2, 0.6)  # accepted greedy accuracy
    student_target: float = 0.3  # stop at the first evaluation at or above this
    # student-cross's share of its own style; the rest is the teacher's dominant style, so
    # the cross student has some support for what the teacher will push it towards
    cross_own_share: float = 0.35
    # student-same's weight of logit matching against the teacher (sft.logit_matching_loss)
    # on top of cross-entropy; 0 = reference tokens only, like the other models
    same_distill: float = 0.0
    # student-cross's seed (initialisation, data order) is the build seed + this; 1 = the same
    # as student-same's, as the short zoo was built
    cross_seed_offset: int = 1
    batch_size: int = 32
    difficulty_spread: int = 0  # train on default difficulty +- spread (0: fixed length)
    min_difficulty: int = 0  # if set, train on [min_difficulty, default + spread] instead
    per_batch_difficulty: bool = False  # one difficulty per batch (SFT batches pad to longest)
    teacher_eval_every: int = 100
    student_eval_every: int = 10  # the learning jump takes ~25 steps: catch it mid-way
    student_eval_from: int = 0  # no student evaluation (nor checkpoint) before this step
    # ... nor while the mean training loss of the last 10 steps is at or above this (0: off)
    student_eval_below_loss: float = 0.0
    eval_problems: int = 64
    final_eval_problems: int = 256
    vocab_size: int = 1024
    eval_difficulty: int = 0  # 0 = each task's default


SHORT = ZooSpec()  # the short suite (regs/add): the defaults

FAST = ZooSpec(
    teacher_size=ModelSize(hidden=32, layers=1, heads=2),
    student_size=ModelSize(hidden=32, layers=1, heads=2),
    teacher_steps=3,
    student_steps=3,
    batch_size=4,
    difficulty_spread=1,
    teacher_eval_every=3,
    student_eval_every=3,
    eval_problems=4,
    final_eval_problems=8,
    student_band=(0.0, 1.0),
    student_target=0.0,
    vocab_size=300,
    eval_difficulty=2,
)


# The long-horizon suite (docs/testbed.md): `loop` programs of 5-9 rounds, 463-831-token
# traces. Models train on 1-9 rounds, one number of rounds per batch, so short batches are
# cheap and every round is the same skill wherever it sits in a response.
# what makes a zoo the long suite's, at full size (LONG) and at the tests' (FAST_LONG)
_LOOP = dict(
    tasks=("loop",),
    student_task="loop",
    teacher_styles={"terse": 1.0},
    cross_own_share=0.0,
    same_distill=0.1,
    cross_seed_offset=2,
    min_difficulty=1,
    per_batch_difficulty=True,
)
LONG = ZooSpec(
    **_LOOP,
    # 60 of 64: a build to 0.96 wobbled between 64% and 94% over steps 500-1000 at lr
    # 0.7-0.9e-3 (cosine over 2,500 steps) and did not get there in 1,000 steps
    teacher_target=0.93,
    teacher_steps=2500,
    student_steps=2000,
    teacher_eval_every=100,
    student_eval_every=10,
    student_eval_from=300,  # before the jump every evaluation runs to the cap: ~30 s each
    # the teacher's loss fell from 0.065 to 0.003 over its jump (steps 400-500): evaluate
    # a student only once its loss says the jump may be under way
    student_eval_below_loss=0.05,
    eval_problems=64,
)

FAST_LONG = replace(FAST, **_LOOP)


def model_spec(spec: ZooSpec, name: str) -> dict:
    """The part of `spec` that model `name` depends on, as plain JSON values: the teacher
    does not depend on the students' fields; a student depends on everything (its teacher
    included: compatibility is a property of the pair)."""
    d = json.loads(json.dumps(asdict(spec)))
    if name == "teacher":
        d = {k: v for k, v in d.items() if not k.startswith(("student_", "cross_", "same_"))}
    return d


def suite_spec(suite: str, fast: bool = False) -> ZooSpec:
    """The spec of a test-bed suite: "short" (regs/add) or "long" (loop); `fast`: tiny models."""
    specs = {
        ("short", False): SHORT,
        ("short", True): FAST,
        ("long", False): LONG,
        ("long", True): FAST_LONG,
    }
    if (suite, fast) not in specs:
        raise ValueError(f"unknown suite {suite!r} (choose from short, long)")
    return specs[suite, fast]
