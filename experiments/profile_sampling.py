"""Experiment (session 4): where the sampler's time goes, by PyTorch operator.

Samples 32 `regs` test prompts x 128 new tokens from the shipped `student-same` (temperature
1, student top-16, one intra-op thread) once to warm up, then once under `torch.profiler`,
and prints the operators by self CPU time.

    python experiments/profile_sampling.py

Session 4 (decode.py as at 46dd346): attention over the KV cache (`aten::bmm`, the two
batched matmuls per layer) 34% of self CPU time, the linear layers (`aten::mm`) 21%, the rest
spread over ~150 small per-token operators (RMSNorm, rotary, softmax, sampling).
"""

import torch
from torch.profiler import ProfilerActivity, profile

from pruneopd.engines import rollout
from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import TASKS

torch.set_num_threads(1)
tok = load_tokenizer("teacher")
student = load_model("student-same").eval()
prompts = [
    tok.encode(p.prompt, add_special_tokens=False)
    for p in TASKS["regs"].problems("test", 32, seed=1)
]


def run():
    return rollout.sample(
        student,
        prompts,
        max_new_tokens=128,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        topk=16,
    )


run()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
