"""Experiment (session 3, not part of the package): can more `verbose` traces make the shipped
teacher a competent supervisor of the `verbose` style while it still disagrees with a
`verbose` student more often than with a `terse` one?

Continues the shipped teacher's SFT on `regs` + `add` (16 + 16 traces per step, each task at
its default difficulty) with a `verbose` share SHARE for STEPS steps at learning rate LR, and
at the start and every STEPS/3 steps prints: greedy accuracy on 64 test problems per task,
the teacher's `verbose` fidelity (`compat.style_fidelity`, 32 problems), and top-1 agreement
with the shipped students (`compat.overlap_stats`, 64 problems). Nothing is saved.

    python experiments/teacher_style_finetune.py SHARE STEPS LR   # e.g. 0.3 300 3e-4
"""

import json
import sys
import time

import torch

from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import TASKS
from pruneopd.tools.compat import overlap_stats, style_fidelity
from pruneopd.tools.sft import TraceMix, sft_batches, train_sft
from pruneopd.training.evaluate import evaluate, reference_cap

share, steps, lr = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(2)
tok = load_tokenizer("teacher")
teacher = load_model("teacher")
styles = {"terse": 1 - share, "verbose": share}


def batches():
    """16 `regs` + 16 `add` traces per step, each task at its default difficulty."""
    its = {}
    for t in ("regs", "add"):
        d = TASKS[t].default_difficulty
        its[t] = sft_batches({t: TASKS[t]}, TraceMix((t,), styles, d, d), tok, 16, seed=7 + len(t))
    while True:
        (a, la), (b, lb) = next(its["regs"]), next(its["add"])
        L = max(a.shape[1], b.shape[1])
        ids = torch.cat([_pad(a, L, tok.pad_token_id), _pad(b, L, tok.pad_token_id)])
        yield ids, torch.cat([_pad(la, L, -100), _pad(lb, L, -100)])


def _pad(x, length, value):
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)


def report(step: int) -> bool:
    teacher.eval()
    out = {"step": step}
    for name, task in TASKS.items():
        probs = task.problems("test", 64, seed=0)
        out[name] = round(evaluate(teacher, tok, task, probs)["accuracy"], 3)
        fid = style_fidelity(teacher, tok, task, probs[:32])["verbose"]
        out[name + "_verbose_fid"] = round(fid["token_top1"], 4)
        out[name + "_verbose_traces"] = round(fid["traces_right"], 3)
    task = TASKS["regs"]
    probs = task.problems("test", 64, seed=0)
    for s in ("student-same", "student-cross"):
        st = overlap_stats(
            load_model(s), teacher, tok, task, probs, max_new_tokens=reference_cap(task, tok, probs)
        )
        out[s + "_top1"] = round(st["top1_agreement"], 4)
    print(json.dumps(out), flush=True)
    teacher.train()
    return False


t0 = time.time()
report(0)
train_sft(
    teacher, batches(), steps=steps, lr=lr, warmup=20, eval_every=max(1, steps // 3), on_eval=report
)
print("seconds", round(time.time() - t0), flush=True)
