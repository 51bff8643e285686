"""The full-OPD step with the causal attention kernel (pruneopd/engines/attention.py) against SDPA, in one
process, alternating.

Each repeat runs the trainer's full-OPD step (benchmarks/_common.py `opd_step`: the phases of
pruneopd/training/step.py: sample, teacher scoring, full-vocabulary reverse KL, backward, AdamW) once with the kernel and once with
`PRUNEOPD_ATTENTION=0` (Hugging Face's SDPA), the order rotating every repeat, on the same prompts
and the same random draws, from the same student weights (restored before each step). Prints the
median phase times of each side, their ratios, and how far apart the two sides' losses are.

Run:
    python benchmarks/ab_attention.py --zoo pruneopd/zoo_weights/long --task loop \\
        --new-tokens 512 --threads 2 --steps 6
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics

import torch
from _common import (
    NEVER_EOS,
    add_common_args,
    bench_config,
    bench_run,
    load_models,
    opd_step,
    setup,
)

from pruneopd.engines import attention

PHASES = ("t_sample", "t_score", "t_update", "t_step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=6, batch=8, new_tokens=512)
    args = p.parse_args()
    setup(args)
    if not attention.available():
        raise SystemExit("ab_attention: the causal attention kernel is not available here")
    student, teacher, tok = load_models(args)
    start = copy.deepcopy(student.state_dict())
    n_steps = args.steps + 1
    cfg = bench_config(args, loss="full_rkl", warmup_steps=0, max_steps=n_steps)
    run = bench_run(args, cfg, student, teacher, tok, n_steps, eos_id=NEVER_EOS)
    sides = {"kernel": "1", "sdpa": "0"}
    times = {s: {k: [] for k in PHASES} for s in sides}
    gaps = []
    for i in range(n_steps):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        losses = {}
        for side in order:
            os.environ["PRUNEOPD_ATTENTION"] = sides[side]
            student.load_state_dict(start)  # both sides: the same weights, optimiser and draws
            run.opt = torch.optim.AdamW(run.ps.parameters(), lr=1e-4, weight_decay=0.0)
            run.gen = torch.Generator().manual_seed(args.seed + i)
            r = opd_step(run, i)
            losses[side] = r["loss"]
            if i > 0:  # the first round warms both sides up
                for k in PHASES:
                    times[side][k].append(r[k])
        gaps.append(abs(losses["kernel"] - losses["sdpa"]))
        if i > 0:
            print(f"repeat {i}: " + "  ".join(f"{s} {times[s]['t_step'][-1]:.2f}s" for s in sides))
    os.environ.pop("PRUNEOPD_ATTENTION", None)
    med = {s: {k: statistics.median(v) for k, v in times[s].items()} for s in sides}
    print(
        f"\nfull-OPD step, {run.batch_size} sequences x {args.new_tokens} new tokens, "
        f"{args.threads} threads, median of {args.steps} repeats"
    )
    print(f"{'phase':9s} {'kernel s':>9s} {'sdpa s':>9s} {'sdpa / kernel':>14s}")
    for k in PHASES:
        a, b = med["kernel"][k], med["sdpa"][k]
        print(f"{k[2:]:9s} {a:9.3f} {b:9.3f} {b / a:13.2f}x")
    print(f"largest loss gap between the sides: {max(gaps):.2e}")
    if args.json:
        out = {"args": vars(args), "median_s": med, "times_s": times, "max_loss_gap": max(gaps)}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
