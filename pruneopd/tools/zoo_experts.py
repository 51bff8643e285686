"""The experts zoo (`pruneopd zoo build --suite experts`): two teachers that are each expert on
one task of the short suite, and a student that has started on both, for several-teacher
distillation (README, "Several teachers"; docs/benchmarks.md 9).

- `expert-regs`: trained on `regs` only; `expert-add`: on `add` only. Neither has seen a
  prompt of the other task, so each is a good teacher on its own task and a poor one on the
  other, as domain experts are.
- `student-both`: a smaller model trained on both tasks, stopped just after it starts to get
  answers right (its weakest task at or above `student_target`).

Everything is small and short (difficulty 4, a few minutes on one core per model), with the
short zoo's tokenizer (rebuilt identically) and `zoo._train_one`'s checkpoints: a build
resumes where it stopped, and a model already built with the same spec is skipped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from pruneopd.models import ModelSize
from pruneopd.tasks import TASKS
from pruneopd.tokenizer import build_tokenizer
from pruneopd.tools.sft import TraceMix
from pruneopd.tools.zoo import PARTIAL, ZooSpec, _train_one, model_spec
from pruneopd.training.evaluate import evaluate

EXPERTS = replace(
    ZooSpec(),
    teacher_size=ModelSize(hidden=96, layers=2, heads=4),
    student_size=ModelSize(hidden=64, layers=2, heads=2),
    teacher_steps=3000,
    teacher_lr=2e-3,
    teacher_target=0.95,
    teacher_styles={"terse": 1.0},
    student_steps=2000,
    student_lr=2e-3,
    student_band=(0.0, 0.6),
    student_target=0.15,
    teacher_eval_every=100,
    student_eval_every=20,
    eval_problems=64,
    final_eval_problems=128,
    eval_difficulty=4,
)
FAST_EXPERTS = replace(
    EXPERTS,
    teacher_size=ModelSize(hidden=32, layers=1, heads=2),
    student_size=ModelSize(hidden=32, layers=1, heads=2),
    teacher_steps=3,
    student_steps=3,
    batch_size=4,
    teacher_eval_every=3,
    student_eval_every=3,
    eval_problems=4,
    final_eval_problems=8,
    student_target=0.0,
    vocab_size=300,
    eval_difficulty=2,
)
EXPERT_STAGES = ("expert-regs", "expert-add", "student-both")


def _stage(spec: ZooSpec, name: str) -> tuple:
    """(tasks, size, steps, lr, eval_every, seed offset, pick) of one model."""
    if name.startswith("expert-"):
        task = name.removeprefix("expert-")
        return (
            (task,),
            spec.teacher_size,
            spec.teacher_steps,
            spec.teacher_lr,
            spec.teacher_eval_every,
            0,
            lambda r: (r[task], r[task] >= spec.teacher_target),
        )

    def pick(r):  # the best checkpoint inside the band, stop once the weakest task starts
        low = min(r.values())
        return (
            low if max(r.values()) <= spec.student_band[1] else -1.0
        ), low >= spec.student_target

    tasks = spec.tasks
    return (
        tasks,
        spec.student_size,
        spec.student_steps,
        spec.student_lr,
        spec.student_eval_every,
        1,
        pick,
    )


def build_experts(
    out: Path, spec: ZooSpec = EXPERTS, seed: int = 0, log=print, force: bool = False
) -> dict:
    """Build the tokenizer, `expert-regs`, `expert-add` and `student-both` into `out`, then
    evaluate each on both tasks; returns (and writes, as `out/zoo_report.json`) the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "zoo_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    if report and (
        report.get("spec") != json.loads(json.dumps(asdict(spec))) or report["seed"] != seed
    ):
        if not force:
            raise ValueError(f"{out} holds an experts zoo of another spec or seed; pass --force")
        report = {}
    torch.manual_seed(seed)
    tok = build_tokenizer(vocab_size=spec.vocab_size, seed=seed)
    tok.save_pretrained(out / "tokenizer")
    report.update({"spec": json.loads(json.dumps(asdict(spec))), "seed": seed})
    models = report.setdefault("models", {})
    d = spec.eval_difficulty
    for name in EXPERT_STAGES:
        if force and name in models:
            models.pop(name)
            shutil.rmtree(out / PARTIAL / name, ignore_errors=True)
        if name in models and (out / name / "config.json").exists():
            log(f"{name}: already built in {out}, skipped (--force rebuilds it)")
            continue
        tasks, size, steps, lr, every, offset, pick = _stage(spec, name)
        mix = TraceMix(tasks, spec.teacher_styles, d, d)
        entry = _train_one(
            name, spec, tok, mix, size, steps, lr, seed + offset, out, pick, log, every
        )
        model = LlamaForCausalLM.from_pretrained(out / name, dtype=torch.float32).eval()
        entry["accuracy"] = {
            t: evaluate(
                model,
                tok,
                TASKS[t],
                TASKS[t].problems("test", spec.final_eval_problems, seed=0, difficulty=d),
            )["accuracy"]
            for t in spec.tasks
        }
        entry["spec"] = model_spec(spec, name)
        models[name] = entry
        log(f"{name}: held-out accuracy {entry['accuracy']}")
        path.write_text(json.dumps(report, indent=2))
        shutil.rmtree(out / PARTIAL / name, ignore_errors=True)
    return report
