"""Measure a built zoo: every model's held-out accuracy and each student's compatibility
with the teacher (top-1 agreement and top-K overlap on the student's own samples)."""

from __future__ import annotations

import json
from pathlib import Path

from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import TASKS
from pruneopd.tools.compat import overlap_stats, style_fidelity
from pruneopd.training.evaluate import evaluate, reference_cap


def write_report(zoo: Path, n: int = 256, seed: int = 0, log=None) -> dict:
    zoo = Path(zoo)
    path = zoo / "zoo_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    tok = load_tokenizer(str(zoo / "teacher"))
    teacher = load_model(str(zoo / "teacher"))
    student_task = report.get("spec", {}).get("student_task", "regs")
    teacher_tasks = report.get("spec", {}).get("tasks", ("regs", "add"))
    accuracy, compat = {}, {}
    for name in ("teacher", "student-same", "student-cross"):
        model = teacher if name == "teacher" else load_model(str(zoo / name))
        tasks = {t: TASKS[t] for t in (teacher_tasks if name == "teacher" else [student_task])}
        accuracy[name] = {}
        for tname, task in tasks.items():
            problems = task.problems("test", n, seed=seed)
            res = evaluate(model, tok, task, problems, seed=seed)
            accuracy[name][tname] = {
                k: res[k] for k in ("accuracy", "partial_credit", "mean_length", "cut_rate")
            }
            if log:
                log(f"{name} {tname}: {accuracy[name][tname]}")
        if name == "teacher":
            fidelity = {
                tname: style_fidelity(
                    model, tok, task, task.problems("test", min(n, 64), seed=seed)
                )
                for tname, task in tasks.items()
            }
        if name != "teacher":
            task = TASKS[student_task]
            problems = task.problems("test", n, seed=seed)
            compat[name] = overlap_stats(
                model,
                teacher,
                tok,
                task,
                problems,
                seed=seed,
                max_new_tokens=reference_cap(task, tok, problems),
            )
    report.update(
        {
            "accuracy": accuracy,
            "compatibility": compat,
            "teacher_style_fidelity": fidelity,
            "report_problems": n,
        }
    )
    path.write_text(json.dumps(report, indent=2))
    return report
