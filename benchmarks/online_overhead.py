"""What online pruning costs a Prune-OPD step when it prunes nothing.

Online pruning scores each chunk with the teacher while the student samples (the teacher's
KV cache kept between chunks), instead of one teacher forward over the whole responses after
sampling. With nothing to prune (w_drop = 0: no weight ever falls), both give the same
tokens and the same scores, so any difference in time is the price of scoring in chunks.
Three variants run alternately in one process on the same prompts, weights and uniforms:

- offline: `sample`, then `score_responses` (one teacher forward, right-padded);
- online (hf): `sample(on_chunk=OnlinePruner)` with each chunk a Hugging Face forward on a
  growing `DynamicCache` (the path before this benchmark);
- online (lean): the same with the chunks on `decode.LeanDecoder`'s preallocated cache
  (`IncrementalScorer(max_new_tokens=cap, engine="lean")`, PyTorch operators);
- online (fused): the same cache with each chunk one call into the compiled extension
  (`engine="fused"`, what the trainer uses where the kernel builds).

The share is (online - offline) / (offline + update), the update being one forward and
backward of the student's `topk_rkl` loss on the step's tokens (timed once per repeat: the
same for every variant), online - offline being the median over repeats of the difference
within each repeat (the variants run back to back, so a slow spell of the host hits both). Target (issue 15): at most 5% at the default chunk size.

Run:
    python benchmarks/online_overhead.py --zoo pruneopd/zoo_weights/long --task loop \\
        --new-tokens 512 --chunk 32 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import (
    NEVER_EOS,
    add_common_args,
    environment,
    load_models,
    setup,
    step_prompts,
    write_json,
)

from pruneopd.engines import fused
from pruneopd.engines.online import OnlinePruner
from pruneopd.engines.rollout import sample, sample_uniforms
from pruneopd.engines.scoring import IncrementalScorer, score_responses
from pruneopd.method.weighing import DriftSettings
from pruneopd.training.objective import token_losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=5, batch=8, new_tokens=512)
    p.add_argument("--chunk", type=int, default=32, help="online chunk size (preset default)")
    p.add_argument("--topk", type=int, default=16)
    args = p.parse_args()
    setup(args)
    student, teacher, tok = load_models(args)
    student.eval()
    n, k, pad = args.new_tokens, args.topk, tok.pad_token_id

    def offline(prompts, u):
        r = sample(
            student, prompts, max_new_tokens=n, eos_id=NEVER_EOS, pad_id=pad, uniforms_BN=u, topk=k
        )
        s = score_responses(
            teacher, prompts, r.responses, k=k, candidate_ids=r.student_topk_ids_BTK(), pad_id=pad
        )
        return r, s

    def online(prompts, u, engine):
        scorer = IncrementalScorer(
            teacher,
            prompts,
            k=k,
            pad_id=pad,
            max_new_tokens=None if engine == "hf" else n,
            engine=engine,
        )
        pruner = OnlinePruner(scorer, DriftSettings("topk_overlap", k, 0.5, 0.0, 0.0), floor=0.0)
        r = sample(
            student,
            prompts,
            max_new_tokens=n,
            eos_id=NEVER_EOS,
            pad_id=pad,
            uniforms_BN=u,
            topk=k,
            chunk_size=args.chunk,
            on_chunk=pruner,
        )
        return r, pruner.assemble(len(prompts), n)

    variants = {"offline": offline}
    for engine in ("hf", "lean", "fused"):
        if engine == "fused" and not fused.available():
            continue
        variants[f"online ({engine})"] = lambda ps, u, e=engine: online(ps, u, e)
    names = list(variants)
    times = {name: [] for name in [*names, "update"]}
    worst = 0.0
    for i, prompts in enumerate(step_prompts(args, tok, args.warmup + args.steps)):
        u = sample_uniforms(len(prompts), n, torch.Generator().manual_seed(i))
        outs = {}
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            outs[name] = variants[name](prompts, u)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        r, ref = outs["offline"]
        for name in names[1:]:
            r2, s2 = outs[name]
            if r2.responses != r.responses or "pruned" in r2.stopped_by:
                sys.exit(f"{name}: different tokens, or something was pruned")
            for a, b in (
                (s2.topk_logprobs_BTK, ref.topk_logprobs_BTK),
                (s2.candidate_logprobs_BTK, ref.candidate_logprobs_BTK),
            ):
                worst = max(worst, float((a - b).abs().max()))
        student.train()
        t0 = time.perf_counter()
        input_ids_BL = r.to_padded(pad)[0]
        mask_BT = r.response_mask_BT
        loss_BT, _ = token_losses(
            "topk_rkl",
            student,
            teacher,
            input_ids_BL,
            torch.tensor([len(x) for x in prompts]),
            r.response_tokens_BT(pad),
            mask_BT,
            candidate_ids_BTK=r.student_topk_ids_BTK(),
            teacher_candidate_logprobs_BTK=ref.candidate_logprobs_BTK,
        )
        loss_BT[mask_BT].mean().backward()
        student.zero_grad(set_to_none=True)
        student.eval()
        if i >= args.warmup:
            times["update"].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    step = med["offline"] + med["update"]
    print(
        f"{len(prompts)} samples x {n} tokens, chunk {args.chunk}, {args.threads} threads; "
        f"same tokens, teacher log-probs within {worst:.1e}"
    )
    rows = []
    for name in names:
        diffs = [a - b for a, b in zip(times[name], times["offline"], strict=True)]
        share = statistics.median(diffs) / step
        rows.append({"variant": name, "median_s": med[name], "overhead_share": share})
        print(
            f"{name:14s} sample + score {med[name]:.3f} s   overhead {100 * share:+.1f}% of a "
            f"step ({step:.3f} s with the update)"
        )
    print(f"update (forward + backward) {med['update']:.3f} s")
    write_json(
        args.json,
        {
            "benchmark": "online_overhead",
            **environment(args),
            "rows": rows,
            "times": times,
            "chunk": args.chunk,
        },
    )


if __name__ == "__main__":
    main()
