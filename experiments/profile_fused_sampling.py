"""Experiment (session 14): where the fused sampler's time goes at 512 tokens.

Samples 32 `loop` prompts (8 x 4) x 512 new tokens from the long zoo's student on the fused
engine, token by token (`sample_steps` switched off, the loop before session 14) or in blocks
(`--blocks`), and splits each run's wall time into the extension's decode step, the head, and
the rest (Python and the PyTorch operators of the pick, log-prob and top-k). For the split by
machine code, run it under perf, skipping the start-up:

    python experiments/profile_fused_sampling.py --repeats 3
    perf record -D 9000 -o /tmp/perf.data python experiments/profile_fused_sampling.py --repeats 5
    perf report -i /tmp/perf.data --no-children --sort dso,symbol

Session 14, token by token: decode step 1.4-1.7 s, head 0.03 s, rest 0.33-0.49 s of 1.8-2.3 s;
under perf, `attend_d<32>` (the attention over the cache) 34% of the samples, libgomp's
waiting 17%, MKL's sgemm 17%. With --blocks: sample_steps 0.97-1.08 s, rest 0.08-0.17 s of
1.05-1.25 s.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

ZOO = Path(__file__).resolve().parents[1] / "pruneopd" / "zoo_weights" / "long"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blocks", action="store_true", help="sample with sample_steps")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("PRUNEOPD_ZOO", str(ZOO))
    torch.set_num_threads(args.threads)
    from pruneopd.engines import fused, rollout
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task

    tok = load_tokenizer("teacher")
    student = load_model("student-cross").eval()
    problems = get_task("loop").problems("train", 8, seed=0)
    prompts = [tok.encode(x.prompt, add_special_tokens=False) for x in problems for _ in range(4)]
    if not args.blocks:
        fused.FusedDecoder.can_sample_steps = lambda self: False
    spent = {"decode_step": 0.0, "head": 0.0, "sample_steps": 0.0}

    class Timed:  # the extension with its calls timed
        def __init__(self, ext):
            self.ext = ext

        def _timed(self, name, *a):
            t0 = time.perf_counter()
            out = getattr(self.ext, name)(*a)
            spent["head" if name == "linear" else name] += time.perf_counter() - t0
            return out

        def __getattr__(self, name):
            return lambda *a: self._timed(name, *a)

    init = fused.FusedDecoder.__init__

    def timed_init(self, *a, **kw):
        init(self, *a, **kw)
        self.ext = Timed(self.ext)

    fused.FusedDecoder.__init__ = timed_init
    u = torch.rand(len(prompts), 512, generator=torch.Generator().manual_seed(0))
    for _ in range(args.repeats):
        spent.update(dict.fromkeys(spent, 0.0))
        t0 = time.perf_counter()
        rollout.sample(
            student,
            prompts,
            max_new_tokens=512,
            eos_id=-1,
            pad_id=tok.pad_token_id,
            uniforms_BN=u,
            engine="fused",
            topk=16,
        )
        total = time.perf_counter() - t0
        parts = "  ".join(f"{k} {v:.3f} s" for k, v in spent.items() if v)
        print(f"total {total:.3f} s  {parts}  rest {total - sum(spent.values()):.3f} s")


if __name__ == "__main__":
    main()
