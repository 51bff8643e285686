"""Experiment (session 11): how far the sampler is from the machine's limit at long horizons.

Issue 15 asks for our sampler at >= 3x `model.generate` (32 samples x 512 new tokens, long zoo,
2 threads). This measures, in one process, what bounds that ratio:

- the machine's streaming read bandwidth (sum over a 256 MB float32 tensor, --threads threads);
- the bytes of KV cache a 32 x N sampling call must read: every decode step reads every layer's
  keys and values up to its position, layers x 2 x A x kv_heads x head_dim x 4 B x sum(P + t);
- the sampler's and `generate`'s wall time (alternating, median of --repeats);
- one profiled sampler call (torch.profiler): self time of the fused attention, and per
  decode step of the projections (aten::mm) and of the other operators; the sampler's wall
  time minus the attention is "the rest" (operators and the Python between them);
- the same split for a short call (--short new tokens), where every layer's cache fits in the
  last-level cache: the per-step time of the non-attention operators at short vs long horizon
  says how much streaming the cache slows the small operators down.

From these: the floor (KV bytes / bandwidth), the attention's achieved bandwidth, and the ratio
to `generate` our sampler would reach if the attention ran at streaming bandwidth with the rest
as now, and if everything but the cache read were free.

Run: python experiments/decode_roofline.py [--threads 2] [--new-tokens 512] [--short 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ATTENTION = "aten::_scaled_dot_product_flash_attention_for_cpu"


def bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Streaming read bandwidth in GB/s: the best of `repeats` sums over an `mb` MB tensor."""
    x = torch.ones(mb * 1024 * 1024 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def kv_bytes(cfg, A: int, P: int, N: int) -> int:
    """Bytes of K and V read by N decode steps of A samples after a P-token prompt (float32)."""
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    slots = sum(P + t + 1 for t in range(N))
    return cfg.num_hidden_layers * 2 * A * n_kv * D * 4 * slots


def split(prof, steps: int) -> dict:
    """Self CPU seconds of attention / projections / the rest, and the rest per step (ms)."""
    total = attn = mm = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total / 1e6
        if e.key == ATTENTION:
            attn += e.self_cpu_time_total / 1e6
        elif e.key == "aten::mm":
            mm += e.self_cpu_time_total / 1e6
    rest = total - attn - mm
    return {
        "total_s": total,
        "attention_s": attn,
        "mm_s": mm,
        "rest_s": rest,
        "mm_ms_per_step": 1e3 * mm / steps,
        "rest_ms_per_step": 1e3 * rest / steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--short", type=int, default=64, help="new tokens of the short profiled call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--zoo", default="pruneopd/zoo_weights/long")
    p.add_argument("--student", default="student-cross")
    p.add_argument("--task", default="loop")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["PRUNEOPD_ZOO"] = str(Path(args.zoo).resolve())
    from pruneopd.engines.rollout import left_pad, repeat_prompts, sample
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import prompt_ids

    tok = load_tokenizer(args.student)
    model = load_model(args.student).eval()
    problems = get_task(args.task).problems("train", 8, seed=0)
    prompts = repeat_prompts([prompt_ids(tok, q) for q in problems], 4)
    A, pad = len(prompts), tok.pad_token_id
    P = max(len(q) for q in prompts)

    def ours(n):
        sample(
            model,
            prompts,
            max_new_tokens=n,
            eos_id=-1,
            pad_id=pad,
            temperature=1.0,
            generator=torch.Generator().manual_seed(0),
            topk=16,
        )

    def hf(n):
        ids, attention, _ = left_pad(prompts, pad)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=attention,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=n,
                max_new_tokens=n,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
            )

    N = args.new_tokens
    ours(8), hf(8)
    t_ours, t_hf = [], []
    for _ in range(args.repeats):
        for f, out in ((ours, t_ours), (hf, t_hf)):
            t0 = time.perf_counter()
            f(N)
            out.append(time.perf_counter() - t0)
    ours_s, hf_s = statistics.median(t_ours), statistics.median(t_hf)
    profiles = {}
    for n in (N, args.short):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ours(n)
        profiles[n] = split(prof, n)
    bw = bandwidth_gbs()
    kv = kv_bytes(model.config, A, P, N)
    # the attention's self time (about 1 ms a call, so the profiler's overhead is small); the
    # rest of the plain call's wall time is everything else, Python between operators included
    attn_s = profiles[N]["attention_s"]
    other_s = ours_s - attn_s
    floor_s = kv / bw / 1e9
    res = {
        "threads": args.threads,
        "samples": A,
        "prompt_len": P,
        "new_tokens": N,
        "bandwidth_gbs": bw,
        "kv_gb": kv / 1e9,
        "kv_floor_s": floor_s,
        "ours_s": ours_s,
        "generate_s": hf_s,
        "ratio": hf_s / ours_s,
        "attention_s": attn_s,
        "attention_gbs": kv / attn_s / 1e9,
        "other_s": other_s,
        "ratio_if_attention_at_bandwidth": hf_s / (floor_s + other_s),
        "ratio_if_only_kv_read": hf_s / floor_s,
        "profile": {str(k): v for k, v in profiles.items()},
    }
    print(f"{A} samples x {N} new tokens (prompt {P}), {args.threads} threads")
    print(f"streaming read bandwidth      {bw:6.1f} GB/s")
    print(f"KV cache read by the sampler  {kv / 1e9:6.2f} GB -> floor {floor_s:.2f} s")
    print(f"ours {ours_s:.2f} s, generate {hf_s:.2f} s: {hf_s / ours_s:.2f}x")
    print(
        f"  attention {attn_s:.2f} s ({res['attention_gbs']:.1f} GB/s), the rest {other_s:.2f} s "
        f"({1e3 * other_s / N:.1f} ms per decode step)"
    )
    for n, s in profiles.items():
        print(
            f"  profiled at {n:4d} tokens: projections {s['mm_ms_per_step']:.2f} ms/step, "
            f"other operators {s['rest_ms_per_step']:.2f} ms/step"
        )
    print(
        f"ratio if attention ran at streaming bandwidth: {res['ratio_if_attention_at_bandwidth']:.2f}x"
    )
    print(f"ratio if only the KV read cost time:           {res['ratio_if_only_kv_read']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
