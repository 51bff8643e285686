"""Sampling speed of the working tree's `pruneopd.engines.decode` against a committed one, in one process.

The machines are noisy, so a change to the decode step is measured against the code before it
in the same process, alternating: the module `pruneopd/engines/decode.py` as of git revision --ref is
loaded beside the working tree's, and `pruneopd.engines.rollout.sample` runs with one, then the other
(the order rotates every repeat), on the same prompts and uniforms. It also checks that both
give the same tokens, and prints how far apart their log-probs are (float rounding).

Run:
    python benchmarks/ab_sampling.py --ref HEAD --zoo pruneopd/zoo_weights/long --task loop \\
        --new-tokens 512 --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import NEVER_EOS, add_common_args, load_models, setup, step_prompts

from pruneopd.engines import decode, rollout

ROOT = Path(__file__).resolve().parents[1]


def load_ref_decode(ref: str):
    """The lean decoder at git revision `ref` (`pruneopd/engines/decode.py`, or
    `pruneopd/decode.py` before the package's layers), as a module of its own."""
    for path in ("pruneopd/engines/decode.py", "pruneopd/decode.py"):
        got = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True
        )
        if got.returncode == 0:
            break
    else:
        raise SystemExit(f"ab_sampling: no decode.py at revision {ref}")
    src = got.stdout
    path = Path(tempfile.mkdtemp()) / "decode_ref.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("decode_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=5, batch=8, new_tokens=512)
    p.add_argument("--ref", default="HEAD", help="git revision of the decode step to compare")
    p.add_argument("--topk", type=int, default=16)
    args = p.parse_args()
    setup(args)
    model, _, tok = load_models(args, teacher=False)
    model.eval()
    variants = {f"decode.py @ {args.ref}": load_ref_decode(args.ref), "working tree": decode}
    n = args.new_tokens
    per_step = step_prompts(args, tok, args.warmup + args.steps)
    times = {k: [] for k in variants}
    worst = 0.0
    for i, prompts in enumerate(per_step):
        u = rollout.sample_uniforms(len(prompts), n, torch.Generator().manual_seed(i))
        outs = {}
        names = list(variants)
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            rollout.decode = variants[name]
            t0 = time.perf_counter()
            outs[name] = rollout.sample(
                model,
                prompts,
                max_new_tokens=n,
                eos_id=NEVER_EOS,
                pad_id=tok.pad_token_id,
                uniforms_BN=u,
                topk=args.topk,
            )
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        rollout.decode = decode
        a, b = outs.values()
        if a.responses != b.responses:
            sys.exit("the two decode steps sampled different tokens")
        pairs = zip(a.student_logprobs, b.student_logprobs, strict=True)
        diff = max(float((x - y).abs().max()) for x, y in pairs)
        worst = max(worst, diff)
        if diff > 1e-4:
            sys.exit(f"log-probs differ by {diff:.2e} > 1e-4")
    base = statistics.median(times[names[0]])
    print(
        f"{len(per_step[0])} samples x {n} new tokens, {args.threads} threads, "
        f"top-{args.topk}, {args.student} ({args.zoo or 'shipped zoo'}); same tokens, "
        f"log-probs within {worst:.1e}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:24s} median {med:.3f} s ({base / med:.2f}x the reference)  "
            f"runs: {', '.join(f'{t:.3f}' for t in ts)}"
        )


if __name__ == "__main__":
    main()
