"""Experiment (issue 30): the fused sampler's three plans on a real model, short prompts (no
long prefill), in one process: spread groups of 4, one group per thread (A / 2 samples each
on 2 threads), one split group; three rounds, tokens/s of each round, and whether each plan's
tokens equal the split group's.

    python experiments/sample_plans_short.py ~/.cache/pruneopd/real/student 32 32
"""

import sys
import time
from pathlib import Path

import torch

from pruneopd.engines import fused
from pruneopd.engines.rollout import sample
from pruneopd.models import load_model

torch.set_num_threads(2)
m = load_model(str(Path(sys.argv[1]).expanduser())).eval()
A, N = int(sys.argv[2]), int(sys.argv[3])
prompts = [[1, 100 + i, 200 + i, 300][: 2 + i % 3] for i in range(A)]
u = torch.rand(A, N, generator=torch.Generator().manual_seed(0))
kw = dict(max_new_tokens=N, eos_id=-1, pad_id=2, uniforms_BN=u, topk=16)
plans = {
    "spread4": fused.Plan(4, False, ""),
    f"spread{A // 2}": fused.Plan(A // 2, False, ""),
    "split": fused.Plan(A, True, ""),
}
outs, times = {}, {k: [] for k in plans}
for _rep in range(3):
    for name, plan in plans.items():
        fused.FusedDecoder.plan = lambda self, p=plan: p
        t0 = time.perf_counter()
        outs[name] = sample(m, prompts, engine="fused", **kw)
        times[name].append(time.perf_counter() - t0)
for k in plans:
    print(
        k,
        " ".join(f"{A * N / t:.0f}" for t in times[k]),
        "tok/s; same as split:",
        outs[k].responses == outs["split"].responses,
    )
