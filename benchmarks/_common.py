"""Shared pieces of the benchmark scripts in this folder (not a benchmark itself).

- loading the built-in teacher/student pair (or another zoo folder given with --zoo),
- the prompts of each step, from a built-in task's train split,
- one OPD step of `pruneopd` written from the trainer's pieces (pruneopd/train.py), with the
  wall time of each phase: sample, score, drift (monitor + weights + budget), update,
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

from pruneopd.engines.rollout import repeat_prompts, sample
from pruneopd.engines.scoring import score_responses
from pruneopd.method.drift import monitor, reliability_weights
from pruneopd.method.losses import masked_token_mean
from pruneopd.training.objective import token_losses

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


def opd_step(
    student,
    teacher,
    tok,
    opt,
    prompts,
    *,
    cap,
    loss,
    eos_id,
    gen,
    topk=16,
    drift_k=1,
    tau=0.5,
    w_drop=0.2,
    w_base=0.5,
    metric="topk_overlap",
    budget=None,
    prune=False,
    grad_clip=1.0,
    loss_chunk=4096,
) -> dict:
    """One OPD step as pruneopd/train.py runs it (no logging, no eval); returns phase times (s),
    the number of generated tokens and the tensors the drift monitor ran on.

    full OPD (prune=False): every response token weighted 1; Prune-OPD: weighted by m_t.
    """
    pad = tok.pad_token_id
    t0 = time.perf_counter()
    student.eval()
    rollout = sample(
        student,
        prompts,
        max_new_tokens=cap,
        eos_id=eos_id,
        pad_id=pad,
        temperature=1.0,
        generator=gen,
        topk=topk,
    )
    t1 = time.perf_counter()
    mask_BT = rollout.response_mask_BT
    tokens_BT = rollout.response_tokens_BT(pad)
    cand_BTK = rollout.student_topk_ids_BTK()
    scores = score_responses(
        teacher, prompts, rollout.responses, k=topk, candidate_ids=cand_BTK, pad_id=pad
    )
    t2 = time.perf_counter()
    drift_in = (
        metric,
        cand_BTK[..., :drift_k],
        scores.topk_ids_BTK[..., :drift_k],
        scores.topk_logprobs_BTK[..., :drift_k],
        tokens_BT,
        mask_BT,
        tau,
    )
    _, events_BT = monitor(*drift_in)
    _, mult_BT, eff_len_B = reliability_weights(events_BT, mask_BT, w_drop, w_base)
    if budget is not None:
        budget.update(eff_len_B)
    t3 = time.perf_counter()
    student.train()
    input_ids_BL = rollout.to_padded(pad)[0]
    prompt_lens_B = torch.tensor([len(p) for p in prompts])
    loss_BT, _ = token_losses(
        loss,
        student,
        teacher,
        input_ids_BL,
        prompt_lens_B,
        tokens_BT,
        mask_BT,
        candidate_ids_BTK=cand_BTK,
        teacher_candidate_logprobs_BTK=scores.candidate_logprobs_BTK,
        teacher_token_logprobs_BT=scores.token_logprobs_BT,
        teacher_hidden_NH=scores.hidden_NH,
        chunk=loss_chunk,
    )
    value = masked_token_mean(loss_BT, mult_BT if prune else mask_BT.float(), mask_BT)
    opt.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    opt.step()
    t4 = time.perf_counter()
    return {
        "t_sample": t1 - t0,
        "t_score": t2 - t1,
        "t_drift": t3 - t2,
        "t_update": t4 - t3,
        "t_step": t4 - t0,
        "tokens": int(mask_BT.sum()),
        "loss": value.item(),
        "drift_in": drift_in,
        "mask_BT": mask_BT,
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
