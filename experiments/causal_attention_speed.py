"""Experiment (session 13): the causal attention kernel (pruneopd/engines/attention.py) against PyTorch's
SDPA at the OPD step's shape, one process, alternating.

q, k, v [32, 4, 562, 32] (the long zoo's student: 32 sequences of a 50-token prompt + 512
tokens, 4 heads of 32 dims), float32, --threads threads; median of 5 calls per variant, two
rounds. SDPA with is_causal=True and with no mask shows whether PyTorch's CPU kernel skips the
masked half; forward alone and forward + backward.

    python experiments/causal_attention_speed.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pruneopd.engines import attention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not attention.available():
        raise SystemExit("causal_attention_speed: the kernel is not available here")
    B, H, T, D = 32, 4, 562, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D, generator=g)
    variants = {
        "sdpa is_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa no mask": lambda: F.scaled_dot_product_attention(q, k, v),
        "kernel (causal)": lambda: attention.causal_attention_BHTD(q, k, v, D**-0.5),
    }

    def run(fn, backward: bool) -> float:
        t = time.perf_counter()
        out = fn()
        if backward:
            out.backward(grad)
        return time.perf_counter() - t

    for backward in (False, True):
        res = {name: [] for name in variants}
        for _ in range(2):
            for name, fn in variants.items():
                res[name] += [run(fn, backward) for _ in range(5)]
        label = "forward + backward" if backward else "forward"
        base = statistics.median(res["sdpa is_causal"])
        for name, ts in res.items():
            m = statistics.median(ts)
            print(f"{label:18s} {name:16s} {m * 1e3:7.1f} ms  ({base / m:.2f}x sdpa is_causal)")


if __name__ == "__main__":
    main()
