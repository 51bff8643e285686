"""Experiment (session 11): three ways to cut the sampler's per-step cost that did not pay.

    python experiments/decode_alternatives.py fused      # fused q/k/v and gate/up projections
    python experiments/decode_alternatives.py threads    # two half-batches in two Python threads
    python experiments/decode_alternatives.py half 16    # N samples at one thread (run two at once)
    python experiments/decode_alternatives.py packed     # MKL's pre-packed weights for a projection

- fused: one [32, 128] x [128, 384] projection against three [128, 128] ones, and one
  [128, 640] against two [128, 320] (the long zoo's shapes), microseconds per call, 1 and 2
  threads; also checks that the fused outputs equal the separate ones.
- threads: 32 samples x 512 tokens at 2 threads against two 16-sample halves sampled at the
  same time in two Python threads at one intra-op thread each (torch releases the GIL inside
  operators, so the halves can overlap).
- half: N samples x 512 tokens at one thread, three times; start two at once
  (`... half 16 & ... half 16`) to see two processes sharing the machine.
- packed: a [32, 128] x [128, 320] projection through `F.linear` against MKL's packed-weight
  GEMM (`torch.ops.mkl._mkl_linear` on a weight packed once), at one thread; checks equality.

Results of 2026-12-02 (idle machine): docs/benchmarks.md section 6b.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

ZOO = Path(__file__).resolve().parents[1] / "pruneopd" / "zoo_weights" / "long"


def per_call_us(f, n=2000) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e6


def fused() -> None:
    x = torch.randn(32, 128)
    wq, wk, wv = (torch.randn(128, 128) for _ in range(3))
    wg, wu = torch.randn(320, 128), torch.randn(320, 128)
    wqkv, wgu = torch.cat([wq, wk, wv]), torch.cat([wg, wu])
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a = per_call_us(lambda: (F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)))
        b = per_call_us(lambda: F.linear(x, wqkv).split(128, -1))
        c = per_call_us(lambda: (F.linear(x, wg), F.linear(x, wu)))
        d = per_call_us(lambda: F.linear(x, wgu).chunk(2, -1))
        print(
            f"{threads} threads: q/k/v 3 calls {a:.1f} us, fused {b:.1f} us; "
            f"gate/up 2 calls {c:.1f} us, fused {d:.1f} us"
        )
    sep = torch.cat([F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)], -1)
    print("fused == separate:", torch.equal(sep, F.linear(x, wqkv)))


def packed() -> None:
    torch.set_num_threads(1)
    x, w, b = torch.randn(32, 128), torch.randn(320, 128), torch.zeros(320)
    pw = torch.ops.mkl._mkl_reorder_linear_weight(w, 32)
    a = per_call_us(lambda: F.linear(x, w))
    c = per_call_us(lambda: torch.ops.mkl._mkl_linear(x, pw, w, b, 32))
    same = torch.equal(torch.ops.mkl._mkl_linear(x, pw, w, b, 32), F.linear(x, w))
    print(f"F.linear {a:.1f} us, packed {c:.1f} us ({a / c:.2f}x); equal: {same}")


def _setup():
    os.environ["PRUNEOPD_ZOO"] = str(ZOO)
    from pruneopd.engines import rollout
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import TASKS
    from pruneopd.tokenizer import prompt_ids

    tok = load_tokenizer("teacher")
    student = load_model("student-cross").eval()
    problems = TASKS["loop"].problems("train", 8, seed=0)
    prompts = rollout.repeat_prompts([prompt_ids(tok, p) for p in problems], 4)

    def run(ps, seed=0):
        return rollout.sample(
            student,
            ps,
            max_new_tokens=512,
            eos_id=-1,
            pad_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(seed),
            topk=16,
        )

    return prompts, run


def threads() -> None:
    prompts, run = _setup()

    def half(ps, i):
        torch.set_num_threads(1)
        run(ps, i)

    for _ in range(2):
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        run(prompts)
        t1 = time.perf_counter() - t0
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        th = [
            threading.Thread(target=half, args=(prompts[i * 16 : (i + 1) * 16], i))
            for i in range(2)
        ]
        [x.start() for x in th]
        [x.join() for x in th]
        t2 = time.perf_counter() - t0
        print(
            f"one batch at 2 threads {t1:.2f} s; two halves in 2 Python threads {t2:.2f} s; "
            f"ratio {t1 / t2:.2f}"
        )


def half(n: int) -> None:
    torch.set_num_threads(1)
    prompts, run = _setup()
    for _ in range(3):
        t0 = time.perf_counter()
        run(prompts[:n])
        print(f"{n} samples x 512 tokens, 1 thread: {time.perf_counter() - t0:.2f} s", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "fused"
    if what == "fused":
        fused()
    elif what == "threads":
        threads()
    elif what == "packed":
        packed()
    elif what == "half":
        half(int(sys.argv[2]) if len(sys.argv) > 2 else 16)
    else:
        raise SystemExit(f"unknown experiment {what!r}: fused, threads, half or packed")
