"""Experiment (issue 30): the fused sampler's plans against the lean engine and `generate` on
any HF checkpoint, in one process, alternating.

Variants: fused with `plan_sampling`'s choice, fused forced to spread groups of 4 (the zoo
design) and to one split group, the lean engine, and `model.generate` (temperature 1, full
vocabulary, exactly N tokens). Medians of tokens/s over repeats; the fused variants' tokens
are compared with the lean engine's (the same uniforms).

    python experiments/sample_plans.py --model ~/.cache/pruneopd/real/student --samples 32 \\
        --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF folder or zoo name")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="auto,spread4,split,lean,generate")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from pruneopd.engines import fused
    from pruneopd.engines.rollout import left_pad, sample
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import prompt_ids

    name = str(Path(args.model).expanduser()) if "/" in args.model else args.model
    tok, model = load_tokenizer(name), load_model(name).eval()
    problems = get_task("regs").problems("train", args.samples // 4, seed=0)
    prompts = [prompt_ids(tok, x) for x in problems for _ in range(4)]
    n, pad = args.new_tokens, tok.pad_token_id
    u = torch.rand(len(prompts), n, generator=torch.Generator().manual_seed(0))
    plans = {
        "spread4": fused.Plan(fused.SAMPLE_GROUP, False, "forced"),
        "split": fused.Plan(len(prompts), True, "forced"),
    }
    real_plan = fused.FusedDecoder.plan

    def ours(engine, plan=None):
        fused.FusedDecoder.plan = (lambda self: plan) if plan else real_plan
        r = sample(
            model,
            prompts,
            max_new_tokens=n,
            eos_id=-1,
            pad_id=pad,
            uniforms_BN=u,
            engine=engine,
            topk=16,
        )
        fused.FusedDecoder.plan = real_plan
        return r.responses

    def generate():
        ids, att, _ = left_pad(prompts, pad)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=att,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=n,
                max_new_tokens=n,
                use_cache=True,
                pad_token_id=pad,
            )

    fns = {
        "auto": lambda: ours("fused"),
        "spread4": lambda: ours("fused", plans["spread4"]),
        "split": lambda: ours("fused", plans["split"]),
        "lean": lambda: ours("lean"),
        "generate": generate,
    }
    names = args.variants.split(",")
    times = {k: [] for k in names}
    outs = {}
    for i in range(args.repeats + 1):
        for j in range(len(names)):
            k = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            outs[k] = fns[k]()
            s = time.perf_counter() - t0
            print(f"  round {i}{' (warm-up)' if not i else ''}: {k} {s:.2f} s", flush=True)
            if i:
                times[k].append(s)
    B = len(prompts)
    params = sum(x.numel() for x in model.parameters()) / 1e6
    print(f"{name}: {params:.0f}M parameters, {B} samples x {n} tokens, {args.threads} threads")
    for k in names:
        med = statistics.median(times[k])
        same = (
            ""
            if k == "generate" or "lean" not in outs
            else f" same tokens as lean: {outs[k] == outs['lean']}"
        )
        print(f"{k:9s} {B * n / med:8.1f} tok/s  (median {med:.2f} s){same}")


if __name__ == "__main__":
    main()
