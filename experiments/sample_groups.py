"""Experiment (session 14): the fused sampler token by token against `sample_steps` blocks, by
group size, and what one decode step costs as the cache grows.

Part 1 times one `FusedDecoder.step` (32 samples) at cache lengths 40 to 552 (medians of 200
calls; the step's cost against the slots it reads). Part 2 samples 32 prompts of the `loop`
task (8 x 4) x N new tokens from the long zoo's student, in one process, alternating: the
per-token loop (`sample_steps` switched off) and `sample_steps` with each group size given;
medians over repeats and the median of the per-repeat ratios; tokens compared with the
per-token loop (a different token is a uniform within float rounding of a CDF boundary).

    python experiments/sample_groups.py --new-tokens 512 --groups 1,2,4,8,16 --repeats 4
    python experiments/sample_groups.py --new-tokens 128 --groups 2,4,8 --repeats 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

ZOO = Path(__file__).resolve().parents[1] / "pruneopd" / "zoo_weights" / "long"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--groups", default="1,2,4,8,16")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-steps", action="store_true", help="skip part 1")
    args = p.parse_args()
    os.environ.setdefault("PRUNEOPD_ZOO", str(ZOO))
    torch.set_num_threads(args.threads)
    from pruneopd.engines import fused, rollout, sampling_plan
    from pruneopd.models import cache_kwarg, load_model, load_tokenizer
    from pruneopd.tasks import get_task

    tok = load_tokenizer("teacher")
    student = load_model("student-cross").eval()
    if not args.skip_steps:
        A, P, N = 32, 40, 600
        ids, mask, pos = rollout.left_pad([[5] * P] * A, 0)
        cache = DynamicCache(config=student.config)
        with torch.no_grad():
            dec = student.get_decoder()
            dec(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{cache_kwarg(dec): cache},
            )
        dec = fused.FusedDecoder(student, cache, P, N)
        dec.K.normal_(), dec.V.normal_()
        tok_A, pos_A = torch.randint(3, 300, (A,)), torch.full((A,), P)
        for t in (0, 64, 256, 512):
            ts = []
            for _ in range(200):
                t0 = time.perf_counter()
                dec.step(tok_A, pos_A + t, t, mask)
                ts.append(time.perf_counter() - t0)
            print(
                f"one decode step, 32 samples, {P + t:4d} cache slots: "
                f"{1e3 * statistics.median(ts):.3f} ms"
            )

    problems = get_task("loop").problems("train", 8, seed=0)
    prompts = [tok.encode(x.prompt, add_special_tokens=False) for x in problems for _ in range(4)]
    n = args.new_tokens
    u = torch.rand(len(prompts), n, generator=torch.Generator().manual_seed(0))
    blocks = fused.FusedDecoder.can_sample_steps

    def run(mode):
        fused.FusedDecoder.can_sample_steps = (lambda self: False) if mode == "token" else blocks
        if mode != "token":
            sampling_plan.SAMPLE_GROUP = mode
        t0 = time.perf_counter()
        r = rollout.sample(
            student,
            prompts,
            max_new_tokens=n,
            eos_id=-1,
            pad_id=tok.pad_token_id,
            uniforms_BN=u,
            engine="fused",
            topk=16,
        )
        return time.perf_counter() - t0, r

    modes = ["token", *(int(g) for g in args.groups.split(","))]
    times = {m: [] for m in modes}
    ref = run("token")[1]  # warm-up and reference
    differ = {m: 0 for m in modes}
    for i in range(args.repeats):
        for m in modes if i % 2 == 0 else modes[::-1]:
            dt, r = run(m)
            times[m].append(dt)
            same = zip(r.responses, ref.responses, strict=True)
            differ[m] = max(differ[m], sum(a != b for a, b in same))
    fused.FusedDecoder.can_sample_steps = blocks
    print(f"{len(prompts)} samples x {n} tokens, {args.threads} threads, {args.repeats} repeats")
    sampling_plan.SAMPLE_GROUP = 4
    blk = run(4)[1]
    for i, (a, b) in enumerate(zip(ref.responses, blk.responses, strict=True)):
        if a != b:  # where the first different token is, and how close the draw was
            j = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
            la, lb = ref.student_logprobs[i], blk.student_logprobs[i]
            before = float((la[:j] - lb[:j]).abs().max()) if j else 0.0
            print(
                f"groups of 4: sample {i} differs first at token {j}: {a[j]} vs {b[j]}, "
                f"log-probs {float(la[j]):.4f} / {float(lb[j]):.4f}, u = {float(u[i, j]):.6f}; "
                f"earlier log-probs within {before:.1e}"
            )
    for m in modes:
        ratio = statistics.median(a / b for a, b in zip(times["token"], times[m], strict=True))
        name = "token by token" if m == "token" else f"sample_steps, groups of {m}"
        print(
            f"{name:28s} median {statistics.median(times[m]):.3f} s   {ratio:.2f}x the "
            f"per-token loop   samples with a different token: {differ[m]}"
        )


if __name__ == "__main__":
    main()
