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
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from pruneopd.models import ModelSize
from pruneopd.tasks import TASKS
from pruneopd.tokenizer import build_tokenizer
from pruneopd.tools.sft import TraceMix, sft_batches, train_sft
from pruneopd.tools.zoo_spec import (  # noqa: F401 (re-exported: moved there)
    FAST,
    FAST_LONG,
    LONG,
    SHORT,
    ZooSpec,
    model_spec,
    suite_spec,
)
from pruneopd.training.evaluate import evaluate


def _new_model(size: ModelSize, tok, seed: int):
    torch.manual_seed(seed)
    cfg = size.config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return LlamaForCausalLM(cfg)


PARTIAL = ".partial"  # out/.partial/<model>/: the newest checkpoint of a model in training


def _save_partial(out: Path, name: str, model, state: dict) -> None:
    """Atomically replace `out/.partial/<name>` with this step's weights and `state`."""
    root = out / PARTIAL
    tmp, final, old = root / f"{name}.tmp", root / name, root / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(state, tmp / "state.pt")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _load_partial(out: Path, name: str) -> tuple[Path, dict] | None:
    """The newest complete checkpoint of `name` (a crash mid-save leaves `.old` complete)."""
    for folder in (out / PARTIAL / name, out / PARTIAL / f"{name}.old"):
        if (folder / "state.pt").is_file() and (folder / "model.safetensors").is_file():
            return folder, torch.load(folder / "state.pt", weights_only=False)
    return None


def _train_one(
    name,
    spec,
    tok,
    mix,
    size,
    steps,
    lr,
    seed,
    out,
    pick,
    log,
    eval_every,
    distill_from=None,
    eval_from=0,
    eval_below_loss=0.0,
):
    """Train one model; `pick(results) -> (score, stop)` chooses the checkpoint to keep.

    After every evaluation the whole training state goes to `out/.partial/<name>/`; a build
    that finds one there continues from it and ends with the same model as one that never
    stopped (same seed, spec and thread count).
    """
    model = _new_model(size, tok, seed)
    tasks = {t: TASKS[t] for t in mix.tasks}
    test = {
        t: TASKS[t].problems(
            "test", spec.eval_problems, seed=seed, difficulty=spec.eval_difficulty or None
        )
        for t in mix.tasks
    }
    batches = sft_batches(tasks, mix, tok, spec.batch_size, seed)
    best = {"score": -1.0}
    resume, seconds = None, 0.0
    found = _load_partial(out, name)
    if found is not None:
        folder, resume = found
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if resume["spec"] != model_spec(spec, name) or resume["seed"] != seed:
            raise ValueError(
                f"{folder} holds a half-trained {name} of another spec or seed; "
                "pass --force to start it over"
            )
        best, seconds = resume["best"], resume["seconds"]
        log(f"{name}: resuming at step {resume['step']} (best so far: step {best.get('step')})")
    bar = tqdm(
        total=steps, initial=resume["step"] if resume else 0, desc=f"zoo {name}", leave=False
    )

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

    def on_checkpoint(step, state):
        state.update(
            spec=model_spec(spec, name), seed=seed, best=best, seconds=seconds + time.time() - t0
        )
        _save_partial(out, name, model, state)

    taken = train_sft(
        model,
        batches,
        steps=steps,
        lr=lr,
        eval_every=eval_every,
        on_eval=on_eval,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        resume=resume,
        distill_from=distill_from,
        distill_weight=spec.same_distill if distill_from else 0.0,
        eval_from=eval_from,
        eval_below_loss=eval_below_loss,
    )
    bar.close()
    return {
        "steps_taken": taken,
        "best_step": best.get("step"),
        "seconds": seconds + time.time() - t0,
    }


STAGES = ("teacher", "student-same", "student-cross")


def _difficulties(spec: ZooSpec, tasks) -> tuple[int, int]:
    """The training difficulty range of a model of `tasks`."""
    lo = min(TASKS[t].default_difficulty for t in tasks) - spec.difficulty_spread
    hi = max(TASKS[t].default_difficulty for t in tasks) + spec.difficulty_spread
    return max(1, spec.min_difficulty or lo), hi


def build_zoo(
    out: Path,
    spec: ZooSpec = SHORT,
    seed: int = 0,
    log=print,
    only: tuple = STAGES,
    force: bool = False,
) -> dict:
    """Build tokenizer, teacher and students into `out`; returns (and writes) the report.

    A build resumes: a model already finished in `out` (same spec and seed) is not trained
    again, and a half-trained one continues from its last checkpoint (`out/.partial/`).
    `force` retrains the models in `only` from scratch. The tokenizer is always rebuilt,
    identically. A zoo of another spec or seed is refused unless `force`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "zoo_report.json"
    report: dict = json.loads(path.read_text()) if path.exists() else {}
    for name, entry in report.get("models", {}).items():
        built = entry.get("spec") or model_spec(ZooSpec(**report["spec"]), name)
        if (
            name in only
            and not force
            and (built != model_spec(spec, name) or report["seed"] != seed)
        ):
            raise ValueError(
                f"{out} holds a {name} of another spec or seed; pass --force to rebuild it"
            )
    torch.manual_seed(seed)
    tok = build_tokenizer(vocab_size=spec.vocab_size, seed=seed)
    tok.save_pretrained(out / "tokenizer")
    report.update({"spec": asdict(spec), "seed": seed})
    report.setdefault("models", {})
    hi_ok = spec.student_band[1]

    def todo(name: str) -> bool:
        if name not in only:
            return False
        if force:
            report["models"].pop(name, None)
            shutil.rmtree(out / PARTIAL / name, ignore_errors=True)
            shutil.rmtree(out / PARTIAL / f"{name}.old", ignore_errors=True)
        elif name in report["models"] and (out / name / "config.json").exists():
            log(f"{name}: already built in {out}, skipped (--force rebuilds it)")
            return False
        return True

    teacher_mix = TraceMix(
        spec.tasks,
        spec.teacher_styles,
        *_difficulties(spec, spec.tasks),
        per_batch_difficulty=spec.per_batch_difficulty,
    )
    if todo("teacher"):
        report["models"]["teacher"] = _train_one(
            "teacher",
            spec,
            tok,
            teacher_mix,
            spec.teacher_size,
            spec.teacher_steps,
            spec.teacher_lr,
            seed,
            out,
            lambda r: (min(r.values()), min(r.values()) >= spec.teacher_target),
            log,
            spec.teacher_eval_every,
        )
        report["models"]["teacher"]["spec"] = model_spec(spec, "teacher")
        _finish(out, "teacher", path, report)
    dominant = max(spec.teacher_styles, key=spec.teacher_styles.get)
    other = next(s for s in TASKS[spec.student_task].styles if s != dominant)
    if spec.cross_own_share <= 0:  # the cross student writes the teacher's style too
        other = dominant
    for name, style in (("student-same", dominant), ("student-cross", other)):
        if not todo(name):
            continue
        styles = {style: 1.0}
        if style != dominant and spec.cross_own_share < 1.0:
            styles = {style: spec.cross_own_share, dominant: 1.0 - spec.cross_own_share}
        mix = TraceMix(
            (spec.student_task,),
            styles,
            *_difficulties(spec, (spec.student_task,)),
            per_batch_difficulty=spec.per_batch_difficulty,
        )

        def pick(r):
            # keep the best checkpoint not above the band; stop at the first evaluation at or
            # above target, i.e. just after the learning jump (or once it overshoots the band)
            acc = r[spec.student_task]
            return (acc if acc <= hi_ok else -1.0), acc >= spec.student_target

        teacher = None
        if name == "student-same" and spec.same_distill > 0:
            teacher = LlamaForCausalLM.from_pretrained(out / "teacher", dtype=torch.float32)
            teacher.eval()
        report["models"][name] = _train_one(
            name,
            spec,
            tok,
            mix,
            spec.student_size,
            spec.student_steps,
            spec.student_lr,
            seed + (spec.cross_seed_offset if name == "student-cross" else 1),
            out,
            pick,
            log,
            spec.student_eval_every,
            distill_from=teacher,
            eval_from=spec.student_eval_from,
            eval_below_loss=spec.student_eval_below_loss,
        )
        report["models"][name]["style"] = style
        report["models"][name]["spec"] = model_spec(spec, name)
        report["models"][name]["styles"] = styles
        _finish(out, name, path, report)
    return report


def _finish(out: Path, name: str, path: Path, report: dict) -> None:
    """Record a finished model (atomically, into the report as it is on disk now, so builds
    of different models into one zoo can run side by side), then drop its checkpoint."""
    on_disk = json.loads(path.read_text()) if path.exists() else {}
    on_disk.update({k: v for k, v in report.items() if k != "models"})
    on_disk.setdefault("models", {})[name] = report["models"][name]
    tmp = path.with_suffix(f".{name}.tmp")
    tmp.write_text(json.dumps(on_disk, indent=2))
    tmp.replace(path)
    report["models"] = on_disk["models"]
    shutil.rmtree(out / PARTIAL / name, ignore_errors=True)
    shutil.rmtree(out / PARTIAL / f"{name}.old", ignore_errors=True)
