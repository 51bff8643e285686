"""Shared pieces of the benchmark scripts in this folder (not a benchmark itself).

- loading the built-in teacher/student pair (or another zoo folder given with --zoo),
- the prompts of each step, from a built-in task's train split,
- one OPD step of `pruneopd`: the trainer's own phases (pruneopd/training/step.py) on a `Run`
  built in this process (`bench_run`), with the wall time of each phase,
- tokens/s summaries, a plain-text table and the --json output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from pruneopd.config import TrainConfig
from pruneopd.engines.rollout import repeat_prompts
from pruneopd.training.setup import local_run
from pruneopd.training.step import metrics_phase, sample_phase, score_and_weigh, update_phase

NEVER_EOS = -1  # an id `sample` can never emit: every response runs to max_new_tokens


def add_common_args(p: argparse.ArgumentParser, *, steps: int, batch: int, new_tokens: int):
    p.add_argument("--steps", type=int, default=steps, help="timed repeats per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats per side first")
    p.add_argument("--batch", type=int, default=batch, help="prompts per step")
    p.add_argument("--responses-per-prompt", type=int, default=4, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=new_tokens, help="response tokens")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--zoo", default=None, help="zoo folder (default: $PRUNEOPD_ZOO, else shipped)")
    p.add_argument("--student", default="student-cross", help="zoo name or HF folder")
    p.add_argument("--teacher", default="teacher", help="zoo name or HF folder")
    p.add_argument("--task", default="regs", help="built-in task the prompts come from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def setup(args) -> None:
    """Threads and zoo location; call before loading any model."""
    torch.set_num_threads(args.threads)
    if args.zoo:
        os.environ["PRUNEOPD_ZOO"] = str(Path(args.zoo).expanduser().resolve())


def load_models(args, *, teacher: bool = True):
    """(student, teacher or None, tokenizer), float32 on CPU, teacher frozen."""
    from pruneopd.models import load_model, load_tokenizer

    tok = load_tokenizer(args.student)
    student = load_model(args.student)
    t = None
    if teacher:
        if load_tokenizer(args.teacher).get_vocab() != tok.get_vocab():
            raise SystemExit(f"{args.teacher} and {args.student} have different vocabularies")
        t = load_model(args.teacher).eval().requires_grad_(False)
    return student, t, tok


def step_prompts(args, tok, n_steps: int) -> list[list[list[int]]]:
    """For each step: `batch` train prompts, each repeated `responses_per_prompt` times."""
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import prompt_ids

    task = get_task(args.task)
    problems = task.problems("train", n_steps * args.batch, seed=args.seed)
    ids = [prompt_ids(tok, p) for p in problems]
    return [
        repeat_prompts(ids[i * args.batch : (i + 1) * args.batch], args.responses_per_prompt)
        for i in range(n_steps)
    ]


def bench_config(args, **overrides) -> TrainConfig:
    """The trainer's config of a benchmark step: full OPD (unless overridden) on this
    benchmark's pair, task, batch and seed, every response capped at --new-tokens."""
    n = args.new_tokens
    kw = dict(
        student=args.student,
        teacher=args.teacher,
        task=args.task,
        method="full",
        max_len=n,
        init_len=n,
        min_len=min(64, n),
        prompts_per_step=args.batch,
        responses_per_prompt=args.responses_per_prompt,
        seed=args.seed,
        max_steps=max(1, args.warmup + args.steps),
    )
    kw.update(overrides)
    return TrainConfig(**kw)


def bench_run(args, cfg: TrainConfig, student, teacher, tok, n_steps: int, *, eos_id: int):
    """A `Run` of the trainer (pruneopd.training.setup.local_run) over these models, with the
    train problems of `n_steps` steps (the prompts of `step_prompts`)."""
    from pruneopd.tasks import get_task

    task = get_task(args.task)
    problems = task.problems("train", n_steps * args.batch, seed=args.seed)
    return local_run(cfg, student, teacher, tok, task, problems, eos_id=eos_id)


def opd_step(run, step: int) -> dict:
    """Step `step` of the trainer's own phases (pruneopd/training/step.py: sample, score and
    weigh, update, metrics); returns their wall times (s), the generated tokens, the loss and
    the phases' records."""
    t0 = time.perf_counter()
    batch = sample_phase(run, step)
    w = score_and_weigh(run, batch)
    upd = update_phase(run, batch, w)
    m = metrics_phase(run, step, batch, w, upd)
    return {
        "t_sample": batch.seconds,
        "t_score": w.seconds,  # the teacher's scores, the monitor and the method's weights
        "t_update": upd.seconds,
        "t_step": time.perf_counter() - t0,
        "tokens": int(w.mask_BT.sum()),
        "loss": m["loss"],
        "weighed": w,
    }


def summary(times: list[float], tokens: list[int]) -> dict:
    """Median and total tokens/s over timed repeats, with the median seconds per repeat."""
    rates = [n / t for n, t in zip(tokens, times, strict=True)]
    return {
        "repeats": len(times),
        "tokens_per_repeat": statistics.median(tokens),
        "median_s": statistics.median(times),
        "median_tok_s": statistics.median(rates),
        "total_tok_s": sum(tokens) / sum(times),
    }


def print_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    """rows of dicts; cols = (key, header, format spec)."""
    cells = [[h for _, h, _ in cols]]
    cells += [[format(r[k], f) if f else str(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for j, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def environment(args) -> dict:
    import transformers

    return {
        "args": vars(args),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "zoo": os.environ.get("PRUNEOPD_ZOO", "shipped"),
    }
