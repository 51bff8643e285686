"""Routed distillation from two experts against each expert alone (docs/benchmarks.md 9).

The experts zoo (`pruneopd zoo build --suite experts`): `expert-regs` knows only `regs`,
`expert-add` only `add`, `student-both` has started on both. Every variant trains the same
student with the same preset (`pruneopd/configs/teachers-routed.yaml`) and seed, and differs
only in who teaches: one expert for every prompt, both routed by task, or both mixed 50/50.
Prints greedy accuracy on the mixed held-out set (64 regs + 64 add problems) every 100 steps,
and per task after training.

Run (from the repository root, one thread):
    OMP_NUM_THREADS=1 python benchmarks/several_teachers.py --out runs/several-teachers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pruneopd.config import load_config
from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import get_task
from pruneopd.training.evaluate import evaluate
from pruneopd.training.train import train

PRESET = Path(__file__).parents[1] / "pruneopd" / "configs" / "teachers-routed.yaml"
VARIANTS = {
    "routed by task": [],
    "expert-regs alone": ["teachers=[]", "teacher=zoo/experts/expert-regs"],
    "expert-add alone": ["teachers=[]", "teacher=zoo/experts/expert-add"],
    "mixture 0.5/0.5": ["teacher_routing=mixture"],
}


def per_task(model_dir: str, cfg) -> dict:
    """Greedy accuracy of the model on each task's half of the held-out set."""
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    task = get_task(cfg.task)
    problems = task.problems("test", cfg.eval_problems, seed=0, difficulty=cfg.difficulty)
    return {
        name: evaluate(model, tok, task, [p for p in problems if p.task == name])["accuracy"]
        for name in task.tasks
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/several-teachers")
    ap.add_argument("--steps", type=int, default=0, help="override max_steps (0: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--variants",
        default="routed,expert-regs,expert-add,mixture",
        help="which variants, by the first word of their label (default: all four)",
    )
    args = ap.parse_args()
    keys = {label.split()[0]: label for label in VARIANTS}
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in keys]
    if unknown:
        raise SystemExit(f"several_teachers: unknown --variants {unknown}; known: {list(keys)}")
    rows = {}
    before_by_task = None
    for label in (keys[v] for v in wanted):
        overrides = VARIANTS[label]
        out = Path(args.out) / label.split()[0].replace("/", "-")
        extra = [f"out={out}", "overwrite=true", f"seed={args.seed}", "progress=false"]
        if args.steps:
            extra.append(f"max_steps={args.steps}")
        cfg = load_config(PRESET, overrides + extra)
        s = train(cfg)
        before_by_task = before_by_task or per_task(cfg.student, cfg)
        rows[label] = {
            "before": s["accuracy_before"],
            "after": s["accuracy_after"],
            "after_by_task": per_task(str(out / "final"), cfg),
            "before_by_task": before_by_task,
            "curve": [(e["step"], e["accuracy"]) for e in s["evals"]],
            "train_seconds": s["train_seconds"],
            "teachers": s.get("teachers"),
        }
        print(label, json.dumps(rows[label]), flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    steps = [step for step, _ in next(iter(rows.values()))["curve"]]
    print(
        "| teacher(s) | " + " | ".join(f"step {s}" for s in steps) + " | regs after | add after |"
    )
    print("| --- |" + " ---: |" * (len(steps) + 2))
    for label, r in rows.items():
        t = r["after_by_task"]
        accs = " | ".join(f"{a:.3f}" for _, a in r["curve"])
        print(f"| {label} | {accs} | {t['regs']:.3f} | {t['add']:.3f} |")


if __name__ == "__main__":
    main()
