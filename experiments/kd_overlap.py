"""Does logit matching give a student its teacher's ranking of alternatives? (session 5)

Trains a `regs` student like the shipped `student-same` (same size, data, seed, stopping
rule), but with `same_distill` = WEIGHT (sft.logit_matching_loss against the shipped
teacher), into OUT, then prints its accuracy and top-K overlap with the teacher on its own
samples, next to the shipped hard-label student-same's.

    python experiments/kd_overlap.py WEIGHT OUT [PROBLEMS]
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from pruneopd.models import PACKAGE_ZOO, load_model, load_tokenizer, set_threads
from pruneopd.tasks import TASKS
from pruneopd.tools.compat import overlap_stats
from pruneopd.tools.sft import TraceMix
from pruneopd.tools.zoo import ZooSpec, _train_one
from pruneopd.training.evaluate import evaluate, reference_cap

weight, out = float(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 128
set_threads()
spec = replace(ZooSpec(), same_distill=weight)
tok = load_tokenizer(str(PACKAGE_ZOO / "teacher"))
teacher = load_model(str(PACKAGE_ZOO / "teacher"))
teacher.eval()
task = TASKS["regs"]
mix = TraceMix(("regs",), {"terse": 1.0}, task.default_difficulty, task.default_difficulty)


def pick(r):
    acc = r["regs"]
    return (acc if acc <= spec.student_band[1] else -1.0), acc >= spec.student_target


out.mkdir(parents=True, exist_ok=True)
info = _train_one(
    "student-same",
    spec,
    tok,
    mix,
    spec.student_size,
    spec.student_steps,
    spec.student_lr,
    1,
    out,
    pick,
    print,
    spec.student_eval_every,
    distill_from=teacher,
)
problems = task.problems("test", n, seed=0)
cap = reference_cap(task, tok, problems)
for name, folder in (("kd", out / "student-same"), ("shipped", PACKAGE_ZOO / "student-same")):
    model = load_model(str(folder))
    acc = evaluate(model, tok, task, problems)["accuracy"]
    st = overlap_stats(model, teacher, tok, task, problems, max_new_tokens=cap)
    print(
        json.dumps(
            {
                "model": name,
                "accuracy": acc,
                "top1": st["top1_agreement"],
                **{
                    f"k{k}": [round(st[f"k{k}"]["mean"], 3), st[f"k{k}"]["share_below"]]
                    for k in (4, 8, 16)
                },
            }
        )
    )
print(info)
