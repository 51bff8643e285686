"""The built-in model zoo: a teacher and two weaker students, trained here from scratch.

`build_zoo` trains, with supervised fine-tuning on task traces:
- `teacher`: every task, a mix of trace styles with `terse` dominant;
- `student-same`: the teacher's dominant style only, stopped just after its learning jump;
- `student-cross`: another style (`verbose`) as its own habit, mixed with some of the
  teacher's (`cross_own_share`), also stopped just after its jump. A `verbose`-only student
  collapsed under OPD: it has no support for the teacher's format tokens, and the teacher,
  with 5% `verbose` traces, gets that style's arithmetic wrong.
Each is a `transformers` Llama checkpoint saved with `save_pretrained`, next to one shared
tokenizer. A JSON report records every accuracy and the overlap statistics that justify
the presets' K and tau.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .evaluate import evaluate
from .models import ModelSize
from .sft import TraceMix, sft_batches, train_sft
from .tasks import TASKS
from .tokenizer import build_tokenizer


@dataclass(frozen=True)
class ZooSpec:
    """Everything a zoo build depends on (with the seed, it fixes the result)."""

    teacher_size: ModelSize = ModelSize(hidden=192, layers=4, heads=6)
    student_size: ModelSize = ModelSize(hidden=128, layers=4, heads=4)
    teacher_steps: int = 2500
    teacher_lr: float = 1e-3
    teacher_target: float = 0.96  # stop early once every task's accuracy reaches this
    teacher_styles: dict = field(default_factory=lambda: {"terse": 0.95, "verbose": 0.05})
    tasks: tuple[str, ...] = ("regs", "add")
    student_task: str = "regs"
    student_steps: int = 1500
    student_lr: float = 1e-3
    student_band: tuple[float, float] = (0.2, 0.6)  # accepted greedy accuracy
    student_target: float = 0.3  # stop at the first evaluation at or above this
    # student-cross's share of its own style; the rest is the teacher's dominant style, so
    # the cross student has some support for what the teacher will push it towards
    cross_own_share: float = 0.35
    batch_size: int = 32
    difficulty_spread: int = 0  # train on default difficulty +- spread (0: fixed length)
    teacher_eval_every: int = 100
    student_eval_every: int = 10  # the learning jump takes ~25 steps: catch it mid-way
    eval_problems: int = 64
    final_eval_problems: int = 256
    vocab_size: int = 1024
    eval_difficulty: int = 0  # 0 = each task's default


FAST = ZooSpec(
    teacher_size=ModelSize(hidden=32, layers=1, heads=2),
    student_size=ModelSize(hidden=32, layers=1, heads=2),
    teacher_steps=3,
    student_steps=3,
    batch_size=4,
    difficulty_spread=1,
    teacher_eval_every=3,
    student_eval_every=3,
    eval_problems=4,
    final_eval_problems=8,
    student_band=(0.0, 1.0),
    student_target=0.0,
    vocab_size=300,
    eval_difficulty=2,
)


def _new_model(size: ModelSize, tok, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = size.config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return LlamaForCausalLM(cfg)


def _train_one(name, spec, tok, mix, size, steps, lr, seed, out, pick, log, eval_every):
    """Train one model; `pick(results) -> (score, stop)` chooses the checkpoint to keep."""
    model = _new_model(size, tok, seed)
    tasks = {t: TASKS[t] for t in mix.tasks}
    test = {
        t: TASKS[t].problems("test", spec.eval_problems, seed=seed,
                             difficulty=spec.eval_difficulty or None)
        for t in mix.tasks
    }  # fmt: skip
    batches = sft_batches(tasks, mix, tok, spec.batch_size, seed)
    best = {"score": -1.0}
    bar = tqdm(total=steps, desc=f"zoo {name}", leave=False)

    def on_step(step, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    def on_eval(step):
        res = {t: evaluate(model, tok, tasks[t], test[t])["accuracy"] for t in mix.tasks}
        score, stop = pick(res)
        log(f"{name} step {step}: accuracy {res}")
        if score > best["score"]:
            best.update(score=score, step=step, accuracy=res)
            model.save_pretrained(out / name)
        return stop

    t0 = time.time()
    taken = train_sft(
        model, batches, steps=steps, lr=lr, eval_every=eval_every,
        on_eval=on_eval, on_step=on_step,
    )  # fmt: skip
    bar.close()
    return {"steps_taken": taken, "best_step": best.get("step"), "seconds": time.time() - t0}


STAGES = ("teacher", "student-same", "student-cross")


def build_zoo(
    out: Path, spec: ZooSpec = ZooSpec(), seed: int = 0, log=print, only: tuple = STAGES
) -> dict:
    """Build tokenizer, teacher and students into `out`; returns (and writes) the report.

    `only` rebuilds a subset of the models (the tokenizer is always rebuilt, identically).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = build_tokenizer(vocab_size=spec.vocab_size, seed=seed)
    tok.save_pretrained(out / "tokenizer")
    path = out / "zoo_report.json"
    report: dict = json.loads(path.read_text()) if path.exists() else {}
    report.update({"spec": asdict(spec), "seed": seed})
    report.setdefault("models", {})
    hi_ok = spec.student_band[1]

    lo = min(TASKS[t].default_difficulty for t in spec.tasks) - spec.difficulty_spread
    hi = max(TASKS[t].default_difficulty for t in spec.tasks) + spec.difficulty_spread
    teacher_mix = TraceMix(spec.tasks, spec.teacher_styles, max(1, lo), hi)
    if "teacher" in only:
        report["models"]["teacher"] = _train_one(
            "teacher", spec, tok, teacher_mix, spec.teacher_size, spec.teacher_steps,
            spec.teacher_lr, seed, out,
            lambda r: (min(r.values()), min(r.values()) >= spec.teacher_target), log,
            spec.teacher_eval_every,
        )  # fmt: skip
        path.write_text(json.dumps(report, indent=2))
    dominant = max(spec.teacher_styles, key=spec.teacher_styles.get)
    other = next(s for s in TASKS[spec.student_task].styles if s != dominant)
    for name, style in (("student-same", dominant), ("student-cross", other)):
        if name not in only:
            continue
        d = TASKS[spec.student_task].default_difficulty
        styles = {style: 1.0}
        if style != dominant and spec.cross_own_share < 1.0:
            styles = {style: spec.cross_own_share, dominant: 1.0 - spec.cross_own_share}
        mix = TraceMix((spec.student_task,), styles, max(1, d - spec.difficulty_spread),
                       d + spec.difficulty_spread)  # fmt: skip

        def pick(r):
            # keep the best checkpoint not above the band; stop at the first evaluation at or
            # above target, i.e. just after the learning jump (or once it overshoots the band)
            acc = r[spec.student_task]
            return (acc if acc <= hi_ok else -1.0), acc >= spec.student_target

        report["models"][name] = _train_one(
            name, spec, tok, mix, spec.student_size, spec.student_steps, spec.student_lr,
            seed + 1, out, pick, log, spec.student_eval_every,
        )  # fmt: skip
        report["models"][name]["style"] = style
        report["models"][name]["styles"] = styles
        path.write_text(json.dumps(report, indent=2))
    return report
