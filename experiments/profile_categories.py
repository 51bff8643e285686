"""Experiment (issue 30): where sampling's time goes, from a py-spy raw profile.

Reads `py-spy record -f raw --native` output (one "frame;frame;... count" line per stack)
and splits the samples of `rollout.sample` into: the prompts' prefill (the Hugging Face
forward), and inside the fused kernel's `sample_steps`: projections (MKL's sgemm), attention
over the KV cache (`attend`), the pick (softmax, CDF, top-k: `pick`, `nucleus`), OpenMP
waiting, and the rest of the kernel (RMSNorm, rotary, SiLU, copies); then Python and PyTorch
operators between the kernel calls. Samples outside `sample` (imports, loading) are left out.

    py-spy record -r 25 -f raw --native -o prof.txt -- python experiments/sample_plans.py \\
        --model ~/.cache/pruneopd/real/student --samples 32 --new-tokens 64 --repeats 1 \\
        --variants auto
    python experiments/profile_categories.py prof.txt
"""

from __future__ import annotations

import sys
from collections import Counter


def category(stack: str) -> str | None:
    """The category of one stack (None: outside `sample`), by its innermost frame."""
    frames = stack.split(";")
    leaf = frames[-1].lower()
    if "sample_steps" in stack:  # the kernel, on the calling thread or an OpenMP worker
        if "sgemm" in leaf:
            return "kernel: projections and head (MKL sgemm)"
        if "attend" in leaf:
            return "kernel: attention over the KV cache"
        if "pick" in leaf or "nucleus" in leaf or "sort" in leaf:
            return "kernel: pick (softmax, CDF, top-k)"
        if "gomp" in leaf or "omp_" in leaf:
            return "kernel: OpenMP (waiting, thread set-up)"
        return "kernel: other (RMSNorm, rotary, SiLU, copies)"
    if "sample (pruneopd/engines/rollout.py" not in stack:  # imports, loading
        return None
    if any("forward (transformers/" in f or "_prefill" in f for f in frames):
        return "prefill (Hugging Face forward over the prompts)"
    if any("FusedDecoder.__init__" in f or "LeanDecoder.__init__" in f for f in frames):
        return "decoder set-up (cache copy, weights)"
    return "Python and PyTorch operators between kernel calls"


def main() -> None:
    counts: Counter[str] = Counter()
    for line in open(sys.argv[1]):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        c = category(stack)
        if c is not None and n.isdigit():
            counts[c] += int(n)
    total = sum(counts.values())
    print(f"{total} samples in sample()")
    for k, v in counts.most_common():
        print(f"{100 * v / total:5.1f}%  {k}")


if __name__ == "__main__":
    main()
