"""Experiment (session 13): the full-OPD step's teacher scoring and update by PyTorch operator.

Samples 8 prompts x 4 responses x --new-tokens tokens from the long zoo's cross student once,
then times the teacher's scoring (`score_responses`) and the student's update (full-vocabulary
reverse KL forward + backward) 3 times each and prints a `torch.profiler` table of one more
call of each, by self CPU time. `PRUNEOPD_ATTENTION=0` shows the SDPA path.

    python experiments/profile_step_ops.py [--new-tokens 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import NEVER_EOS, add_common_args, load_models, setup, step_prompts  # noqa: E402

from pruneopd.engines.rollout import sample  # noqa: E402
from pruneopd.engines.scoring import score_responses  # noqa: E402
from pruneopd.method.losses import masked_token_mean  # noqa: E402
from pruneopd.training.objective import token_losses  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=1, batch=8, new_tokens=512)
    p.set_defaults(zoo="pruneopd/zoo_weights/long", task="loop", threads=2)
    args = p.parse_args()
    setup(args)
    student, teacher, tok = load_models(args)
    prompts = step_prompts(args, tok, 1)[0]
    pad = tok.pad_token_id
    ro = sample(
        student,
        prompts,
        max_new_tokens=args.new_tokens,
        eos_id=NEVER_EOS,
        pad_id=pad,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
        topk=16,
    )
    mask_BT, tokens_BT = ro.response_mask_BT, ro.response_tokens_BT(pad)
    cand = ro.student_topk_ids_BTK()
    ids = ro.to_padded(pad)[0]
    prompt_lens = torch.tensor([len(q) for q in prompts])

    def score():
        return score_responses(teacher, prompts, ro.responses, k=16, candidate_ids=cand, pad_id=pad)

    scores = score()

    def update():
        student.train()
        loss_BT, _ = token_losses(
            "full_rkl",
            student,
            teacher,
            ids,
            prompt_lens,
            tokens_BT,
            mask_BT,
            teacher_hidden_NH=scores.hidden_NH,
        )
        masked_token_mean(loss_BT, mask_BT.float(), mask_BT).backward()

    update()
    for name, fn in (("score", score), ("update", update)):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        print(name, " ".join(f"{x:.3f}" for x in ts), "s")
    for name, fn in (("score", score), ("update", update)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(
            f"\n{name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        )


if __name__ == "__main__":
    main()
