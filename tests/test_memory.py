"""Memory-bounded scoring and losses for large vocabularies.

With V = 150k and 1,024 response tokens, a naive `[B, T, V]` float32 tensor is 0.6 GB per
model. Teacher scoring (top-K, token log-probs, candidate log-probs), the drift monitor and
every loss with its backward pass run in chunks of tokens; this test measures the peak
resident memory they add (in a fresh process, `ru_maxrss`, with glibc told to return every
allocation over 64 KiB to the system on free, so the peak is the peak of live memory) and
checks it stays well below the naive footprint of both models, while the same code with one
chunk spanning all tokens does reach it (so the measurement can see such tensors). Equality of chunked and unchunked results is checked on
small cases in test_objective.py / test_losses.py / test_scoring.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from tiny import tiny_llama
from pruneopd.method.drift import topk_overlap_from_ids
from pruneopd.training.objective import token_losses
from pruneopd.engines.scoring import score_responses

torch.set_num_threads(1)
V, B, P, T, K, CHUNK = 150_000, 2, 8, 512, 16, int(sys.argv[2])
student, teacher = tiny_llama(V, seed=0, max_positions=1024), tiny_llama(V, seed=1, max_positions=1024)
student.train()
g = torch.Generator().manual_seed(0)

def step(T, loss):
    prompts = [torch.randint(V, (P,), generator=g).tolist() for _ in range(B)]
    responses = [torch.randint(V, (T,), generator=g).tolist() for _ in range(B)]
    cand_BTK = torch.randint(V, (B, T, K), generator=g)
    s = score_responses(teacher, prompts, responses, k=K, candidate_ids=cand_BTK, pad_id=0,
                        position_chunk=CHUNK)
    overlap_BT = topk_overlap_from_ids(cand_BTK, s.topk_ids_BTK)
    ids_BL = torch.tensor([p + r for p, r in zip(prompts, responses)])
    mask_BT = torch.ones(B, T, dtype=torch.bool)
    loss_BT, _ = token_losses(loss, student, teacher, ids_BL, torch.full((B,), P),
                              torch.tensor(responses), mask_BT, candidate_ids_BTK=cand_BTK,
                              teacher_candidate_logprobs_BTK=s.candidate_logprobs_BTK,
                              teacher_token_logprobs_BT=s.token_logprobs_BT, chunk=CHUNK)
    loss_BT.sum().backward()
    student.zero_grad(set_to_none=False)
    return float(overlap_BT.mean())

step(8, "full_rkl")  # warm-up: libraries, gradient buffers
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for loss in ("topk_rkl", "jsd"):
    step(T, loss)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"added_mb": (peak - base) / 1024, "naive_mb": 2 * B * T * V * 4 / 2**20}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux")
def test_large_vocab_scoring_and_losses_stay_far_below_naive_memory(tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}

    def start(chunk: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), str(Path(__file__).parent), str(chunk)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(p: subprocess.Popen) -> dict:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    # one thread each, both at once (each process measures its own peak)
    procs = start(32), start(4096)
    chunked, whole = (result(p) for p in procs)
    # both models' naive [B, T, V] float32 logits: 1,172 MB
    assert chunked["added_mb"] < 0.25 * chunked["naive_mb"], chunked
    assert whole["added_mb"] > 0.5 * whole["naive_mb"], whole  # the probe sees [N, V] tensors
