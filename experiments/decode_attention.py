"""One decode step's attention over the KV cache, three ways, at growing cache lengths.

The student of the long zoo (hidden 128, 4 heads of 32, no GQA), A = 32 samples, one query each:

- matmul: what `decode.LeanDecoder.step` did through session 5: scores = (q @ K^T) * scale,
  masked_fill of the padding, softmax, @ V;
- matmul-nomask: the same with the scale folded into q and no mask (prompts of one length);
- sdpa: `F.scaled_dot_product_attention` on [A, H, 1, D] queries (one fused pass over K and V).

Variants alternate inside every repeat; the figure is the median per call, and the ratio is
against `matmul` in the same run.

Run: OMP_NUM_THREADS=2 python experiments/decode_attention.py [--threads 2] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F  # noqa: N812


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--samples", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    A, H, D, S = args.samples, 4, 32, 1024
    scale = D**-0.5
    K = torch.randn(A, H, S, D)
    V = torch.randn(A, H, S, D)
    q = torch.randn(A, H, D)
    mask_AS = torch.ones(A, S, dtype=torch.long)
    mask_AS[: A // 2, :3] = 0  # some left padding

    def matmul(L):
        blocked = ~mask_AS[:, None, None, :L].bool()
        s = (q.view(A, H, 1, D) @ K[:, :, :L].transpose(-1, -2)) * scale
        return (s.masked_fill(blocked, float("-inf")).softmax(-1) @ V[:, :, :L]).reshape(A, H * D)

    def matmul_nomask(L):
        s = (q.view(A, H, 1, D) * scale) @ K[:, :, :L].transpose(-1, -2)
        return (s.softmax(-1) @ V[:, :, :L]).reshape(A, H * D)

    def sdpa(L):
        o = F.scaled_dot_product_attention(q.view(A, H, 1, D), K[:, :, :L], V[:, :, :L])
        return o.reshape(A, H * D)

    def sdpa_mask(L):
        m = mask_AS[:, None, None, :L].bool()
        o = F.scaled_dot_product_attention(q.view(A, H, 1, D), K[:, :, :L], V[:, :, :L], m)
        return o.reshape(A, H * D)

    variants = {
        "matmul": matmul,
        "matmul-nomask": matmul_nomask,
        "sdpa": sdpa,
        "sdpa-mask": sdpa_mask,
    }
    with torch.inference_mode():
        for L in (128, 256, 512, 768, 1024):
            ref = matmul_nomask(L)
            assert torch.allclose(sdpa(L), ref, atol=1e-5), "sdpa differs"
            times = {k: [] for k in variants}
            for _ in range(10):
                for f in variants.values():
                    f(L)
            for i in range(args.repeats):
                names = list(variants)
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]
                    t0 = time.perf_counter()
                    variants[name](L)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = "  ".join(
                f"{k} {med[k] * 1e6:7.1f} us ({med['matmul'] / med[k]:.2f}x)" for k in variants
            )
            print(f"L={L:5d}  {row}")


if __name__ == "__main__":
    main()
