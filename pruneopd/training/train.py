"""The on-policy distillation trainer: every method (`pruneopd.method`) in one loop.

    prompts -> student rollouts -> teacher scores -> drift monitor and method weights
            -> per-token loss -> AdamW step -> the method learns (budget) -> metrics

`train` checks and sets the run up (`setup.check_run`, `setup.setup_run`: run directory,
models, optimiser, method, engines, resume) and runs the steps; each step is the phases of
`step.py` in order. See docs/method.md for every formula.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pruneopd.engines.faults import EngineFailure
from pruneopd.errors import say
from pruneopd.models import set_threads
from pruneopd.training import distributed, lora
from pruneopd.training.checkpoint import GracefulStop, rng_state, set_rng_state
from pruneopd.training.ending_watch import EndingWatch
from pruneopd.training.evaluate import cached, combine, eval_key, evaluate
from pruneopd.training.pair import PairError  # noqa: F401  (part of this module's interface)
from pruneopd.training.panel import add_totals, summary_teachers
from pruneopd.training.setup import Prepared, check_run, setup_run
from pruneopd.training.step import metrics_phase, sample_phase, score_and_weigh, update_phase


class TrainingStopped(RuntimeError):
    """The run stopped early (signal, non-finite values, a failed engine: `engines.faults`)
    after writing a checkpoint; `exit_code` is the status `pruneopd train` ends with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _sample_rows(tok, rollout, tw, scores, cap, n) -> list[dict]:
    """A few responses token by token, for `pruneopd inspect`; each with its prompt's text,
    special tokens kept (a chat template shows)."""
    rows = []
    for i in range(min(n, len(rollout.responses))):
        T = len(rollout.responses[i])
        top = scores.topk_ids_BTK[i, :T, :5].tolist()
        top_p = scores.topk_logprobs_BTK[i, :T, :5].exp().tolist()
        rows.append(
            {
                "index": i,
                "prompt": tok.decode(rollout.prompts[i], skip_special_tokens=False),
                "cap": cap,
                "stopped_by": rollout.stopped_by[i],
                "tokens": tok.convert_ids_to_tokens(rollout.responses[i]),
                "overlap": [round(x, 3) for x in tw.overlap_BT[i, :T].tolist()],
                "weight": [round(x, 3) for x in tw.weights_BT[i, :T].tolist()],
                "events": [int(x) for x in tw.events_BT[i, :T].tolist()],
                "teacher_top": [tok.convert_ids_to_tokens(r) for r in top],
                "teacher_top_p": [[round(p, 3) for p in r] for r in top_p],
            }
        )
    return rows


def train(cfg, dry_run: bool = False, origin: str = "") -> dict:
    """Run (or resume) one distillation run; returns its summary.

    `dry_run` checks everything a run needs (run directory, checkpoint, models, vocabularies,
    prompts against the context window, engines, the method) and returns before writing or
    computing anything. `origin`: a start-up line saying where the config came from (printed
    with the other start-up lines, after every check).
    """
    set_threads()
    checked = check_run(cfg)
    if checked.d.main:
        for note in ([origin] if origin else []) + checked.notes:
            say(note)
    if dry_run:
        resume_from = checked.resume_from
        return {"checked": True, "resume_from": str(resume_from) if resume_from else None}
    return _loop(cfg, setup_run(checked))


def _loop(cfg, p: Prepared) -> dict:
    """The steps of a set-up run, its evaluations, checkpoints and summary."""
    run, log, saved = p.run, p.log, p.saved
    d, student, tok, method = run.d, run.student, run.tok, run.method
    out = Path(cfg.out)

    def run_eval(step: int) -> dict:
        def compute() -> dict:
            mine = p.test_problems[slice(*d.split(len(p.test_problems)))]
            res = None
            if mine:
                res = evaluate(
                    student,
                    tok,
                    run.task,
                    mine,
                    max_new_tokens=p.eval_cap,
                    samples=cfg.eval_samples,
                    batch_size=cfg.eval_batch or len(mine),
                    seed=cfg.seed,
                    drift=p.eval_drift,
                    keep=cfg.log_samples,
                )
            return combine(d.gather_objects(res))  # the first shard's responses: rank 0's

        if step == 0 and cfg.eval_cache and d.world == 1:  # the same weights, the same result
            key = eval_key(
                student,
                tok,
                run.task,
                p.test_problems,
                cap=p.eval_cap,
                samples=cfg.eval_samples,
                batch=cfg.eval_batch,
                seed=cfg.seed if cfg.eval_samples else 0,
                drift=p.eval_drift.settings() if p.eval_drift else None,
            )
            res, _ = cached(cfg.eval_cache, key, compute)
        else:
            res = compute()
        res = dict(res)
        log.eval_samples(step, res.pop("responses", []))  # eval_samples.jsonl
        log.log(step, {f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        return res

    def trainer_state(step: int, rng: dict, offsets: dict) -> dict:
        """Everything besides the weights that step `step + 1` needs to run as if never stopped."""
        return {
            "config": asdict(cfg),
            "optimizer": run.ps.optimizer_state(run.opt),
            "scheduler": run.sched.state_dict(),
            "budget": method.state_dict(),
            "rng": rng,
            "log_offsets": offsets,
            "history": history,
            "totals": dict(totals),
            "acc": acc,
            "next_prompt": step * cfg.prompts_per_step,
        }

    if saved is not None:
        run.ps.load_optimizer_state(run.opt, saved["optimizer"])
        run.sched.load_state_dict(saved["scheduler"])
        if saved["budget"] is not None:
            method.load_state_dict(saved["budget"])
        set_rng_state(saved["rng"], run.gen)
        history, totals, acc, start = saved["history"], saved["totals"], saved["acc"], saved["step"]
        before = history["eval"][0]
    else:
        history = {"eval": []}
        before = run_eval(0)
        history["eval"].append({"step": 0, **before})
        acc, start = before["accuracy"], 0
        totals = {
            "t_sample": 0.0,
            "t_teacher": 0.0,
            "t_update": 0.0,
            "tokens_generated": 0,
            "tokens_scored": 0,
            "tokens_trained": 0,
            "skipped_steps": 0,
            "cpu_seconds": 0.0,
        }
    bar = tqdm(
        range(start, cfg.max_steps),
        desc=f"{cfg.method} OPD",
        disable=not (cfg.progress and d.main),
        initial=start,
        total=cfg.max_steps,
    )
    stop = GracefulStop()
    ending = EndingWatch()  # says once if the student stops ending its responses
    with stop:
        for step in bar:
            rng_at_start, offsets_at_start = rng_state(run.gen), log.offsets()
            cpu0 = (
                time.process_time()
            )  # CPU time: a cost other load on the machine does not inflate
            try:
                batch = sample_phase(run, step)  # 1. the student samples its own responses
                w = score_and_weigh(run, batch)  # 2-3. the teacher scores, the monitor weighs
            except EngineFailure as e:  # keep the last good state, as for a non-finite loss
                state = trainer_state(step, rng_at_start, offsets_at_start)
                path = distributed.save_once(
                    d, out, step, run.ps.saved, state, cfg.keep_checkpoints
                )
                log.close()
                raise TrainingStopped(
                    f"step {step + 1} of {cfg.max_steps} stopped: {e}; last good step saved in "
                    f"{path}; {e.remedy}",
                    exit_code=e.exit_code,
                ) from e
            upd = update_phase(run, batch, w)  # 4. the update
            if not upd.finite and cfg.on_nonfinite == "skip":
                totals["skipped_steps"] += 1
            elif not upd.finite:  # keep the last good state: weights, optimizer, RNG at step start
                state = trainer_state(step, rng_at_start, offsets_at_start)
                path = distributed.save_once(
                    d, out, step, run.ps.saved, state, cfg.keep_checkpoints
                )
                log.close()
                bad = "loss" if not torch.isfinite(upd.loss) else "gradients"
                raise TrainingStopped(
                    f"non-finite {bad} at step {step + 1} (loss {upd.loss.item():.4g}, grad norm "
                    f"{float(upd.grad_norm):.4g}); last good step saved in {path}; lower lr, or "
                    "set on_nonfinite=skip",
                    exit_code=1,
                )
            m = metrics_phase(run, step, batch, w, upd)  # 5. what every run logs; the method learns
            totals["cpu_seconds"] = totals.get("cpu_seconds", 0.0) + time.process_time() - cpu0
            for k in ("t_sample", "t_teacher", "t_update"):
                totals[k] += m[k]
            for k in ("tokens_generated", "tokens_scored", "tokens_trained"):
                totals[k] += m[k]
            if run.panel is not None:  # several teachers: each one's tokens, overlap, ...
                add_totals(totals, m)
            log.log(step + 1, m)
            note = ending.update(step + 1, m["eos_rate"], m["mean_len"], batch.cap)
            if note and d.main:
                say(note)
            if cfg.log_samples and d.main:
                rows = _sample_rows(tok, batch.rollout, w.tw, w.scores, batch.cap, cfg.log_samples)
                log.samples(step + 1, rows)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
                res = run_eval(step + 1)
                history["eval"].append({"step": step + 1, "train_seconds": _train_s(totals), **res})
                acc = res["accuracy"]
            bar.set_postfix(
                L=batch.cap,
                hit=f"{m['hit_ratio']:.2f}",
                len=f"{m['mean_len']:.0f}",
                rkl=f"{m['rkl']:.3f}",
                acc=f"{acc:.3f}",
            )
            last = step + 1 == cfg.max_steps
            stopping = d.any(stop.requested)  # a signal to any rank stops every rank
            if last or stopping or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                state = trainer_state(step + 1, rng_state(run.gen), log.offsets())
                path = distributed.save_once(
                    d, out, step + 1, run.ps.saved, state, cfg.keep_checkpoints
                )
            if stopping and not last:
                log.close()
                raise TrainingStopped(
                    f"stopped by {stop.signal_name or 'a signal to another rank'} after step "
                    f"{step + 1} of {cfg.max_steps}; "
                    f"checkpoint {path}; continue with the same command and resume=auto",
                    exit_code=stop.exit_code or 143,
                )

    after = run_eval(cfg.max_steps)
    history["eval"].append({"step": cfg.max_steps, "train_seconds": _train_s(totals), **after})
    if not d.main:
        return {}
    lora.save_final(cfg, run.ps, out / "final")  # the student, merged or its LoRA adapters
    tok.save_pretrained(out / "final")
    summary = {
        "config": asdict(cfg),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "partial_credit_before": before["partial_credit"],
        "partial_credit_after": after["partial_credit"],
        "train_seconds": _train_s(totals),
        **totals,
        "final_cap": method.final_cap(),
        "evals": history["eval"],
    }
    if run.panel is not None:
        summary = {k: v for k, v in summary.items() if not k.startswith("teacher/")}
        summary["teachers"] = summary_teachers(totals)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.close()
    return summary


def _train_s(totals: dict) -> float:
    return totals["t_sample"] + totals["t_teacher"] + totals["t_update"]
